"""Unit tests of the status core: `set_condition`, `derive`, `phase`, and `objects.workload` (all pure).

Covers:
- `set_condition`: a new condition gets `now`; the same status keeps its lastTransitionTime
  while reason/message/observedGeneration update; a flip moves it; other conditions untouched;
- `derive` for every verdict: spec invalid (Failed), Secret missing (Degraded, SecretMissing
  True with the Secret named), rolling out (Progressing), rolled out (Ready with the replica
  count and the kinds the cluster skipped), rollout failure and apply error (Degraded), a child
  that belongs to someone else (ChildConflict True naming kind and name, Degraded, Ready False);
  the six conditions always present in a fixed order, unrelated conditions (a canary's) kept after them;
- the zero-write property (hypothesis): deriving again from the same observation, later, gives
  byte-identical conditions, so a steady reconcile never writes the status;
- `phase` precedence (Failed > Degraded > Ready > Progressing > Pending);
- `workload`: defaults, observedGeneration, the Deployment controller's failure conditions.
"""

from __future__ import annotations

from typing import Any

import pytest
from agent_operator import objects, status
from agent_operator.api import models
from agent_operator.objects import ObjectRef
from hypothesis import given
from hypothesis import strategies as st

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T01:00:00Z"
CONFIG = ObjectRef("v1", "ConfigMap", "default", "demo-config")
AUTH = ObjectRef("v1", "Secret", "default", "demo-auth")
TRUE, FALSE, UNKNOWN = models.ConditionStatus.TRUE, models.ConditionStatus.FALSE, models.ConditionStatus.UNKNOWN


def cond(
    type_: str, status: models.ConditionStatus, reason: str = "R", since: str = "", gen: int = 1
) -> models.Condition:
    return models.Condition(
        type=type_, status=status, reason=reason, message="", last_transition_time=since, observed_generation=gen
    )


def by_type(conds: list[models.Condition]) -> dict[str, models.Condition]:
    return {c.type: c for c in conds}


def ready(name: str, replicas: int = 2) -> objects.Workload:
    return objects.Workload(name=name, desired=replicas, ready=replicas, updated=replicas, current=True)


def pending(name: str, ready_: int = 0, replicas: int = 2) -> objects.Workload:
    return objects.Workload(name=name, desired=replicas, ready=ready_, updated=replicas, current=True)


# --- set_condition ------------------------------------------------------------------------------


def test_set_condition_adds_a_new_condition_at_now() -> None:
    (added,) = status.set_condition([], cond("Ready", TRUE), now=T1)
    assert added.last_transition_time == T1 and added.status == TRUE


def test_set_condition_keeps_the_time_while_the_status_holds() -> None:
    before = [cond("Ready", FALSE, reason="RollingOut", since=T0, gen=1)]
    new = models.Condition(type="Ready", status=FALSE, reason="SecretMissing", message="m", observed_generation=2)
    (after,) = status.set_condition(before, new, now=T1)
    assert after.last_transition_time == T0  # no flip: the transition happened at T0
    assert (after.reason, after.message, after.observed_generation) == ("SecretMissing", "m", 2)


def test_set_condition_moves_the_time_on_a_flip() -> None:
    (after,) = status.set_condition([cond("Ready", FALSE, since=T0)], cond("Ready", TRUE), now=T1)
    assert after.last_transition_time == T1 and after.status == TRUE


def test_set_condition_fills_a_missing_time_and_leaves_the_others() -> None:
    other = cond("Promoted", TRUE, since=T0)
    result = status.set_condition([other, cond("Ready", TRUE, since="")], cond("Ready", TRUE), now=T1)
    assert result[0] == other
    assert result[1].last_transition_time == T1


# --- derive -------------------------------------------------------------------------------------


def test_every_verdict_has_the_six_conditions_in_order() -> None:
    observations = [
        status.Findings(generation=1, spec_error="spec.api.replicas: too many"),
        status.Findings(generation=1, conflicts=(CONFIG,)),
        status.Findings(generation=1, missing_secrets=("Secret 'llm' not found",)),
        status.Findings(generation=1, workloads=(pending("a"),)),
        status.Findings(generation=1, workloads=(ready("a"),)),
    ]
    for obs in observations:
        _, conds = status.derive(obs, [], now=T0)
        assert [c.type for c in conds] == [t for t in status.ORDER if t != status.POLICY_VIOLATION]
        assert all(c.last_transition_time == T0 and c.observed_generation == 1 for c in conds)


def test_a_policy_violation_fails_and_turns_false_once_fixed() -> None:
    """PolicyViolation appears when a spec breaks the platform's policy, and stays, False, once fixed."""
    phase, conds = status.derive(
        status.Findings(generation=1, policy_violation="spec.image 'x' is not allowed"), [], now=T0
    )
    assert phase == models.Phase.FAILED
    assert [c.type for c in conds] == list(status.ORDER)
    by_type = {c.type: c for c in conds}
    assert (by_type["PolicyViolation"].status, by_type["PolicyViolation"].message) == (
        "True",
        "spec.image 'x' is not allowed",
    )
    assert (by_type["Ready"].status, by_type["Ready"].reason) == ("False", "PolicyViolation")
    assert by_type["SpecInvalid"].status == "False"
    phase, conds = status.derive(status.Findings(generation=2, workloads=(ready("a"),)), conds, now=T1)
    assert phase == models.Phase.READY
    assert {c.type: (c.status, c.reason) for c in conds}["PolicyViolation"] == ("False", "Allowed")


def test_spec_invalid_fails_and_names_the_field() -> None:
    obs = status.Findings(generation=3, spec_error="spec.api.replicas: must be <= 100")
    phase, conds = status.derive(obs, [], now=T0)
    state = by_type(conds)
    assert phase == models.Phase.FAILED
    assert state["SpecInvalid"].status == TRUE and state["SpecInvalid"].message == "spec.api.replicas: must be <= 100"
    assert state["Ready"].status == FALSE and state["SecretMissing"].status == UNKNOWN


def test_missing_secret_degrades_and_names_it() -> None:
    obs = status.Findings(generation=1, missing_secrets=("Secret 'llm' not found (spec.model.providers[0])",))
    phase, conds = status.derive(obs, [], now=T0)
    state = by_type(conds)
    assert phase == models.Phase.DEGRADED
    assert state["SecretMissing"].status == TRUE and "'llm'" in state["SecretMissing"].message
    assert state["Degraded"].reason == "SecretMissing" and state["Ready"].status == FALSE


def test_a_foreign_child_is_a_conflict_naming_kind_and_name() -> None:
    obs = status.Findings(generation=1, conflicts=(CONFIG, AUTH), workloads=(ready("a"),))
    phase, conds = status.derive(obs, [], now=T0)
    state = by_type(conds)
    assert phase == models.Phase.DEGRADED
    conflict = state["ChildConflict"]
    assert conflict.status == TRUE and conflict.reason == "ChildConflict"
    assert "ConfigMap/demo-config, Secret/demo-auth" in conflict.message and "left untouched" in conflict.message
    assert (state["Ready"].status, state["Ready"].reason) == (FALSE, "ChildConflict")
    assert state["Degraded"].reason == "ChildConflict"
    _, clear = status.derive(status.Findings(generation=1, workloads=(ready("a"),)), conds, now=T0)
    assert by_type(clear)["ChildConflict"].status == FALSE and by_type(clear)["Ready"].status == TRUE


def test_rolling_out_progresses_with_counts() -> None:
    obs = status.Findings(generation=1, workloads=(pending("demo-api", 1), ready("demo-worker")))
    phase, conds = status.derive(obs, [], now=T0)
    state = by_type(conds)
    assert phase == models.Phase.PROGRESSING
    assert state["Progressing"].status == TRUE and state["Progressing"].message == "demo-api 1/2 ready"
    assert state["Ready"].reason == "RollingOut"


def test_rolled_out_is_ready_and_mentions_skipped_kinds() -> None:
    obs = status.Findings(
        generation=1, workloads=(ready("a", 2), ready("b", 3)), skipped=("PrometheusRule", "ServiceMonitor")
    )
    phase, conds = status.derive(obs, [], now=T0)
    state = by_type(conds)
    assert phase == models.Phase.READY
    assert state["Ready"].reason == "AllReplicasReady"
    assert (
        state["Ready"].message
        == "5 replicas ready (not served by this cluster, skipped: PrometheusRule, ServiceMonitor)"
    )
    assert state["Progressing"].status == FALSE and state["Degraded"].status == FALSE


def test_a_failed_rollout_and_an_apply_error_degrade() -> None:
    broken = objects.Workload(name="a", desired=2, ready=0, updated=2, current=True, failure="ProgressDeadlineExceeded")
    phase, conds = status.derive(status.Findings(generation=1, workloads=(broken,)), [], now=T0)
    assert phase == models.Phase.DEGRADED
    assert by_type(conds)["Degraded"].message == "a: ProgressDeadlineExceeded"
    assert by_type(conds)["Progressing"].reason == "RolloutFailed"
    phase, conds = status.derive(status.Findings(generation=1, apply_error="403 Forbidden"), [], now=T0)
    assert phase == models.Phase.DEGRADED and by_type(conds)["Degraded"].reason == "ApplyFailed"


def test_derive_keeps_unrelated_conditions_after_its_own() -> None:
    canary = cond("Promoted", TRUE, since=T0)
    _, conds = status.derive(status.Findings(generation=1, workloads=(ready("a"),)), [canary], now=T1)
    assert [c.type for c in conds] == [*(t for t in status.ORDER if t != status.POLICY_VIOLATION), "Promoted"]
    assert conds[-1] == canary


def test_a_flip_moves_only_the_flipped_conditions() -> None:
    _, first = status.derive(status.Findings(generation=1, workloads=(pending("a"),)), [], now=T0)
    _, second = status.derive(status.Findings(generation=1, workloads=(ready("a"),)), first, now=T1)
    times = {c.type: c.last_transition_time for c in second}
    assert times == {
        "Ready": T1,
        "Progressing": T1,
        "Degraded": T0,
        "SpecInvalid": T0,
        "SecretMissing": T0,
        "ChildConflict": T0,
    }


WORKLOADS = st.builds(
    objects.Workload,
    name=st.sampled_from(["a", "b"]),
    desired=st.integers(0, 3),
    ready=st.integers(0, 3),
    updated=st.integers(0, 3),
    current=st.booleans(),
    failure=st.sampled_from(["", "ProgressDeadlineExceeded"]),
)
OBSERVATIONS = st.builds(
    status.Findings,
    generation=st.one_of(st.none(), st.integers(1, 5)),
    spec_error=st.sampled_from(["", "spec.x: bad"]),
    missing_secrets=st.lists(st.sampled_from(["Secret 'a' not found", "key 'k' not in Secret 'b'"]), max_size=2).map(
        tuple
    ),
    workloads=st.lists(WORKLOADS, max_size=2).map(tuple),
    apply_error=st.sampled_from(["", "409 Conflict"]),
    skipped=st.lists(st.sampled_from(["PrometheusRule", "ServiceMonitor"]), max_size=2, unique=True).map(tuple),
)


@given(OBSERVATIONS, st.lists(st.sampled_from(status.ORDER), unique=True))
def test_the_same_observation_later_gives_identical_conditions(obs: status.Findings, seen: list[str]) -> None:
    previous = [cond(t, UNKNOWN, since=T0) for t in seen]
    phase, first = status.derive(obs, previous, now=T1)
    again, second = status.derive(obs, first, now=T2)
    assert (again, second) == (phase, first)  # nothing to write on a steady reconcile
    assert phase == status.phase(first)


# --- phase --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"SpecInvalid": TRUE, "Degraded": TRUE, "Ready": TRUE}, models.Phase.FAILED),
        ({"Degraded": TRUE, "Ready": TRUE}, models.Phase.DEGRADED),
        ({"Ready": TRUE, "Progressing": TRUE}, models.Phase.READY),
        ({"Ready": FALSE, "Progressing": TRUE}, models.Phase.PROGRESSING),
        ({"Ready": FALSE, "Progressing": FALSE}, models.Phase.PENDING),
        ({}, models.Phase.PENDING),
    ],
)
def test_phase_precedence(state: dict[str, models.ConditionStatus], expected: models.Phase) -> None:
    assert status.phase([cond(t, s) for t, s in state.items()]) == expected


# --- workload -----------------------------------------------------------------------------------


def deployment(spec: dict[str, Any], status: dict[str, Any] | None, generation: int | None = 2) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "demo-api"}
    if generation is not None:
        meta["generation"] = generation
    return {"metadata": meta, "spec": spec, "status": status}


def test_workload_reads_the_controllers_fields() -> None:
    live = {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 3}
    w = objects.workload(deployment({"replicas": 3}, live))
    assert (w.name, w.desired, w.ready, w.updated, w.current, w.failure) == ("demo-api", 3, 3, 3, True, "")
    assert w.rolled_out


def test_workload_defaults_and_stale_generations() -> None:
    fresh = objects.workload(deployment({}, None))  # just created: no status, replicas defaulted to 1
    assert (fresh.desired, fresh.ready, fresh.current, fresh.rolled_out) == (1, 0, False, False)
    stale = objects.workload(deployment({"replicas": 1}, {"observedGeneration": 1, "readyReplicas": 1}))
    assert not stale.current and not stale.rolled_out  # the controller has not seen generation 2 yet
    assert objects.workload(deployment({"replicas": 0}, {}, generation=None)).rolled_out


def test_workload_reports_the_controllers_failures() -> None:
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
    quota = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}
    fine = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    assert objects.workload(deployment({}, {"conditions": [deadline]})).failure == "ProgressDeadlineExceeded: too slow"
    assert objects.workload(deployment({}, {"conditions": [quota]})).failure == "FailedCreate"
    assert objects.workload(deployment({}, {"conditions": [fine]})).failure == ""

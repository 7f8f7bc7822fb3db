"""The one-step promote gate (`agentops.dev/promote=step:<weight>`) and the rollout record
(`status.canary.rollouts`, `agent_operator.canary.rollouthistory`).

Covers:
- `step:<weight>` at the current weight moves one step (streak reset, failures kept), promotes from
  the last step below 100, acts while paused by spec (and stays paused), is always consumed, and
  does nothing at another weight (so a gate seen twice cannot skip two steps) or at rest;
- abort and the full promote gate still win; a malformed weight never acts;
- a record per ended rollout: promoted by analysis, rolled back at the failure limit, aborted,
  reverted, superseded by a newer revision, promoted at rest by annotation; nothing recorded for
  waiting, steps, first deploy or the revert of a rolled-back spec; the list is bounded to 10 and
  survives the fresh status of a new rollout.
"""

from __future__ import annotations

import itertools

from agent_operator.api import models
from agent_operator.api.models import CanaryPhase
from agent_operator.canary import machine, rollouthistory
from agent_operator.canary.machine import Action, Observation, Reason
from agent_operator.manifests import naming

OLD = "aaaaaaaaaa"
NEW = "bbbbbbbbbb"
NEWER = "cccccccccc"


def spec(**overrides: object) -> models.Canary:
    values: dict[str, object] = {"enabled": True, "steps": [10, 50, 80, 100], "failure_limit": 2, **overrides}
    return models.Canary.model_validate(values)


def progressing(**overrides: object) -> models.CanaryStatus:
    values: dict[str, object] = {
        "phase": CanaryPhase.PROGRESSING,
        "weight": 10,
        "step_index": 0,
        "stable_revision": OLD,
        "canary_revision": NEW,
        **overrides,
    }
    return models.CanaryStatus.model_validate(values)


def step(weight: int) -> dict[str, str]:
    return {naming.PROMOTE_ANNOTATION: f"step:{weight}"}


def decide(
    status: models.CanaryStatus,
    *,
    annotations: dict[str, str] | None = None,
    desired: str = NEW,
    canary_spec: models.Canary | None = None,
    analysis: models.Analysis | None = None,
) -> machine.Decision:
    return machine.decide(canary_spec or spec(), status, Observation(desired, annotations or {}, analysis))


def result(verdict: str, weight: int = 10) -> models.Analysis:
    return models.Analysis(time="2026-01-01T00:00:00Z", weight=weight, verdict=verdict, checks=[])


# --- the step gate ----------------------------------------------------------------------------------


def test_step_gate_moves_one_step_and_is_consumed() -> None:
    prior = progressing(inconclusive_streak=2, total_failures=1, consecutive_failures=1)
    decision = decide(prior, annotations=step(10))
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.STEP_PROMOTED_BY_ANNOTATION)
    assert (decision.status.phase, decision.status.weight, decision.status.step_index) == (
        CanaryPhase.PROGRESSING,
        50,
        1,
    )
    assert decision.status.inconclusive_streak == 0
    assert (decision.status.total_failures, decision.status.consecutive_failures) == (1, 1)
    assert decision.status.message == "weight 10 -> 50: promoted one step by annotation"
    assert decision.consumed == (naming.PROMOTE_ANNOTATION,)


def test_step_gate_from_the_last_step_below_100_promotes() -> None:
    decision = decide(progressing(weight=80, step_index=2), annotations=step(80))
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.STEP_PROMOTED_BY_ANNOTATION)
    assert (decision.status.phase, decision.status.stable_revision, decision.status.weight) == (
        CanaryPhase.PROMOTED,
        NEW,
        0,
    )


def test_step_gate_acts_while_paused_by_spec_and_stays_paused() -> None:
    paused = spec(paused=True)
    decision = decide(progressing(phase=CanaryPhase.PAUSED), annotations=step(10), canary_spec=paused)
    assert (decision.reason, decision.status.phase, decision.status.weight) == (
        Reason.STEP_PROMOTED_BY_ANNOTATION,
        CanaryPhase.PAUSED,
        50,
    )


def test_step_gate_at_another_weight_does_nothing_but_is_consumed() -> None:
    """The operator removes the annotation after acting; if that removal failed, the gate is seen
    again at the new weight and must not move a second step."""
    decision = decide(progressing(weight=50, step_index=1), annotations=step(10))
    assert decision.reason == Reason.WAITING
    assert decision.status.weight == 50
    assert decision.consumed == (naming.PROMOTE_ANNOTATION,)


def test_step_gate_with_a_malformed_weight_never_acts() -> None:
    for value in ("step:", "step:ten", "step:-10"):
        decision = decide(progressing(), annotations={naming.PROMOTE_ANNOTATION: value})
        assert decision.reason == Reason.WAITING, value
        assert decision.consumed == (naming.PROMOTE_ANNOTATION,)


def test_step_gate_at_rest_starts_nothing_by_itself() -> None:
    at_rest = models.CanaryStatus(phase=CanaryPhase.IDLE, stable_revision=OLD)
    decision = decide(at_rest, annotations=step(10), desired=OLD)
    assert (decision.action, decision.reason) == (Action.NONE, Reason.STEADY)
    assert decision.consumed == (naming.PROMOTE_ANNOTATION,)


def test_abort_wins_over_a_step_gate() -> None:
    annotations = {**step(10), naming.ABORT_ANNOTATION: "true"}
    decision = decide(progressing(), annotations=annotations)
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.ABORTED)
    assert set(decision.consumed) == {naming.PROMOTE_ANNOTATION, naming.ABORT_ANNOTATION}


# --- the rollout record ---------------------------------------------------------------------------


def stamped(prior: models.CanaryStatus, decision: machine.Decision) -> list[models.RolloutRecord]:
    return rollouthistory.updated(prior, decision, lambda: "2026-01-01T12:00:00Z")


def test_promotion_by_analysis_is_recorded() -> None:
    prior = progressing(weight=80, step_index=2)
    records = stamped(prior, decide(prior, analysis=result("success", weight=80)))
    assert [(r.revision, r.stable_revision, r.outcome, r.reason, r.finished_time) for r in records] == [
        (NEW, OLD, "Promoted", "AnalysisPassed", "2026-01-01T12:00:00Z")
    ]
    assert records[0].message.startswith(f"revision {NEW} promoted")


def test_rollback_abort_revert_and_superseded_are_recorded() -> None:
    failing = progressing(total_failures=1, consecutive_failures=1)
    cases = [
        (failing, {}, NEW, result("failure"), ("RolledBack", "FailureLimitReached", NEW)),
        (progressing(), {naming.ABORT_ANNOTATION: "true"}, NEW, None, ("RolledBack", "Aborted", NEW)),
        (progressing(), {}, OLD, None, ("Reverted", "Reverted", NEW)),
        (progressing(), {}, NEWER, None, ("Superseded", "NewRevision", NEW)),
        (progressing(), {naming.PROMOTE_ANNOTATION: "true"}, NEW, None, ("Promoted", "PromotedByAnnotation", NEW)),
    ]
    for prior, gates, desired, analysis, expected in cases:
        decision = decide(prior, annotations=gates, desired=desired, analysis=analysis)
        (record,) = stamped(prior, decision)
        assert (record.outcome, record.reason, record.revision) == expected


def test_promote_at_rest_is_a_rollout_too() -> None:
    prior = models.CanaryStatus(phase=CanaryPhase.IDLE, stable_revision=OLD)
    decision = decide(prior, annotations={naming.PROMOTE_ANNOTATION: "true"}, desired=NEW)
    assert [(r.outcome, r.revision) for r in stamped(prior, decision)] == [("Promoted", NEW)]


def test_decisions_that_end_nothing_are_not_recorded() -> None:
    rolled_back = models.CanaryStatus(phase=CanaryPhase.ROLLED_BACK, stable_revision=OLD, canary_revision=NEW)
    cases = [
        (progressing(), {}, NEW, None),  # waiting
        (progressing(), {}, NEW, result("success")),  # next step
        (progressing(), {}, NEW, result("inconclusive")),  # holding
        (models.CanaryStatus(), {}, NEW, None),  # first deploy
        (rolled_back, {}, OLD, None),  # the revert of a rolled-back spec
        (rolled_back, {}, NEW, None),  # stays rolled back
    ]
    for prior, gates, desired, analysis in cases:
        decision = decide(prior, annotations=gates, desired=desired, analysis=analysis)
        assert stamped(prior, decision) == [], decision.reason


def test_the_record_keeps_the_last_ten_and_survives_a_new_rollout() -> None:
    revisions = [f"{i:010d}" for i in range(12)]
    status = models.CanaryStatus(phase=CanaryPhase.IDLE, stable_revision=OLD)
    for done, (previous, revision) in enumerate(itertools.pairwise([OLD, *revisions])):
        started = decide(status, desired=revision)
        assert started.reason == Reason.ROLLOUT_STARTED
        status = started.status.model_copy(update={"rollouts": stamped(status, started)})
        assert len(status.rollouts) == min(done, 10), "a fresh rollout status must not drop the record"
        promoted = decide(status, annotations={naming.PROMOTE_ANNOTATION: "true"}, desired=revision)
        status = promoted.status.model_copy(update={"rollouts": stamped(status, promoted)})
        assert status.rollouts[-1].stable_revision == previous
    assert [r.revision for r in status.rollouts] == revisions[-10:]

"""The canary state machine (`agent_operator.canary.machine`), transition by transition.

Covers:
- at rest: first deploy, adoption of a live stable revision, steady states, revert after a rollback
  (immediate, no rollout), direct update when canaries are disabled, rollout start (also paused and
  with `steps: [100]`), gates before a start, staying rolled back on the same revision;
- during a rollout: abort, promote (and abort winning over promote), one-shot versus
  revision-pinned versus `false` gate values, canary disabled, revert, newer revision (restart),
  failure limit lowered, `spec.canary.paused`, steps edited, waiting, stale analyses, resuming;
- analyses: success (next step, last step promotes, only the consecutive counter reset), failure
  below and at the limit (the rollback names query, value and threshold), intermittent failures
  counted in total, inconclusive and error streaks up to the pause, a paused rollout still analysed
  and resumed by a conclusive result, unknown verdicts counted as errors, the history bound;
- `needs_analysis`, `rollout_active` and the replica `split` (table and properties);
- purity: the state machine and the analysis import nothing that does I/O;
- hypothesis: random sequences of analyses, gates, pauses and revisions keep the invariants: never
  promote on an inconclusive or error result, promotion by analysis only after every step passed,
  counters within their limits, at rest always fully stable or fully promoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from agent_operator.api import models
from agent_operator.api.models import CanaryPhase
from agent_operator.canary import machine
from agent_operator.canary.machine import Action, Observation, Reason
from agent_operator.canary.rollouts import Schedule, seconds_until, status_time
from agent_operator.manifests import naming
from hypothesis import given, settings
from hypothesis import strategies as st

OLD = "aaaaaaaaaa"
NEW = "bbbbbbbbbb"
NEWER = "cccccccccc"
PROMOTE = {naming.PROMOTE_ANNOTATION: "true"}
ABORT = {naming.ABORT_ANNOTATION: "true"}


def spec(**overrides: object) -> models.Canary:
    values: dict[str, object] = {
        "enabled": True,
        "steps": [10, 50, 100],
        "failure_limit": 2,
        "inconclusive_limit": 3,
        **overrides,
    }
    return models.Canary.model_validate(values)


def result(verdict: str, weight: int = 10) -> models.Analysis:
    check = models.CheckResult(
        name="error-rate",
        query='sum(rate(agent_requests_total{track="canary", status="failed"}[1m]))',
        value=0.3 if verdict == "failure" else 0.01,
        samples=120,
        threshold="<= 0.05",
        verdict=verdict,
        message="canary error rate",
    )
    return models.Analysis(time="2026-01-01T00:00:00Z", weight=weight, verdict=verdict, checks=[check])


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


def at_rest(phase: CanaryPhase = CanaryPhase.IDLE, **overrides: object) -> models.CanaryStatus:
    return models.CanaryStatus.model_validate({"phase": phase, "stable_revision": OLD, **overrides})


def decide(
    status: models.CanaryStatus,
    desired: str = NEW,
    *,
    canary_spec: models.Canary | None = None,
    analysis: models.Analysis | None = None,
    annotations: dict[str, str] | None = None,
    live: str = "",
) -> machine.Decision:
    observed = Observation(desired, annotations or {}, analysis, live)
    return machine.decide(canary_spec or spec(), status, observed)


# --- at rest ---------------------------------------------------------------------------------------


def test_first_deploy_adopts_the_desired_revision_without_a_rollout() -> None:
    decision = decide(models.CanaryStatus(), NEW)
    assert (decision.action, decision.reason) == (Action.NONE, Reason.FIRST_DEPLOY)
    assert decision.status.phase == CanaryPhase.IDLE
    assert decision.status.stable_revision == NEW
    assert decision.status.weight == 0


def test_an_empty_status_adopts_the_live_stable_revision_and_rolls_the_change_out() -> None:
    decision = decide(models.CanaryStatus(), NEW, live=OLD)
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.ROLLOUT_STARTED)
    assert (decision.status.stable_revision, decision.status.canary_revision) == (OLD, NEW)


def test_nothing_changes_when_the_spec_is_on_the_stable_revision() -> None:
    status = at_rest(message="serving")
    decision = decide(status, OLD)
    assert (decision.action, decision.reason) == (Action.NONE, Reason.STEADY)
    assert decision.status == status


def test_promoted_stays_promoted_until_the_next_change() -> None:
    decision = decide(at_rest(CanaryPhase.PROMOTED), OLD)
    assert decision.action == Action.NONE
    assert decision.status.phase == CanaryPhase.PROMOTED


def test_reapplying_the_stable_template_after_a_rollback_is_immediate() -> None:
    rolled_back = at_rest(CanaryPhase.ROLLED_BACK, canary_revision=NEW, total_failures=2)
    decision = decide(rolled_back, OLD)
    assert (decision.action, decision.reason) == (Action.NONE, Reason.REVERTED)
    assert decision.status.phase == CanaryPhase.IDLE
    assert decision.status.canary_revision == ""
    assert decision.status.stable_revision == OLD


def test_a_disabled_canary_updates_the_stable_track_directly() -> None:
    decision = decide(at_rest(), NEW, canary_spec=spec(enabled=False))
    assert (decision.action, decision.reason) == (Action.NONE, Reason.DIRECT_UPDATE)
    assert decision.status.stable_revision == NEW
    assert decision.status.phase == CanaryPhase.IDLE


def test_a_new_revision_starts_a_rollout_at_the_first_step_with_clean_counters() -> None:
    previous = at_rest(CanaryPhase.PROMOTED, total_failures=1, history=[result("failure")])
    decision = decide(previous, NEW)
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.ROLLOUT_STARTED)
    status = decision.status
    assert (status.phase, status.weight, status.step_index) == (CanaryPhase.PROGRESSING, 10, 0)
    assert (status.stable_revision, status.canary_revision) == (OLD, NEW)
    assert (status.total_failures, status.consecutive_failures, status.inconclusive_streak) == (0, 0, 0)
    assert status.history == []
    assert status.last_analysis is None


def test_a_rollout_started_under_spec_paused_is_paused_at_the_first_step() -> None:
    decision = decide(at_rest(), NEW, canary_spec=spec(paused=True))
    assert decision.action == Action.SET_WEIGHT
    assert (decision.status.phase, decision.status.weight) == (CanaryPhase.PAUSED, 10)


def test_steps_of_only_100_promote_without_analysis() -> None:
    decision = decide(at_rest(), NEW, canary_spec=spec(steps=[100]))
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.NOTHING_TO_ANALYSE)
    assert (decision.status.phase, decision.status.stable_revision) == (CanaryPhase.PROMOTED, NEW)


def test_abort_before_a_rollout_starts_rolls_back_without_running_the_canary() -> None:
    decision = decide(at_rest(), NEW, annotations=ABORT)
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.ABORTED)
    assert decision.status.phase == CanaryPhase.ROLLED_BACK
    assert (decision.status.stable_revision, decision.status.canary_revision) == (OLD, NEW)
    assert decision.consumed == (naming.ABORT_ANNOTATION,)


def test_promote_with_the_change_skips_the_rollout() -> None:
    decision = decide(at_rest(), NEW, annotations=PROMOTE)
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.PROMOTED_BY_ANNOTATION)
    assert decision.status.stable_revision == NEW
    assert decision.consumed == (naming.PROMOTE_ANNOTATION,)


def test_the_rolled_back_revision_is_not_retried_by_itself() -> None:
    rolled_back = at_rest(CanaryPhase.ROLLED_BACK, canary_revision=NEW, message="rolled back: error-rate")
    decision = decide(rolled_back, NEW)
    assert (decision.action, decision.reason) == (Action.NONE, Reason.STAYS_ROLLED_BACK)
    assert decision.status == rolled_back


def test_promote_annotation_ships_a_rolled_back_revision() -> None:
    rolled_back = at_rest(CanaryPhase.ROLLED_BACK, canary_revision=NEW)
    decision = decide(rolled_back, NEW, annotations=PROMOTE)
    assert decision.action == Action.PROMOTE
    assert (decision.status.phase, decision.status.stable_revision) == (CanaryPhase.PROMOTED, NEW)


def test_retry_annotation_starts_a_rolled_back_revision_again_from_the_first_step() -> None:
    rolled_back = at_rest(CanaryPhase.ROLLED_BACK, canary_revision=NEW, total_failures=2, consecutive_failures=2)
    decision = decide(rolled_back, NEW, annotations={"agentops.dev/retry": "true"})
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.RETRIED)
    assert (decision.status.phase, decision.status.weight, decision.status.step_index) == (
        CanaryPhase.PROGRESSING,
        10,
        0,
    )
    assert (decision.status.total_failures, decision.status.consecutive_failures) == (0, 0)
    assert decision.status.stable_revision == OLD and "retried" in decision.status.message
    assert decision.consumed == ("agentops.dev/retry",)


def test_retry_without_a_rolled_back_revision_is_consumed_and_ignored() -> None:
    decision = decide(at_rest(CanaryPhase.PROMOTED), OLD, annotations={"agentops.dev/retry": "true"})
    assert (decision.action, decision.reason) == (Action.NONE, Reason.STEADY)
    assert decision.consumed == ("agentops.dev/retry",)


def test_a_newer_revision_after_a_rollback_starts_a_new_rollout() -> None:
    rolled_back = at_rest(CanaryPhase.ROLLED_BACK, canary_revision=NEW)
    decision = decide(rolled_back, NEWER)
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.ROLLOUT_STARTED)
    assert decision.status.canary_revision == NEWER


def test_a_stale_one_shot_gate_at_rest_is_consumed_and_ignored() -> None:
    decision = decide(at_rest(), OLD, annotations={**PROMOTE, **ABORT})
    assert (decision.action, decision.reason) == (Action.NONE, Reason.STEADY)
    assert set(decision.consumed) == {naming.PROMOTE_ANNOTATION, naming.ABORT_ANNOTATION}


# --- gates and spec changes during a rollout -------------------------------------------------------


def test_abort_rolls_back_and_leaves_the_service_fully_stable() -> None:
    decision = decide(progressing(weight=50, step_index=1, total_failures=1), annotations=ABORT)
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.ABORTED)
    status = decision.status
    assert (status.phase, status.weight, status.actual_weight) == (CanaryPhase.ROLLED_BACK, 0, 0)
    assert (status.stable_revision, status.canary_revision) == (OLD, NEW)
    assert not machine.rollout_active(status)
    assert decision.consumed == (naming.ABORT_ANNOTATION,)


def test_abort_wins_over_promote() -> None:
    decision = decide(progressing(), annotations={**PROMOTE, **ABORT})
    assert decision.action == Action.ROLL_BACK
    assert set(decision.consumed) == {naming.PROMOTE_ANNOTATION, naming.ABORT_ANNOTATION}


def test_promote_skips_the_remaining_steps() -> None:
    decision = decide(progressing(inconclusive_streak=3, phase=CanaryPhase.PAUSED), annotations=PROMOTE)
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.PROMOTED_BY_ANNOTATION)
    status = decision.status
    assert (status.phase, status.stable_revision, status.canary_revision) == (CanaryPhase.PROMOTED, NEW, "")
    assert status.weight == 0


def test_a_gate_pinned_to_a_revision_acts_on_that_revision_only_and_is_kept() -> None:
    other = decide(progressing(), annotations={naming.PROMOTE_ANNOTATION: NEWER})
    assert other.action == Action.WAIT
    assert other.consumed == ()
    pinned = decide(progressing(), annotations={naming.PROMOTE_ANNOTATION: NEW.upper()})
    assert pinned.action == Action.PROMOTE
    assert pinned.consumed == ()


def test_a_gate_set_to_false_is_no_gate() -> None:
    decision = decide(progressing(), annotations={naming.ABORT_ANNOTATION: "False", naming.PROMOTE_ANNOTATION: "0"})
    assert decision.action == Action.WAIT
    assert decision.consumed == ()


def test_disabling_the_canary_mid_rollout_applies_the_spec_directly() -> None:
    decision = decide(progressing(weight=50, step_index=1), canary_spec=spec(enabled=False))
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.CANARY_DISABLED)
    assert (decision.status.phase, decision.status.stable_revision) == (CanaryPhase.IDLE, NEW)


def test_reverting_the_spec_mid_rollout_removes_the_canary_without_a_failure() -> None:
    decision = decide(progressing(), OLD)
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.REVERTED)
    assert (decision.status.phase, decision.status.weight) == (CanaryPhase.IDLE, 0)
    assert decision.status.stable_revision == OLD


def test_a_newer_revision_mid_rollout_restarts_the_analysis_on_it() -> None:
    busy = progressing(weight=50, step_index=1, total_failures=1, consecutive_failures=1, inconclusive_streak=2)
    decision = decide(busy, NEWER, analysis=result("success", weight=50))
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.NEW_REVISION)
    status = decision.status
    assert (status.weight, status.step_index, status.canary_revision, status.stable_revision) == (10, 0, NEWER, OLD)
    assert (status.total_failures, status.consecutive_failures, status.inconclusive_streak) == (0, 0, 0)
    assert status.last_analysis is None  # the analysis of the old canary is not carried over


def test_lowering_the_failure_limit_below_the_failures_so_far_rolls_back() -> None:
    decision = decide(progressing(total_failures=1), canary_spec=spec(failure_limit=1))
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.FAILURE_LIMIT)


def test_spec_paused_holds_and_ignores_analyses() -> None:
    status = progressing()
    decision = decide(status, canary_spec=spec(paused=True), analysis=result("success"))
    assert (decision.action, decision.reason) == (Action.PAUSE, Reason.PAUSED_BY_SPEC)
    assert (decision.status.phase, decision.status.weight) == (CanaryPhase.PAUSED, 10)
    assert decision.status.history == []
    assert not machine.needs_analysis(spec(paused=True), decision.status)


def test_unpausing_resumes_the_rollout() -> None:
    decision = decide(progressing(phase=CanaryPhase.PAUSED))
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.RESUMED)
    assert decision.status.phase == CanaryPhase.PROGRESSING


def test_edited_steps_move_the_weight_to_the_same_step_index() -> None:
    decision = decide(progressing(weight=50, step_index=1), canary_spec=spec(steps=[20, 40, 100]))
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.STEPS_CHANGED)
    assert (decision.status.weight, decision.status.step_index) == (40, 1)


def test_fewer_steps_clamp_the_index_to_the_last_analysed_step() -> None:
    decision = decide(progressing(weight=50, step_index=1), canary_spec=spec(steps=[25, 100]))
    assert (decision.status.weight, decision.status.step_index) == (25, 0)


def test_steps_edited_to_only_100_promote() -> None:
    decision = decide(progressing(), canary_spec=spec(steps=[100]))
    assert decision.action == Action.PROMOTE
    assert decision.status.stable_revision == NEW


def test_no_analysis_waits_at_the_current_weight() -> None:
    status = progressing(message="weight 10")
    decision = decide(status)
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.WAITING)
    assert decision.status == status
    assert machine.needs_analysis(spec(), status)


def test_an_analysis_taken_at_another_weight_is_ignored() -> None:
    decision = decide(progressing(weight=50, step_index=1), analysis=result("success", weight=10))
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.STALE_ANALYSIS)
    assert decision.status.weight == 50
    assert decision.status.history == []


# --- analyses --------------------------------------------------------------------------------------


def test_a_passing_analysis_advances_and_resets_only_the_consecutive_counter() -> None:
    status = progressing(consecutive_failures=1, total_failures=1, inconclusive_streak=2)
    decision = decide(status, analysis=result("success"))
    assert (decision.action, decision.reason) == (Action.SET_WEIGHT, Reason.ANALYSIS_PASSED)
    new = decision.status
    assert (new.weight, new.step_index, new.phase) == (50, 1, CanaryPhase.PROGRESSING)
    assert (new.consecutive_failures, new.total_failures, new.inconclusive_streak) == (0, 1, 0)
    assert new.last_analysis == result("success")
    assert new.history == [result("success")]


def test_passing_the_last_step_below_100_promotes() -> None:
    decision = decide(progressing(weight=50, step_index=1), analysis=result("success", weight=50))
    assert (decision.action, decision.reason) == (Action.PROMOTE, Reason.ANALYSIS_PASSED)
    status = decision.status
    assert (status.phase, status.stable_revision, status.canary_revision) == (CanaryPhase.PROMOTED, NEW, "")
    assert (status.weight, status.actual_weight) == (0, 0)
    assert status.last_analysis == result("success", weight=50)
    assert not machine.rollout_active(status)


def test_a_failure_below_the_limit_holds_the_weight_and_counts() -> None:
    decision = decide(progressing(inconclusive_streak=2), analysis=result("failure"))
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.ANALYSIS_FAILED)
    status = decision.status
    assert (status.weight, status.consecutive_failures, status.total_failures) == (10, 1, 1)
    assert status.inconclusive_streak == 0
    assert "1 of failureLimit 2" in status.message


def test_the_failure_reaching_the_limit_rolls_back_naming_query_value_and_threshold() -> None:
    decision = decide(progressing(consecutive_failures=1, total_failures=1), analysis=result("failure"))
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.FAILURE_LIMIT)
    status = decision.status
    assert (status.phase, status.weight, status.stable_revision) == (CanaryPhase.ROLLED_BACK, 0, OLD)
    assert (status.consecutive_failures, status.total_failures) == (2, 2)
    assert "error-rate = 0.3" in status.message
    assert "threshold <= 0.05" in status.message
    assert 'status="failed"' in status.message
    assert status.last_analysis is not None
    assert status.last_analysis.verdict == "failure"


def test_intermittent_failures_count_toward_the_limit_in_total() -> None:
    status = progressing(canary_revision=NEW)
    canary_spec = spec(steps=[10, 20, 30, 100])
    status = decide(status, canary_spec=canary_spec, analysis=result("failure")).status
    status = decide(status, canary_spec=canary_spec, analysis=result("success")).status
    assert (status.consecutive_failures, status.total_failures, status.weight) == (0, 1, 20)
    decision = decide(status, canary_spec=canary_spec, analysis=result("failure", weight=20))
    assert decision.action == Action.ROLL_BACK
    assert decision.status.consecutive_failures == 1


def test_an_inconclusive_analysis_holds_and_leaves_the_failure_counters_alone() -> None:
    status = progressing(consecutive_failures=1, total_failures=1)
    decision = decide(status, analysis=result("inconclusive"))
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.ANALYSIS_INCONCLUSIVE)
    new = decision.status
    assert (new.weight, new.inconclusive_streak, new.consecutive_failures, new.total_failures) == (10, 1, 1, 1)


def test_an_errored_analysis_holds_like_an_inconclusive_one() -> None:
    decision = decide(progressing(), analysis=result("error"))
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.ANALYSIS_ERROR)
    assert decision.status.inconclusive_streak == 1


def test_the_inconclusive_limit_pauses_with_a_reason() -> None:
    decision = decide(progressing(inconclusive_streak=2), analysis=result("error"))
    assert (decision.action, decision.reason) == (Action.PAUSE, Reason.INCONCLUSIVE_LIMIT)
    assert decision.status.phase == CanaryPhase.PAUSED
    assert "3 inconclusive or errored analyses in a row" in decision.status.message


def test_an_inconclusive_pause_is_still_analysed_and_stays_paused_without_results() -> None:
    paused = decide(progressing(inconclusive_streak=2), analysis=result("inconclusive")).status
    assert machine.needs_analysis(spec(), paused)
    decision = decide(paused)
    assert (decision.action, decision.status.phase) == (Action.PAUSE, CanaryPhase.PAUSED)
    again = decide(paused, analysis=result("inconclusive"))
    assert (again.action, again.status.inconclusive_streak) == (Action.PAUSE, 4)


def test_a_conclusive_result_resumes_an_inconclusive_pause() -> None:
    paused = progressing(phase=CanaryPhase.PAUSED, inconclusive_streak=5)
    decision = decide(paused, analysis=result("success"))
    assert (decision.action, decision.status.phase, decision.status.weight) == (
        Action.SET_WEIGHT,
        CanaryPhase.PROGRESSING,
        50,
    )


def test_an_unknown_verdict_counts_as_an_error_never_a_success() -> None:
    decision = decide(progressing(), analysis=result("passed"))
    assert (decision.action, decision.reason) == (Action.WAIT, Reason.ANALYSIS_ERROR)


def test_the_history_keeps_the_last_ten_analyses() -> None:
    canary_spec = spec(inconclusive_limit=100)
    status = progressing()
    analyses = [result("inconclusive").model_copy(update={"time": f"2026-01-01T00:00:{i:02d}Z"}) for i in range(13)]
    for item in analyses:
        status = decide(status, canary_spec=canary_spec, analysis=item).status
    assert status.history == analyses[-10:]
    assert status.last_analysis == analyses[-1]


def test_a_healthy_rollout_goes_through_every_step_to_promotion() -> None:
    canary_spec = spec(steps=[5, 25, 50, 100])
    status = decide(at_rest(), NEW, canary_spec=canary_spec).status
    weights = [status.weight]
    while machine.rollout_active(status):
        status = decide(status, canary_spec=canary_spec, analysis=result("success", weight=status.weight)).status
        weights.append(status.weight)
    assert weights == [5, 25, 50, 0]
    assert (status.phase, status.stable_revision) == (CanaryPhase.PROMOTED, NEW)
    assert len(status.history) == 3


# --- replica split ---------------------------------------------------------------------------------


def test_split_table() -> None:
    cases = {
        (10, 10): (9, 1, 10),
        (10, 50): (5, 5, 50),
        (1, 10): (1, 1, 50),
        (2, 10): (1, 1, 50),
        (3, 50): (2, 1, 33),
        (20, 1): (19, 1, 5),
        (4, 0): (4, 0, 0),
        (4, 100): (0, 4, 100),
        (0, 10): (0, 0, 0),
    }
    for (total, weight), (stable, canary_pods, actual) in cases.items():
        assert machine.split(total, weight) == machine.Split(stable, canary_pods, actual), (total, weight)


@given(st.integers(min_value=0, max_value=500), st.integers(min_value=0, max_value=100))
def test_split_properties(total: int, weight: int) -> None:
    result_split = machine.split(total, weight)
    assert result_split.stable >= 0
    assert result_split.canary >= 0
    if total > 0 and weight > 0:
        assert result_split.canary >= 1
    if total > 0 and weight < 100:
        assert result_split.stable >= 1
    if weight == 0:
        assert (result_split.stable, result_split.canary) == (total, 0)
    assert total <= result_split.stable + result_split.canary <= max(total, 2 if 0 < weight < 100 else total)
    if total >= 2:
        assert result_split.stable + result_split.canary == total
    pods = result_split.stable + result_split.canary
    if pods:
        assert abs(result_split.actual_weight - 100 * result_split.canary / pods) <= 0.5
    if total >= 2 and 0 < weight < 100:
        # never more than half a pod away from the asked weight, except for the one-pod minimums
        exact = total * weight / 100
        assert abs(result_split.canary - exact) <= 0.5 or result_split.canary == 1 or result_split.stable == 1


# --- invariants over random sequences --------------------------------------------------------------

ANALYSES = st.tuples(st.just("analysis"), st.sampled_from(["success", "failure", "inconclusive", "error"]))
EVENTS = st.one_of(
    # analyses are the common event: weighted so that most sequences reach promotions and rollbacks
    ANALYSES,
    ANALYSES,
    ANALYSES,
    ANALYSES,
    st.tuples(st.just("stale"), st.sampled_from(["success", "failure"])),
    st.tuples(st.just("gate"), st.sampled_from([naming.PROMOTE_ANNOTATION, naming.ABORT_ANNOTATION])),
    st.tuples(st.just("paused"), st.booleans()),
    st.tuples(st.just("enabled"), st.booleans()),
    st.tuples(st.just("revision"), st.sampled_from(["r0", "r1", "r2", "r3"])),
    st.tuples(st.just("tick"), st.none()),
)


@st.composite
def canary_specs(draw: st.DrawFn) -> models.Canary:
    below = draw(st.lists(st.integers(min_value=1, max_value=99), unique=True, max_size=4))
    return spec(
        steps=[*sorted(below), 100],
        failure_limit=draw(st.integers(min_value=1, max_value=4)),
        inconclusive_limit=draw(st.integers(min_value=1, max_value=4)),
    )


@dataclass
class World:
    """The resource as a person edits it, and what the rollout in flight has seen so far."""

    spec: models.Canary
    desired: str = "r0"
    annotations: dict[str, str] = field(default_factory=dict)
    status: models.CanaryStatus = field(default_factory=models.CanaryStatus)
    successes: int = 0  # passed analyses since the current rollout started
    stable_at_start: str = ""


def check_shape(world: World, s: models.CanaryStatus) -> None:
    """Counters within their limits; a rollout on a step below 100; at rest, no canary at all."""
    steps = world.spec.steps
    assert s.consecutive_failures <= s.total_failures
    assert s.total_failures <= world.spec.failure_limit
    assert len(s.history) <= machine.HISTORY_LIMIT
    if machine.rollout_active(s):
        assert s.weight == steps[s.step_index]
        assert s.weight < 100
        assert s.step_index < len(steps) - 1
        assert s.canary_revision == world.desired != s.stable_revision
        assert s.total_failures < world.spec.failure_limit
        if s.inconclusive_streak >= world.spec.inconclusive_limit:
            assert s.phase == CanaryPhase.PAUSED
    else:
        # at rest: fully stable or fully promoted, nothing in between
        assert (s.weight, s.actual_weight) == (0, 0)
        assert s.canary_revision != s.stable_revision


def check_promotion(world: World, decision: machine.Decision, analysis_verdict: str) -> None:
    """Promotion only after every step passed, or by a gate, a disabled canary or steps of [100]."""
    promoting = world.annotations.get(naming.PROMOTE_ANNOTATION) == "true"
    aborting = world.annotations.get(naming.ABORT_ANNOTATION) == "true"
    if analysis_verdict in {"inconclusive", "error"} and not promoting:
        assert decision.action != Action.PROMOTE
    if decision.action != Action.PROMOTE:
        return
    assert not aborting
    assert decision.status.stable_revision == world.desired
    if decision.reason == Reason.ANALYSIS_PASSED:
        assert analysis_verdict == "success"
        assert world.successes + 1 == len(world.spec.steps) - 1
    elif decision.reason == Reason.PROMOTED_BY_ANNOTATION:
        assert promoting
    else:
        assert decision.reason in {Reason.CANARY_DISABLED, Reason.NOTHING_TO_ANALYSE, Reason.STEPS_CHANGED}


def check_rollback(
    world: World, before: models.CanaryStatus, decision: machine.Decision, analysis_verdict: str
) -> None:
    """Roll back only on an abort, the failure limit or a revert; the stable revision is kept."""
    s = decision.status
    aborting = world.annotations.get(naming.ABORT_ANNOTATION) == "true"
    if aborting and machine.rollout_active(before):
        assert decision.action == Action.ROLL_BACK
    if analysis_verdict in {"inconclusive", "error"}:
        assert s.total_failures == before.total_failures or before.canary_revision != s.canary_revision
    if decision.action == Action.ROLL_BACK:
        assert decision.reason in {Reason.ABORTED, Reason.FAILURE_LIMIT, Reason.REVERTED}
        assert s.stable_revision == before.stable_revision
        if decision.reason == Reason.FAILURE_LIMIT:
            assert s.total_failures == world.spec.failure_limit
        if decision.reason == Reason.ABORTED:
            assert aborting
    if s.phase == CanaryPhase.ROLLED_BACK:
        assert s.stable_revision == before.stable_revision or before.phase == CanaryPhase.ROLLED_BACK


def apply_event(world: World, event: tuple[str, object]) -> tuple[models.Analysis | None, str]:
    kind, value = event
    if kind == "gate":
        world.annotations[str(value)] = "true"
    elif kind == "paused":
        world.spec = world.spec.model_copy(update={"paused": value})
    elif kind == "enabled":
        world.spec = world.spec.model_copy(update={"enabled": value})
    elif kind == "revision":
        world.desired = str(value)
    elif kind in {"analysis", "stale"} and machine.rollout_active(world.status):
        weight = world.status.weight if kind == "analysis" else world.status.weight + 1
        return result(str(value), weight=weight), str(value) if kind == "analysis" else ""
    return None, ""


@settings(max_examples=400, deadline=None)
@given(canary_specs(), st.lists(EVENTS, max_size=40))
def test_random_sequences_keep_the_invariants(canary_spec: models.Canary, events: list[tuple[str, object]]) -> None:
    world = World(spec=canary_spec)
    world.status = machine.decide(world.spec, world.status, Observation(world.desired)).status
    for event in events:
        analysis_result, verdict = apply_event(world, event)
        before = world.status
        decision = machine.decide(
            world.spec, before, Observation(world.desired, dict(world.annotations), analysis_result)
        )
        check_shape(world, decision.status)
        check_promotion(world, decision, verdict)
        check_rollback(world, before, decision, verdict)
        for key in decision.consumed:
            world.annotations.pop(key)
        assert not world.annotations, "one-shot gates are always consumed"
        if decision.status.canary_revision != before.canary_revision and machine.rollout_active(decision.status):
            world.successes = 0
            world.stable_at_start = decision.status.stable_revision
        elif decision.reason == Reason.ANALYSIS_PASSED:
            world.successes += 1
        if machine.rollout_active(decision.status) and world.stable_at_start:
            assert decision.status.stable_revision == world.stable_at_start
        world.status = decision.status


@settings(max_examples=200, deadline=None)
@given(canary_specs(), st.lists(st.sampled_from(["inconclusive", "error"]), min_size=1, max_size=30))
def test_an_inconclusive_or_error_streak_never_promotes_nor_rolls_back(
    canary_spec: models.Canary, verdicts: list[str]
) -> None:
    status = machine.decide(canary_spec, at_rest(), Observation(NEW)).status
    if not machine.rollout_active(status):
        return  # steps: [100] has nothing to analyse
    for i, verdict in enumerate(verdicts, start=1):
        decision = machine.decide(canary_spec, status, Observation(NEW, {}, result(verdict, status.weight)))
        assert decision.action in {Action.WAIT, Action.PAUSE}
        status = decision.status
        assert status.weight == canary_spec.steps[0]
        assert status.inconclusive_streak == i
        paused = i >= canary_spec.inconclusive_limit
        assert status.phase == (CanaryPhase.PAUSED if paused else CanaryPhase.PROGRESSING)
        assert machine.needs_analysis(canary_spec, status)


@settings(max_examples=200, deadline=None)
@given(canary_specs(), st.lists(st.sampled_from(["success", "failure"]), min_size=1, max_size=30))
def test_failures_roll_back_exactly_at_the_limit(canary_spec: models.Canary, verdicts: list[str]) -> None:
    status = machine.decide(canary_spec, at_rest(), Observation(NEW)).status
    failures = successes = 0
    for verdict in verdicts:
        if not machine.rollout_active(status):
            break
        decision = machine.decide(canary_spec, status, Observation(NEW, {}, result(verdict, status.weight)))
        failures += verdict == "failure"
        successes += verdict == "success"
        status = decision.status
        if failures == canary_spec.failure_limit:
            assert decision.action == Action.ROLL_BACK
            assert (status.phase, status.stable_revision) == (CanaryPhase.ROLLED_BACK, OLD)
        elif successes == len(canary_spec.steps) - 1:
            assert decision.action == Action.PROMOTE
            assert (status.phase, status.stable_revision) == (CanaryPhase.PROMOTED, NEW)
        else:
            assert machine.rollout_active(status)
            assert status.weight == canary_spec.steps[successes]
        assert status.total_failures == failures


# --- purity ----------------------------------------------------------------------------------------

PURE_IMPORTS = {
    "__future__",
    "collections.abc",
    "dataclasses",
    "enum",
    "math",
    "re",
    "typing",
    "agent_operator.canary.analysis",
    "agent_operator.canary.evaluation",
    "agent_operator.api.models",
    "json",
    "agent_operator.manifests.naming",
    "agent_runtime.constants",
}


def test_the_state_machine_and_the_analysis_import_nothing_that_does_io() -> None:
    import ast
    import importlib.util
    from pathlib import Path

    for module in (
        "agent_operator.canary.machine",
        "agent_operator.canary.analysis",
        "agent_operator.canary.evaluation",
    ):
        spec_ = importlib.util.find_spec(module)
        assert spec_ is not None
        assert spec_.origin is not None
        tree = ast.parse(Path(spec_.origin).read_text())
        imported = {
            f"{node.module}.{alias.name}"
            if node.module.split(".")[0] in ("agent_operator", "agent_runtime")
            else node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert imported <= PURE_IMPORTS, (module, imported - PURE_IMPORTS)


def test_status_times_keep_milliseconds_and_hostile_ones_are_ignored() -> None:
    stamp = status_time(1_800_000_000.25)
    assert stamp == "2027-01-15T08:00:00.250Z"
    assert seconds_until(stamp, 1_800_000_000.0) == pytest.approx(0.25)
    for hostile in ("", "tomorrow", "2027-01-15T08:00:00", "9999-99-99T00:00:00Z"):
        assert seconds_until(hostile, 1_800_000_000.0) is None


def test_a_step_drops_the_interval_counted_for_the_previous_step() -> None:
    """The interval of the step the rollout left is dropped, so the analysis loop looks at once.

    Kept, the loop would wake only at the old step's due time and count the new step's interval
    from there: the first analysis at the new weight one interval late.
    """
    schedule = Schedule(running_for=("abc", 10), due=103.0, watching=True)
    schedule.settle(("abc", 10))  # still at the step counted for (a failure holds the weight)
    assert schedule.running_for == ("abc", 10) and schedule.due == 103.0
    for elsewhere in (("abc", 50), ("def", 10), None):  # a step, a new revision, not analysed any more
        moved = Schedule(running_for=("abc", 10), due=103.0, watching=True)
        moved.settle(elsewhere)
        assert moved.running_for is None, elsewhere
    idle = Schedule()
    idle.settle(("abc", 50))
    assert idle.running_for is None


def test_a_step_that_changes_no_pod_keeps_the_cadence() -> None:
    """The same replicas at both weights: the interval counted goes on for the new step, due as it was."""
    schedule = Schedule(running_for=("abc", 10), due=103.0, due_time="t", watching=True)
    schedule.settle(("abc", 20), same_pods=True)
    assert (schedule.running_for, schedule.due, schedule.due_time) == (("abc", 20), 103.0, "t")
    for elsewhere in (None, ("abc", 10)):  # not analysed any more; still where it was
        kept = Schedule(running_for=("abc", 10), due=103.0, watching=True)
        kept.settle(elsewhere, same_pods=True)
        assert kept.running_for == (None if elsewhere is None else ("abc", 10))


def test_failure_limit_one_rolls_back_at_the_first_failed_analysis() -> None:
    """The spec that bounds a rollback to two intervals of any fault (docs/canary.md)."""
    decision = decide(progressing(), analysis=result("failure"), canary_spec=spec(failure_limit=1))
    assert decision.action == Action.ROLL_BACK and decision.reason == Reason.FAILURE_LIMIT
    assert decision.status.total_failures == 1 and "1 of failureLimit 1" in decision.status.message

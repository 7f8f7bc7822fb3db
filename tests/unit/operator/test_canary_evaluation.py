"""Evaluation gates in the canary state machine, and reading an evaluation Job's report. Pure.

Covers: a rollout with `before` suites starts at weight 0 in the `before` gate with no analyses;
it waits while suites run; one failed suite rolls back naming the failed cases; an inconclusive
suite pauses (never a pass); all passed moves to the first step; results of an older revision
are ignored; abort still wins during the gate; `atEachStep` suites hold a step's analysis until
they pass and a failed one rolls back; `evaluation_gate` names the gate whose Jobs should run;
`from_report` reads the summary, and treats unreadable text, a verdict its exit code does not
confirm and oversized lists as inconclusive or bounded; the spec's gates must name known suites.
"""

from __future__ import annotations

import json

import pytest
from agent_operator.api import models
from agent_operator.api.models import CanaryPhase
from agent_operator.canary import evaluation, machine
from agent_operator.canary.machine import Action, Observation, Reason
from agent_operator.manifests import naming

OLD, NEW, NEWER = "aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"


def spec(**evaluation_gates: list[str]) -> models.Canary:
    return models.Canary.model_validate({"enabled": True, "steps": [10, 50, 100], "evaluation": evaluation_gates})


def outcome(suite: str, verdict: str, *, gate: str = "before", revision: str = NEW, **extra: object):
    return models.EvaluationResult(suite=suite, gate=gate, revision=revision, verdict=verdict, **extra)


def started(canary: models.Canary) -> models.CanaryStatus:
    decision = machine.decide(canary, models.CanaryStatus(stable_revision=OLD), Observation(desired_revision=NEW))
    return decision.status


def test_a_rollout_with_before_suites_starts_in_the_gate_at_weight_zero() -> None:
    canary = spec(before=["smoke", "tools"])
    status = started(canary)
    assert (status.phase, status.weight, status.gate, status.canary_revision) == (
        CanaryPhase.PROGRESSING,
        0,
        "before",
        NEW,
    )
    assert "no user task reaches it until its before suites pass (smoke, tools)" in status.message
    assert not machine.needs_analysis(canary, status)
    assert machine.evaluation_gate(canary, status) == "before"


def test_the_gate_waits_then_passes_to_the_first_step() -> None:
    canary = spec(before=["smoke", "tools"])
    status = started(canary)
    waiting = machine.decide(canary, status, Observation(NEW, evaluations=(outcome("smoke", "pass"),)))
    assert (waiting.action, waiting.reason) == (Action.WAIT, Reason.WAITING_FOR_EVALUATION)
    assert waiting.status.message == "waiting for evaluation suites tools (before)"
    passed = machine.decide(
        canary, waiting.status, Observation(NEW, evaluations=(outcome("tools", "pass", accuracy=0.9),))
    )
    assert (passed.action, passed.reason) == (Action.SET_WEIGHT, Reason.EVALUATION_PASSED)
    assert (passed.status.weight, passed.status.gate, passed.status.phase) == (10, "", CanaryPhase.PROGRESSING)
    assert "suite tools: pass, accuracy 0.900" in passed.status.message
    assert {r.suite for r in passed.status.evaluation} == {"smoke", "tools"}
    assert machine.needs_analysis(canary, passed.status) and machine.evaluation_gate(canary, passed.status) == ""


def test_a_failed_suite_rolls_back_naming_the_failed_cases() -> None:
    canary = spec(before=["smoke"])
    failed = outcome(
        "smoke",
        "fail",
        accuracy=0.7,
        failed_thresholds=["accuracy 0.700 < minAccuracy 0.85"],
        failed_cases=[models.FailedCase(name="crate-1", reason="numeric: expected 87 ± 0, the answer ends with 88")],
    )
    decision = machine.decide(canary, started(canary), Observation(NEW, evaluations=(failed,)))
    assert (decision.action, decision.reason) == (Action.ROLL_BACK, Reason.EVALUATION_FAILED)
    assert decision.status.phase == CanaryPhase.ROLLED_BACK and decision.status.gate == ""
    assert "crate-1 (numeric: expected 87 ± 0, the answer ends with 88)" in decision.status.message
    assert "accuracy 0.700 < minAccuracy 0.85" in decision.status.message


def test_an_inconclusive_suite_pauses_and_is_never_a_pass() -> None:
    canary = spec(before=["smoke"])
    doubtful = outcome("smoke", "inconclusive", message="the Job failed: DeadlineExceeded")
    decision = machine.decide(canary, started(canary), Observation(NEW, evaluations=(doubtful,)))
    assert (decision.action, decision.reason) == (Action.PAUSE, Reason.EVALUATION_INCONCLUSIVE)
    assert decision.status.phase == CanaryPhase.PAUSED and decision.status.weight == 0
    assert "DeadlineExceeded" in decision.status.message
    again = machine.decide(canary, decision.status, Observation(NEW))
    assert again.action == Action.PAUSE and again.status.weight == 0


def test_results_of_another_revision_are_ignored_and_abort_wins() -> None:
    canary = spec(before=["smoke"])
    status = started(canary)
    old = machine.decide(canary, status, Observation(NEW, evaluations=(outcome("smoke", "pass", revision=NEWER),)))
    assert old.reason == Reason.WAITING_FOR_EVALUATION and old.status.evaluation == []
    aborted = machine.decide(canary, status, Observation(NEW, annotations={naming.ABORT_ANNOTATION: "true"}))
    assert aborted.action == Action.ROLL_BACK and aborted.reason == Reason.ABORTED
    newer = machine.decide(canary, status, Observation(NEWER))
    assert (newer.status.gate, newer.status.canary_revision, newer.status.weight) == ("before", NEWER, 0)


def test_at_each_step_suites_hold_the_steps_analysis_until_they_pass() -> None:
    canary = spec(at_each_step=["smoke"])
    status = started(canary)
    assert (status.weight, status.gate) == (10, "")
    assert machine.evaluation_gate(canary, status) == "step:10"
    analysis = models.Analysis(time="t", weight=10, verdict="success")
    held = machine.decide(canary, status, Observation(NEW, analysis=analysis))
    assert (held.action, held.reason) == (Action.WAIT, Reason.WAITING_FOR_EVALUATION)
    step_passed = outcome("smoke", "pass", gate="step:10")
    moved = machine.decide(canary, status, Observation(NEW, analysis=analysis, evaluations=(step_passed,)))
    assert (moved.action, moved.reason, moved.status.weight) == (Action.SET_WEIGHT, Reason.ANALYSIS_PASSED, 50)
    failed = outcome("smoke", "fail", gate="step:50")
    rolled = machine.decide(canary, moved.status, Observation(NEW, evaluations=(failed,)))
    assert (rolled.action, rolled.reason) == (Action.ROLL_BACK, Reason.EVALUATION_FAILED)


def report(verdict: str = "fail", **extra: object) -> str:
    data = {
        "suite": "smoke",
        "verdict": verdict,
        "accuracy": 0.7,
        "passed": 7,
        "failed": 3,
        "costUSDPerTaskMax": 0.002,
        "latencyP95Seconds": 1.5,
        "failedThresholds": ["accuracy 0.700 < minAccuracy 0.85"],
        "failedCases": [{"name": "crate-1", "reason": "numeric: wrong"}],
        **extra,
    }
    return json.dumps(data)


def read(text: str, exit_code: int | None) -> models.EvaluationResult:
    return evaluation.from_report(text, suite="smoke", gate="before", revision=NEW, job="j", exit_code=exit_code)


def test_from_report_reads_the_summary() -> None:
    result = read(report(), 1)
    assert (result.verdict, result.accuracy, result.passed, result.failed) == ("fail", 0.7, 7, 3)
    assert (result.cost_usd_per_task_max, result.latency_p95_seconds) == (0.002, 1.5)
    assert result.failed_cases == [models.FailedCase(name="crate-1", reason="numeric: wrong")]
    assert read(report("pass"), 0).verdict == "pass"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (report("pass"), 1),  # a pass the exit code does not confirm
        (report("fail"), 0),
        (report("pass"), None),
        (report("inconclusive"), 3),
        ("Traceback (most recent call last): ...", 1),
        ("", 137),
        ('["pass"]', 0),
    ],
)
def test_anything_unconfirmed_is_inconclusive(text: str, code: int | None) -> None:
    assert read(text, code).verdict == "inconclusive"


def test_hostile_reports_are_bounded() -> None:
    cases = [{"name": "x" * 1000, "reason": "y" * 5000}] * 500
    result = read(report(failedCases=cases, passed=True, accuracy="1"), 1)
    assert len(result.failed_cases) == evaluation.FAILED_CASES_LIMIT
    assert len(result.failed_cases[0].reason) == evaluation.REASON_CHARS and len(result.failed_cases[0].name) == 253
    assert result.passed is None and result.accuracy is None


def test_gates_must_name_known_suites() -> None:
    base = {
        "model": {"providers": [{"name": "p", "model": "m", "baseURL": "http://m:1"}]},
        "redis": {"url": "redis://r:6379"},
    }
    suite = "name: smoke\ncases: [{name: a, input: x}]\n"
    good = {
        **base,
        "evaluation": {"suites": [{"name": "smoke", "inline": suite}]},
        "canary": {"evaluation": {"before": ["smoke"]}},
    }
    models.AgentServiceSpec.model_validate(good)
    with pytest.raises(ValueError, match=r"canary.evaluation.before: no suite named 'other'"):
        models.AgentServiceSpec.model_validate({**good, "canary": {"evaluation": {"before": ["other"]}}})
    with pytest.raises(ValueError, match=r"inline: cases\[0\].expect.near: unknown grader"):
        bad = "name: smoke\ncases: [{name: a, input: x, expect: {near: 1}}]\n"
        models.AgentServiceSpec.model_validate({**base, "evaluation": {"suites": [{"name": "smoke", "inline": bad}]}})
    with pytest.raises(ValueError, match="either inline or configMapRef"):
        models.AgentServiceSpec.model_validate({**base, "evaluation": {"suites": [{"name": "smoke"}]}})

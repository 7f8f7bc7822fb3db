"""`kubectl agentservice eval NAME` (`plugin.views.eval_view`): the rollout's evaluation suites.

Covers: a rollout standing in its before gate with a suite running; a rolled-back one with a failed
suite (its figures, failed thresholds and failed cases with reasons); no evaluation recorded;
figures of the wrong type shown as "-", never a crash; the `Evaluation:` line of `get`.
"""

from __future__ import annotations

from typing import Any

from agent_operator.plugin import views


def svc(canary: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "shop", "namespace": "default"}, "spec": {}, "status": {"canary": canary}}


def test_a_rollout_in_its_before_gate() -> None:
    text = views.eval_view(
        svc(
            {
                "phase": "Progressing",
                "canaryRevision": "abc",
                "gate": "before",
                "evaluation": [{"suite": "smoke", "gate": "before", "verdict": "running", "job": "shop-eval-x"}],
            }
        )
    )
    lines = text.splitlines()
    assert lines[0] == "rollout of revision abc (Progressing), evaluation gate: before"
    assert lines[1].split() == [
        "SUITE",
        "GATE",
        "VERDICT",
        "ACCURACY",
        "PASSED",
        "FAILED",
        "COST/TASK",
        "MAX",
        "P95",
        "JOB",
    ]
    assert lines[2].split() == ["smoke", "before", "running", "-", "-", "-", "-", "-", "shop-eval-x"]


def test_a_failed_suite_names_its_cases() -> None:
    result = {
        "suite": "smoke",
        "gate": "before",
        "verdict": "fail",
        "accuracy": 0.7,
        "passed": 7,
        "failed": 3,
        "costUSDPerTaskMax": 0.0016,
        "latencyP95Seconds": 0.41,
        "failedThresholds": ["accuracy 0.700 < minAccuracy 0.85"],
        "failedCases": [{"name": "crate-1", "reason": "numeric: expected 73 ± 0, the answer ends with 74"}],
        "job": "shop-eval-smoke-before-abc",
    }
    text = views.eval_view(svc({"phase": "RolledBack", "canaryRevision": "abc", "evaluation": [result]}))
    assert text.splitlines()[0].startswith("no rollout in progress (rollout phase RolledBack)")
    assert "smoke  before  fail     0.700     7       3       $0.0016" in text
    assert "smoke (before): fail\n  threshold not met: accuracy 0.700 < minAccuracy 0.85\n" in text
    assert "  crate-1: numeric: expected 73 ± 0, the answer ends with 74\n" in text


def test_nothing_recorded_and_odd_figures() -> None:
    assert "no evaluation recorded" in views.eval_view(svc({}))
    odd = {"suite": "s", "gate": "before", "verdict": "inconclusive", "accuracy": "high", "latencyP95Seconds": [1]}
    text = views.eval_view(svc({"phase": "Paused", "evaluation": [odd]}))
    assert "s      before  inconclusive  -" in text


def test_the_get_view_has_an_evaluation_line() -> None:
    import datetime

    now = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
    canary = {
        "phase": "Progressing",
        "gate": "before",
        "evaluation": [{"suite": "smoke", "gate": "before", "verdict": "fail", "accuracy": 0.7}],
    }
    lines = views.get_view(svc(canary), {}, [], now).splitlines()
    assert "Evaluation: gate before: smoke (before) fail 0.700" in lines
    assert not [line for line in views.get_view(svc({}), {}, [], now).splitlines() if line.startswith("Evaluation")]

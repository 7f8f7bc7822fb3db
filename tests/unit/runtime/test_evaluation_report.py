"""The verdict of a suite: weighted accuracy, cost, p95, thresholds, inconclusive runs, the summary.

Covers: accuracy is the weighted share of passed runs; each threshold failing alone names itself;
minAccuracy unset means every run must pass; ungraded runs make the verdict inconclusive unless the
gate fails anyway, and count in neither cost nor latency; nearest-rank p95; the JSON report's keys;
the termination summary fits Kubernetes' 4 KiB by dropping failed cases from the end.
"""

from __future__ import annotations

from agent_runtime.evaluation.command import TERMINATION_LIMIT, termination_summary
from agent_runtime.evaluation.report import RunResult, p95, summarize
from agent_runtime.evaluation.suite import Thresholds


def run(case: str, passed: bool, *, weight: float = 1, cost: float = 0.01, latency: float = 1.0, graded: bool = True):
    return RunResult(case, 1, weight, passed, "" if passed else f"{case} wrong", cost, latency, graded)


SEED = Thresholds(min_accuracy=0.85, max_cost_per_task_usd=2.0, max_p95_latency_seconds=30)


def test_weighted_accuracy() -> None:
    report = summarize("s", [run("a", True, weight=3), run("b", False)], Thresholds(min_accuracy=0.75))
    assert report.accuracy == 0.75 and report.verdict == "pass"
    assert (report.passed, report.failed) == (1, 1)


def test_each_threshold_fails_on_its_own() -> None:
    runs = [run(str(i), i < 7) for i in range(10)]
    assert summarize("s", runs, SEED).failed_thresholds == ["accuracy 0.700 < minAccuracy 0.85"]
    costly = [run("a", True, cost=2.5), run("b", True)]
    assert summarize("s", costly, SEED).failed_thresholds == ["cost per task 2.500000 USD > maxCostPerTaskUSD 2"]
    slow = [run(str(i), True, latency=40 if i == 0 else 1) for i in range(10)]
    report = summarize("s", slow, SEED)
    assert report.verdict == "fail" and report.failed_thresholds == ["p95 latency 40.00 s > maxP95LatencySeconds 30"]


def test_unset_accuracy_means_every_run() -> None:
    assert summarize("s", [run("a", True), run("b", False)], Thresholds()).verdict == "fail"
    assert summarize("s", [run("a", True)], Thresholds()).verdict == "pass"


def test_ungraded_runs_are_inconclusive_unless_the_gate_fails_anyway() -> None:
    lost = run("c", False, graded=False, latency=99, cost=9)
    report = summarize("s", [run("a", True), run("b", True), lost], Thresholds(min_accuracy=0.6))
    assert report.verdict == "inconclusive"
    assert (report.latency_p95_seconds, report.cost_usd_per_task_max) == (1.0, 0.01)
    failing = [run("a", False), run("b", False), lost]
    assert summarize("s", failing, Thresholds(min_accuracy=0.6)).verdict == "fail"


def test_p95_nearest_rank() -> None:
    assert p95([]) == 0.0
    assert p95([float(i) for i in range(1, 21)]) == 19.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0
    assert p95([3.0]) == 3.0


def test_json_report_keys() -> None:
    report = summarize("s", [run("a", True), run("b", False)], SEED)
    data = report.to_json()
    assert {
        "verdict",
        "accuracy",
        "passed",
        "failed",
        "costUSDTotal",
        "costUSDPerTaskMax",
        "latencyP95Seconds",
        "thresholds",
        "cases",
    } <= set(data)
    assert data["thresholds"] == {"minAccuracy": 0.85, "maxCostPerTaskUSD": 2.0, "maxP95LatencySeconds": 30}
    assert data["cases"][1] == {
        "name": "b",
        "run": 1,
        "passed": False,
        "reason": "b wrong",
        "costUSD": 0.01,
        "latencySeconds": 1.0,
    }


def test_termination_summary_fits() -> None:
    runs = [RunResult(f"case-{i}", 1, 1, False, "x" * 200, 0.0, 1.0) for i in range(100)]
    text = termination_summary(summarize("s", runs, SEED))
    assert len(text.encode()) <= TERMINATION_LIMIT and '"failedCasesTruncated":true' in text
    assert '"name":"case-0"' in text

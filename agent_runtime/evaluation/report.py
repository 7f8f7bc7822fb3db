"""The verdict of a suite's runs: weighted accuracy, cost, p95 latency against the thresholds. Pure.

Accuracy is the weighted share of passed runs (a case of weight 2 counts twice in each of its runs).
Cost per task is the largest spend of one run (the judge's calls are counted apart: they are the
evaluation's cost, not the agent's). p95 is the nearest-rank 95th percentile of the runs' latencies,
failed and timed-out runs included (a slow failure is still slow).

A run that could not be graded — its task could not be submitted or read (the API unreachable or
answering 5xx) — leaves the verdict `inconclusive` unless the gate fails even with every such run
counted as passed: no evidence about the answers is not a pass, and not the candidate's failure
either. Otherwise `pass` when every threshold holds, `fail` with those that did not
(`failedThresholds`). Ungraded runs count in neither cost nor latency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent_runtime.evaluation.suite import Thresholds

__all__ = ["Report", "RunResult", "Verdict", "p95", "summarize"]

Verdict = Literal["pass", "fail", "inconclusive"]
MAX_FAILED_LISTED = 20  # failed runs a summary names (the report keeps them all)


@dataclass(frozen=True)
class RunResult:
    case: str
    run: int  # 1-based
    weight: float
    passed: bool
    reason: str  # why it failed ("" when it passed)
    cost_usd: float
    latency_seconds: float
    graded: bool = True  # False: the task could not be submitted or read, no verdict on the answer


@dataclass(frozen=True)
class Report:
    suite: str
    verdict: Verdict
    accuracy: float
    passed: int
    failed: int
    cost_usd_total: float
    cost_usd_per_task_max: float
    latency_p95_seconds: float
    thresholds: Thresholds
    failed_thresholds: list[str]
    runs: list[RunResult]
    judge_calls: int = 0
    judge_cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The JSON report of `agentctl eval -o json` (keys as documented in docs/evaluation.md)."""
        return {
            "suite": self.suite,
            "verdict": self.verdict,
            "accuracy": round(self.accuracy, 6),
            "passed": self.passed,
            "failed": self.failed,
            "costUSDTotal": round(self.cost_usd_total, 8),
            "costUSDPerTaskMax": round(self.cost_usd_per_task_max, 8),
            "latencyP95Seconds": round(self.latency_p95_seconds, 3),
            "thresholds": {
                "minAccuracy": self.thresholds.effective_min_accuracy(),
                "maxCostPerTaskUSD": self.thresholds.max_cost_per_task_usd,
                "maxP95LatencySeconds": self.thresholds.max_p95_latency_seconds,
            },
            "failedThresholds": self.failed_thresholds,
            "judge": {"calls": self.judge_calls, "costUSD": round(self.judge_cost_usd, 8)},
            "cases": [
                {
                    "name": r.case,
                    "run": r.run,
                    "passed": r.passed,
                    "reason": r.reason,
                    "costUSD": round(r.cost_usd, 8),
                    "latencySeconds": round(r.latency_seconds, 3),
                }
                for r in self.runs
            ],
        }

    def failures(self, limit: int = MAX_FAILED_LISTED) -> list[dict[str, str]]:
        """The failed runs' case names and reasons, one per case (its first failed run), at most `limit`."""
        seen: dict[str, str] = {}
        for r in self.runs:
            if not r.passed and r.case not in seen:
                seen[r.case] = r.reason
        return [{"name": k, "reason": v} for k, v in list(seen.items())[:limit]]

    def summary(self) -> dict[str, Any]:
        """The short form the operator reads from a Job's termination message (at most a few KiB)."""
        return {
            "suite": self.suite,
            "verdict": self.verdict,
            "accuracy": round(self.accuracy, 4),
            "passed": self.passed,
            "failed": self.failed,
            "costUSDPerTaskMax": round(self.cost_usd_per_task_max, 6),
            "latencyP95Seconds": round(self.latency_p95_seconds, 3),
            "failedThresholds": self.failed_thresholds,
            "failedCases": self.failures(),
        }


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(
    suite: str,
    runs: Sequence[RunResult],
    thresholds: Thresholds,
    *,
    judge_calls: int = 0,
    judge_cost_usd: float = 0.0,
) -> Report:
    """Aggregate the runs and decide the verdict."""
    total_weight = sum(r.weight for r in runs)
    passed_weight = sum(r.weight for r in runs if r.passed)
    accuracy = passed_weight / total_weight if total_weight else 0.0
    # The best the ungraded runs could have done: a gate that fails even so is a fail, not a doubt.
    ungraded_weight = sum(r.weight for r in runs if not r.graded)
    best_accuracy = (passed_weight + ungraded_weight) / total_weight if total_weight else 0.0
    graded = [r for r in runs if r.graded]
    costs = [r.cost_usd for r in graded]
    latency = p95([r.latency_seconds for r in graded])
    cost_max = max(costs, default=0.0)
    failed: list[str] = []
    if not runs:
        failed.append("no runs")
    if best_accuracy < thresholds.effective_min_accuracy():
        failed.append(f"accuracy {accuracy:.3f} < minAccuracy {thresholds.effective_min_accuracy():g}")
    if thresholds.max_cost_per_task_usd is not None and cost_max > thresholds.max_cost_per_task_usd:
        failed.append(f"cost per task {cost_max:.6f} USD > maxCostPerTaskUSD {thresholds.max_cost_per_task_usd:g}")
    if thresholds.max_p95_latency_seconds is not None and latency > thresholds.max_p95_latency_seconds:
        failed.append(f"p95 latency {latency:.2f} s > maxP95LatencySeconds {thresholds.max_p95_latency_seconds:g}")
    verdict: Verdict = "fail" if failed else ("inconclusive" if len(graded) < len(runs) else "pass")
    return Report(
        suite=suite,
        verdict=verdict,
        accuracy=accuracy,
        passed=sum(1 for r in runs if r.passed),
        failed=sum(1 for r in runs if not r.passed),
        cost_usd_total=sum(costs),
        cost_usd_per_task_max=cost_max,
        latency_p95_seconds=latency,
        thresholds=thresholds,
        failed_thresholds=failed,
        runs=list(runs),
        judge_calls=judge_calls,
        judge_cost_usd=judge_cost_usd,
    )

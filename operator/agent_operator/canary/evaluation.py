"""Evaluation gates of a rollout: which suites a gate needs, what their results say, and reading a
Job's report. Pure: the machine asks `gate_verdict`; `rollouts.py` runs the Jobs.

A gate is `before` (the candidate serves only its evaluation, in a queue of its own) or
`step:<weight>` (spec.canary.evaluation.atEachStep, at that weight). A gate passes when every
suite it names has a `pass` result for the candidate revision; one `fail` fails it; one
`inconclusive` (the Job failed or timed out, or runs could not be graded) holds it — never a pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from agent_operator.api import models

BEFORE: Final = "before"
STEP_PREFIX: Final = "step:"
RESULTS_LIMIT: Final = 40  # results kept in the status (suites x gates of one rollout)
FAILED_CASES_LIMIT: Final = 20
REASON_CHARS: Final = 300


class GateVerdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    WAITING = "waiting"


@dataclass(frozen=True)
class GateState:
    verdict: GateVerdict
    message: str


def step_gate(weight: int) -> str:
    return f"{STEP_PREFIX}{weight}"


def required(spec: models.Canary, gate: str) -> list[str]:
    """The suites a gate runs."""
    if gate == BEFORE:
        return list(spec.evaluation.before)
    if gate.startswith(STEP_PREFIX):
        return list(spec.evaluation.at_each_step)
    return []


def merge(
    kept: Sequence[models.EvaluationResult], observed: Iterable[models.EvaluationResult], revision: str
) -> list[models.EvaluationResult]:
    """The status's results with the observed ones in place (latest per suite and gate), this revision's only."""
    by_key = {(r.suite, r.gate): r for r in kept if r.revision == revision}
    for result in observed:
        if result.revision == revision:
            by_key[(result.suite, result.gate)] = result
    return list(by_key.values())[-RESULTS_LIMIT:]


def _describe(result: models.EvaluationResult) -> str:
    figures = f"suite {result.suite}: {result.verdict}"
    if result.accuracy is not None:
        figures += f", accuracy {result.accuracy:.3f}"
    if result.failed_thresholds:
        figures += f" ({'; '.join(result.failed_thresholds)})"
    if result.failed_cases:
        cases = ", ".join(f"{c.name} ({c.reason})" for c in result.failed_cases[:5])
        more = len(result.failed_cases) - 5
        figures += f"; failed cases: {cases}" + (f" and {more} more" if more > 0 else "")
    if result.message and result.verdict != "pass":
        figures += f"; {result.message}"
    return figures


def gate_state(spec: models.Canary, results: Sequence[models.EvaluationResult], revision: str, gate: str) -> GateState:
    """What the suites of `gate` say about `revision`: fail before inconclusive before waiting before pass."""
    names = required(spec, gate)
    found = {r.suite: r for r in results if r.gate == gate and r.revision == revision}
    failed = [found[n] for n in names if n in found and found[n].verdict == "fail"]
    if failed:
        return GateState(GateVerdict.FAIL, "; ".join(_describe(r) for r in failed))
    doubtful = [found[n] for n in names if n in found and found[n].verdict not in ("pass", "fail", "running")]
    if doubtful:
        return GateState(GateVerdict.INCONCLUSIVE, "; ".join(_describe(r) for r in doubtful))
    waiting = [n for n in names if n not in found or found[n].verdict != "pass"]
    if waiting:
        return GateState(GateVerdict.WAITING, f"waiting for evaluation suites {', '.join(waiting)} ({gate})")
    passed = "; ".join(_describe(found[n]) for n in names)
    return GateState(GateVerdict.PASS, passed)


def _number(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def from_report(
    text: str, *, suite: str, gate: str, revision: str, job: str, exit_code: int | None
) -> models.EvaluationResult:
    """A result from an evaluation container's termination message (the summary `agent-runtime eval` writes).

    The message is written by a process of the tenant's image: anything unreadable, or a verdict the
    exit code does not confirm, is inconclusive, never a pass.
    """
    base = {"suite": suite, "gate": gate, "revision": revision, "job": job}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        message = f"the evaluation left no readable report (exit code {exit_code}): {text[:REASON_CHARS]!r}"
        return models.EvaluationResult(**base, verdict="inconclusive", message=message)
    verdict = data.get("verdict")
    expected_code = {"pass": 0, "fail": 1}.get(str(verdict))
    if expected_code is None or exit_code != expected_code:
        verdict = "inconclusive"
    cases = [
        models.FailedCase(name=str(c.get("name", ""))[:253], reason=str(c.get("reason", ""))[:REASON_CHARS])
        for c in (data.get("failedCases") or [])[:FAILED_CASES_LIMIT]
        if isinstance(c, dict)
    ]
    thresholds = [str(t)[:REASON_CHARS] for t in (data.get("failedThresholds") or [])[:5]]
    counts = {k: int(v) for k in ("passed", "failed") if isinstance(v := data.get(k), int) and not isinstance(v, bool)}
    return models.EvaluationResult(
        **base,
        verdict=str(verdict),
        accuracy=_number(data, "accuracy"),
        cost_usd_per_task_max=_number(data, "costUSDPerTaskMax"),
        latency_p95_seconds=_number(data, "latencyP95Seconds"),
        failed_thresholds=thresholds,
        failed_cases=cases,
        message="" if verdict in ("pass", "fail") else f"exit code {exit_code}",
        **counts,
    )

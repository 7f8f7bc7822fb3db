"""Canary analysis: the PromQL of every check, and the judgement of what the queries measured.

Pure: `plan()` turns `spec.canary` and a scope (service, namespace, window) into the queries to
run; `judge()` turns what they measured into an `Analysis` with one `CheckResult` per check. The
I/O between the two (running the queries) lives in `prometheus.py`, so every rule here is tested
without a server, and the server test proves the queries are valid PromQL.

Checks (names as they appear in `status.canary.lastAnalysis`):

- `error-rate`: failed / finished canary tasks, `<= maxErrorRate`.
- `p95-latency`: p95 of the canary's task latency histogram, `<= maxP95LatencySeconds`.
- `error-ratio` (when `maxErrorRatio` is set): canary error rate / stable error rate.
- `cost-ratio` (when `maxCostRatio` is set): canary cost per task / stable cost per task.
- `fallback-ratio` (when a maximum is given): canary / stable provider fallbacks per task.
- `latency-ratio` (when `maxLatencyRatio` is set): canary p95 task latency / stable p95.
- `provider-error-ratio` (when `maxProviderErrorRatio` is set): canary / stable share of model
  calls that failed at the provider (the runtime's `llm_provider_calls_total`, outcomes
  `unavailable` and `error`; `rate_limited` excluded). A provider failing 5xx or timing out is
  often retried or failed over, so the task still succeeds and `error-rate` sees nothing; this
  check sees the calls.
- each `spec.canary.checks` entry, its `{{service}}`, `{{namespace}}` and `{{track}}` filled in.

Each check ends in one of four verdicts:

- `error`: the query failed (Prometheus unreachable, bad PromQL, a result that is not one number)
  or the traffic count needed to trust it failed. Never success.
- `inconclusive`: no data (empty result or NaN, e.g. 0/0) or fewer than `minRequests` requests in
  the window (canary side for every built-in check, stable side too for the relative ones). The
  value is still measured and shown. With `onNoData: fail` these become `failure` instead.
- `failure`: a value outside the passing range.
- `success`: a value inside it, with enough traffic.

The analysis verdict is the worst check verdict in the order failure > error > inconclusive >
success: a failure is evidence against the canary even when another query errored, and one
inconclusive check is enough to withhold a success.

Relative checks divide by the stable value floored at a small constant (`ERROR_RATE_FLOOR`, ...):
a stable track with no errors at all must not turn the canary's first error into an infinite
ratio (a false rollback); the absolute checks still bound the canary on their own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from agent_operator.api import models

from agent_runtime import constants


class Verdict(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class Gate(StrEnum):
    """Whose traffic a check needs before its value can be trusted."""

    NONE = "none"  # user checks: they may measure anything, only "no data" holds them
    CANARY = "canary"  # absolute checks of the canary
    BOTH = "both"  # relative checks compare two tracks: both need enough requests


CANARY: Final = "canary"
STABLE: Final = "stable"
CHECK_ERROR_RATE: Final = "error-rate"
CHECK_P95_LATENCY: Final = "p95-latency"
CHECK_ERROR_RATIO: Final = "error-ratio"
CHECK_COST_RATIO: Final = "cost-ratio"
CHECK_FALLBACK_RATIO: Final = "fallback-ratio"
CHECK_LATENCY_RATIO: Final = "latency-ratio"
CHECK_PROVIDER_ERROR_RATIO: Final = "provider-error-ratio"
# Outcomes of `llm_provider_calls_total` that count as the provider failing (not 429s: a shared
# limit, not the canary's fault).
PROVIDER_FAILURES: Final = ("unavailable", "error")

# Floors of the stable value in relative checks (see the module docstring).
ERROR_RATE_FLOOR: Final = 0.01
COST_PER_TASK_FLOOR: Final = 0.0001
FALLBACK_RATE_FLOOR: Final = 0.01
LATENCY_FLOOR_SECONDS: Final = 0.001
PROVIDER_ERROR_RATE_FLOOR: Final = 0.01
# A rate needs at least two samples in its window; four scrapes leave room for a missed one.
MIN_WINDOW_SCRAPES: Final = 4
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
PROMETHEUS_CHECK: Final = "prometheus"
# The start of a check's message when the namespace enforcer refused its query (status.py keys on it).
REFUSED: Final = "query refused, it reads outside the AgentService's namespace"
NO_PROMETHEUS: Final = (
    "the operator runs without a Prometheus URL (--prometheus-url, chart value prometheus.url): canary analyses "
    "cannot run, so a rollout holds and then pauses; set it, or promote with the agentops.dev/promote annotation"
)
# Worst first: the analysis takes the first verdict any of its checks has.
SEVERITY: Final = (Verdict.FAILURE, Verdict.ERROR, Verdict.INCONCLUSIVE, Verdict.SUCCESS)


@dataclass(frozen=True)
class Scope:
    """Which series an analysis reads: one service (optionally one namespace) over one window."""

    service: str
    namespace: str = ""  # empty: no namespace matcher (series scraped outside Kubernetes)
    window: str = "1m"  # a PromQL range, e.g. `60s`


@dataclass(frozen=True)
class CheckPlan:
    """One check to run: its query, its passing range and whose traffic it needs."""

    name: str
    query: str
    what: str  # what the value is, in words, for messages
    min: float | None = None
    max: float | None = None
    gate: Gate = Gate.CANARY
    problem: str = ""  # set when the check cannot be run at all (e.g. an unknown placeholder)


@dataclass(frozen=True)
class AnalysisPlan:
    """Every query of one analysis and the rules to judge what they return."""

    canary_requests: str
    stable_requests: str
    checks: tuple[CheckPlan, ...]
    min_requests: int
    on_no_data: models.NoDataPolicy
    window: str

    def queries(self) -> list[str]:
        """The distinct queries to run, in a stable order (traffic counts first)."""
        wanted = [self.canary_requests]
        if any(check.gate == Gate.BOTH for check in self.checks):
            wanted.append(self.stable_requests)
        wanted += [check.query for check in self.checks if not check.problem]
        return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Measurement:
    """What one query returned: a number, no data (`value is None`), or an error."""

    value: float | None = None
    error: str = ""
    refused: bool = False  # the namespace enforcer refused the query (it names another namespace)


# --- PromQL ----------------------------------------------------------------------------------------


def number(value: float) -> str:
    """Format a number for PromQL and for people (`0.05`, `60`, `1e-05`)."""
    return format(value, ".6g")


def window_for(canary: models.Canary, scrape_interval_seconds: float) -> str:
    """The analysis window: one interval, but never fewer than `MIN_WINDOW_SCRAPES` scrapes."""
    seconds = max(canary.interval_seconds, MIN_WINDOW_SCRAPES * scrape_interval_seconds)
    return f"{math.ceil(seconds)}s"


def label_value(value: str) -> str:
    """Escape a string for a double-quoted PromQL label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selector(
    scope: Scope,
    track: str | None,
    *,
    equal: Mapping[str, str] | None = None,
    regex: Mapping[str, str] | None = None,
) -> str:
    """Label matchers of one track of one service (every track: `track=None`); no namespace matcher
    when the scope has none. The one spelling of a service's series, for analyses and the budget status.

    `equal` adds equality matchers, `regex` regular-expression ones (`label=~"a|b"`).
    """
    matchers = {constants.LABEL_SERVICE: scope.service}
    if scope.namespace:
        matchers["namespace"] = scope.namespace
    if track is not None:
        matchers[constants.LABEL_TRACK] = track
    matchers.update(equal or {})
    parts = [f'{key}="{label_value(value)}"' for key, value in matchers.items()]
    parts += [f'{key}=~"{label_value(value)}"' for key, value in (regex or {}).items()]
    return "{" + ", ".join(parts) + "}"


def requests_expr(scope: Scope, track: str) -> str:
    """Finished tasks (any status) of one track in the window."""
    return f"sum(increase({constants.SERIES_REQUESTS}{selector(scope, track)}[{scope.window}]))"


def _per_task(numerator_series: str, scope: Scope, track: str, **extra: str) -> str:
    """Rate of a counter divided by the rate of finished tasks; a counter never created counts as 0."""
    numerator = f"sum(rate({numerator_series}{selector(scope, track, equal=extra)}[{scope.window}]))"
    tasks = f"sum(rate({constants.SERIES_REQUESTS}{selector(scope, track)}[{scope.window}]))"
    # `or vector(0)`: a runtime creates the `failed` (or fallbacks) series at the first occurrence;
    # no series yet means none happened, not "no data". Zero tasks still gives 0/0 = NaN = no data.
    return f"(({numerator}) or vector(0)) / {tasks}"


def error_rate_expr(scope: Scope, track: str) -> str:
    """Failed tasks / finished tasks of one track."""
    return _per_task(constants.SERIES_REQUESTS, scope, track, status="failed")


def cost_per_task_expr(scope: Scope, track: str) -> str:
    """LLM spend in USD per finished task of one track."""
    return _per_task(constants.SERIES_COST, scope, track)


def fallback_rate_expr(scope: Scope, track: str) -> str:
    """Provider fallbacks per finished task of one track."""
    return _per_task(constants.SERIES_FALLBACKS, scope, track)


def provider_error_rate_expr(scope: Scope, track: str) -> str:
    """Failed model calls / model calls of one track (see `PROVIDER_FAILURES`)."""
    calls = f"{constants.SERIES_PROVIDER_CALLS}{selector(scope, track)}"
    failures = {"outcome": "|".join(PROVIDER_FAILURES)}
    failed = f"{constants.SERIES_PROVIDER_CALLS}{selector(scope, track, regex=failures)}"
    # `or vector(0)` as in `_per_task`: no failure series yet is no failure; no call is no data
    return f"((sum(rate({failed}[{scope.window}]))) or vector(0)) / sum(rate({calls}[{scope.window}]))"


def p95_latency_expr(scope: Scope, track: str) -> str:
    """p95 task latency of one track; NaN (no data) when it finished no task in the window."""
    buckets = f"sum by (le) (rate({constants.SERIES_LATENCY_BUCKET}{selector(scope, track)}[{scope.window}]))"
    return f"histogram_quantile(0.95, {buckets})"


def ratio_expr(canary_expr: str, stable_expr: str, floor: float) -> str:
    """Canary value over the stable value, the latter floored (see the module docstring)."""
    return f"({canary_expr}) / clamp_min({stable_expr}, {number(floor)})"


def fill_placeholders(query: str, scope: Scope, track: str) -> tuple[str, list[str]]:
    """Fill `{{service}}`, `{{namespace}}`, `{{track}}`; return the query and any unknown names.

    An empty namespace fills in as `""`, which in a matcher (`namespace=""`) selects series that
    have no namespace label: the same scope as the built-in checks.
    """
    values = {"service": scope.service, "namespace": scope.namespace, "track": track}
    unknown: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            unknown.append(name)
            return match.group(0)
        return label_value(values[name])

    return PLACEHOLDER.sub(substitute, query), unknown


def plan(canary: models.Canary, scope: Scope, *, max_fallback_ratio: float | None = None) -> AnalysisPlan:
    """Every check `spec.canary` asks for, as queries over `scope`.

    `max_fallback_ratio` overrides `spec.canary.maxFallbackRatio` (which enables the check).
    """
    if max_fallback_ratio is None:
        max_fallback_ratio = canary.max_fallback_ratio
    checks = [
        CheckPlan(CHECK_ERROR_RATE, error_rate_expr(scope, CANARY), "canary error rate", max=canary.max_error_rate),
        CheckPlan(
            CHECK_P95_LATENCY,
            p95_latency_expr(scope, CANARY),
            "canary p95 latency in seconds",
            max=canary.max_p95_latency_seconds,
        ),
    ]
    relative = [
        (CHECK_ERROR_RATIO, canary.max_error_ratio, error_rate_expr, ERROR_RATE_FLOOR, "error rate"),
        (CHECK_COST_RATIO, canary.max_cost_ratio, cost_per_task_expr, COST_PER_TASK_FLOOR, "cost per task"),
        (CHECK_FALLBACK_RATIO, max_fallback_ratio, fallback_rate_expr, FALLBACK_RATE_FLOOR, "fallbacks per task"),
        (CHECK_LATENCY_RATIO, canary.max_latency_ratio, p95_latency_expr, LATENCY_FLOOR_SECONDS, "p95 latency"),
        (
            CHECK_PROVIDER_ERROR_RATIO,
            canary.max_provider_error_ratio,
            provider_error_rate_expr,
            PROVIDER_ERROR_RATE_FLOOR,
            "provider error rate",
        ),
    ]
    for name, limit, expr, floor, what in relative:
        if limit is not None:
            query = ratio_expr(expr(scope, CANARY), expr(scope, STABLE), floor)
            checks.append(CheckPlan(name, query, f"canary {what} / stable {what}", max=limit, gate=Gate.BOTH))
    for check in canary.checks:
        query, unknown = fill_placeholders(check.query, scope, CANARY)
        problem = ""
        if unknown:
            problem = f"unknown placeholder(s) {', '.join(sorted(set(unknown)))}: use service, namespace or track"
        checks.append(
            CheckPlan(check.name, query, f"value of check {check.name}", check.min, check.max, Gate.NONE, problem)
        )
    return AnalysisPlan(
        canary_requests=requests_expr(scope, CANARY),
        stable_requests=requests_expr(scope, STABLE),
        checks=tuple(checks),
        min_requests=canary.min_requests,
        on_no_data=models.NoDataPolicy(canary.on_no_data),
        window=scope.window,
    )


# --- judgement -------------------------------------------------------------------------------------


def threshold_text(low: float | None, high: float | None) -> str:
    """The passing range in words: `<= 0.05`, `>= 1`, `>= 1 and <= 5`."""
    parts = []
    if low is not None:
        parts.append(f">= {number(low)}")
    if high is not None:
        parts.append(f"<= {number(high)}")
    return " and ".join(parts)


def _traffic(plan: AnalysisPlan, measurements: Mapping[str, Measurement], track: str) -> tuple[float | None, str]:
    """Requests of one track in the window (absent series count as 0), or why they are unknown."""
    query = plan.canary_requests if track == CANARY else plan.stable_requests
    measured = measurements.get(query)
    if measured is None:
        return None, f"the {track} request count was not measured"
    if measured.error:
        return None, f"could not count {track} requests: {measured.error}"
    if measured.value is None or math.isnan(measured.value):
        return 0.0, ""  # no series yet: no request was ever counted
    return measured.value, ""


def _lacking(plan: AnalysisPlan, why: str) -> tuple[Verdict, str]:
    """The verdict of a check without enough data, under `onNoData`."""
    if plan.on_no_data == models.NoDataPolicy.FAIL:
        return Verdict.FAILURE, f"{why} (onNoData: fail)"
    return Verdict.INCONCLUSIVE, f"{why} (onNoData: hold)"


def judge_check(check: CheckPlan, plan: AnalysisPlan, measurements: Mapping[str, Measurement]) -> models.CheckResult:
    """The verdict of one check from the measurements of its query and of the traffic it needs."""
    canary_requests, _ = _traffic(plan, measurements, CANARY)
    measured = None if check.problem else measurements.get(check.query)
    if measured is not None and measured.value is not None and math.isnan(measured.value):
        measured = Measurement(value=None, error=measured.error)  # NaN (e.g. 0/0) is no data
    verdict, message = _verdict(check, plan, measurements, measured)
    return models.CheckResult(
        name=check.name,
        query=check.query,
        value=measured.value if measured is not None and not measured.error else None,
        samples=canary_requests,
        threshold=threshold_text(check.min, check.max),
        verdict=verdict.value,
        message=message,
    )


def _verdict(
    check: CheckPlan, plan: AnalysisPlan, measurements: Mapping[str, Measurement], measured: Measurement | None
) -> tuple[Verdict, str]:
    """Rules in order: cannot run, query failed, too little traffic, no data, out of range, pass."""
    if check.problem:
        return Verdict.ERROR, check.problem
    if measured is None:
        return Verdict.ERROR, "the query was not run"
    if measured.refused:
        return Verdict.ERROR, f"{REFUSED}: {measured.error}"
    if measured.error:
        return Verdict.ERROR, f"query failed: {measured.error}"
    tracks = {Gate.NONE: (), Gate.CANARY: (CANARY,), Gate.BOTH: (CANARY, STABLE)}[check.gate]
    for track in tracks:
        requests, problem = _traffic(plan, measurements, track)
        if requests is None:
            return Verdict.ERROR, problem
        if requests < plan.min_requests:
            why = f"{number(requests)} {track} requests in {plan.window}, fewer than minRequests {plan.min_requests}"
            return _lacking(plan, why)
    if measured.value is None:
        return _lacking(plan, f"no data for the {check.what}")
    value = measured.value
    if check.min is not None and value < check.min:
        return Verdict.FAILURE, f"{check.what} {number(value)} is below the minimum {number(check.min)}"
    if check.max is not None and value > check.max:
        return Verdict.FAILURE, f"{check.what} {number(value)} is above the maximum {number(check.max)}"
    return Verdict.SUCCESS, f"{check.what} {number(value)} is within {threshold_text(check.min, check.max)}"


def overall(verdicts: Iterable[str]) -> Verdict:
    """The analysis verdict: the worst of its checks (failure > error > inconclusive > success)."""
    seen = {Verdict(v) for v in verdicts}
    if not seen:
        return Verdict.INCONCLUSIVE  # nothing was checked: never a success
    return next(v for v in SEVERITY if v in seen)


def judge(
    plan: AnalysisPlan,
    measurements: Mapping[str, Measurement],
    *,
    time: str,
    weight: int,
) -> models.Analysis:
    """Judge every check of `plan` from `measurements` (keyed by query) into one `Analysis`."""
    checks = [judge_check(check, plan, measurements) for check in plan.checks]
    return models.Analysis(time=time, weight=weight, verdict=overall(c.verdict for c in checks).value, checks=checks)


def summary(analysis: models.Analysis) -> str:
    """One line naming the checks that kept the analysis from passing: query, value, threshold."""
    verdict = analysis.verdict
    if verdict == Verdict.SUCCESS:
        return f"all {len(analysis.checks)} checks passed at weight {analysis.weight}"
    parts = []
    for check in analysis.checks:
        if check.verdict != verdict:
            continue
        value = "no data" if check.value is None else number(check.value)
        parts.append(f"{check.name} = {value} (threshold {check.threshold}; {check.message}) from `{check.query}`")
    return f"{verdict} at weight {analysis.weight}: " + ("; ".join(parts) or "no check has this verdict")


def no_prometheus(weight: int, time_: str) -> models.Analysis:
    """The analysis of an operator without a Prometheus URL: an error, never a success."""
    check = models.CheckResult(name=PROMETHEUS_CHECK, verdict=Verdict.ERROR.value, message=NO_PROMETHEUS)
    return models.Analysis(time=time_, weight=weight, verdict=Verdict.ERROR.value, checks=[check])

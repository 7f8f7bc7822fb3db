"""Canary analysis (`agent_operator.canary.analysis`): the PromQL of each check and the judgement of values.

Covers:
- selectors: service always, track unless every track is meant, namespace only when known, label
  values escaped;
- the exact PromQL of the built-in checks (request count, error rate, p95 latency) and of the
  relative ones (error, cost-per-task and fallback ratios against the stable track, floored),
  present only when configured; the window (interval, at least four scrapes);
- user checks: `{{service}} {{namespace}} {{track}}` placeholders (spacing allowed, empty namespace),
  an unknown placeholder makes the check an error without running it;
- which queries an analysis runs (deduplicated, stable count only for relative checks);
- verdicts: success with query, value, samples, threshold and message; failure naming value and
  threshold (above max, below min); too little canary or stable traffic is inconclusive even with
  good values, or a failure under `onNoData: fail`; no data (empty, NaN) is inconclusive; a query
  error, a failed traffic count or a missing measurement is an error, never a success;
- the analysis verdict (failure > error > inconclusive > success, nothing checked is inconclusive)
  and the one-line summary;
- hypothesis: whatever the measurements, an analysis succeeds only if every query answered with a
  number inside its range and the canary had at least `minRequests` requests.
"""

from __future__ import annotations

import math

from agent_operator.api import models
from agent_operator.canary import analysis
from agent_operator.canary.analysis import Measurement, Scope, Verdict
from hypothesis import given, settings
from hypothesis import strategies as st

SCOPE = Scope(service="support-bot", namespace="prod", window="60s")
TIME = "2026-01-01T00:00:00Z"


def canary_spec(**overrides: object) -> models.Canary:
    return models.Canary.model_validate({"enabled": True, "min_requests": 20, **overrides})


def by_name(plan: analysis.AnalysisPlan) -> dict[str, analysis.CheckPlan]:
    return {check.name: check for check in plan.checks}


def healthy(plan: analysis.AnalysisPlan, **values: Measurement) -> dict[str, Measurement]:
    """Measurements of a healthy canary with plenty of traffic; `values` override by check name."""
    measured = {plan.canary_requests: Measurement(120.0), plan.stable_requests: Measurement(900.0)}
    for check in plan.checks:
        measured[check.query] = values.get(check.name, Measurement(check.max / 2 if check.max else 1.0))
    return measured


def check_result(result: models.Analysis, name: str) -> models.CheckResult:
    return next(c for c in result.checks if c.name == name)


# --- PromQL ----------------------------------------------------------------------------------------


def test_selector_scopes_service_namespace_and_track() -> None:
    assert analysis.selector(SCOPE, "canary") == '{service="support-bot", namespace="prod", track="canary"}'
    assert analysis.selector(SCOPE, "stable", equal={"status": "failed"}) == (
        '{service="support-bot", namespace="prod", track="stable", status="failed"}'
    )


def test_selector_omits_the_namespace_when_unknown() -> None:
    assert analysis.selector(Scope("svc"), "canary") == '{service="svc", track="canary"}'


def test_selector_of_every_track_has_no_track_matcher() -> None:
    assert analysis.selector(SCOPE, None) == '{service="support-bot", namespace="prod"}'
    assert analysis.selector(Scope("svc"), None) == '{service="svc"}'


def test_label_values_are_escaped() -> None:
    assert analysis.label_value('a"b\\c') == 'a\\"b\\\\c'


def test_builtin_queries_are_exact() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    sel = '{service="support-bot", namespace="prod", track="canary"}'
    failed = '{service="support-bot", namespace="prod", track="canary", status="failed"}'
    assert plan.canary_requests == f"sum(increase(agent_requests_total{sel}[60s]))"
    checks = by_name(plan)
    assert list(checks) == ["error-rate", "p95-latency"]
    assert checks["error-rate"].query == (
        f"((sum(rate(agent_requests_total{failed}[60s]))) or vector(0)) / sum(rate(agent_requests_total{sel}[60s]))"
    )
    assert checks["p95-latency"].query == (
        f"histogram_quantile(0.95, sum by (le) (rate(agent_latency_seconds_bucket{sel}[60s])))"
    )
    assert (checks["error-rate"].max, checks["p95-latency"].max) == (0.05, 60)
    assert checks["error-rate"].gate == analysis.Gate.CANARY


def test_relative_checks_divide_by_the_floored_stable_value() -> None:
    plan = analysis.plan(canary_spec(max_error_ratio=1.5, max_cost_ratio=2), SCOPE, max_fallback_ratio=3)
    checks = by_name(plan)
    assert list(checks) == ["error-rate", "p95-latency", "error-ratio", "cost-ratio", "fallback-ratio"]
    error_ratio = checks["error-ratio"]
    canary_rate = analysis.error_rate_expr(SCOPE, "canary")
    stable_rate = analysis.error_rate_expr(SCOPE, "stable")
    assert error_ratio.query == f"({canary_rate}) / clamp_min({stable_rate}, 0.01)"
    assert (error_ratio.max, error_ratio.gate) == (1.5, analysis.Gate.BOTH)
    assert "agent_cost_usd_total" in checks["cost-ratio"].query
    assert "clamp_min(" in checks["cost-ratio"].query
    assert ", 0.0001)" in checks["cost-ratio"].query
    assert "agent_provider_fallbacks_total" in checks["fallback-ratio"].query
    assert 'track="stable"' in checks["fallback-ratio"].query
    assert checks["fallback-ratio"].max == 3


def test_per_task_numerators_count_a_missing_series_as_zero() -> None:
    assert analysis.cost_per_task_expr(SCOPE, "stable").startswith(
        '((sum(rate(agent_cost_usd_total{service="support-bot", namespace="prod", track="stable"}[60s]))) or vector(0))'
    )


def test_the_window_is_the_interval_but_at_least_four_scrapes() -> None:
    assert analysis.window_for(canary_spec(interval="2m"), 30) == "120s"
    assert analysis.window_for(canary_spec(interval="30s"), 30) == "120s"
    assert analysis.window_for(canary_spec(interval="5s"), 1) == "5s"
    assert analysis.window_for(canary_spec(interval="2s"), 1.5) == "6s"


def test_user_checks_fill_their_placeholders() -> None:
    check = models.CanaryCheck(
        name="tool-errors",
        query='sum(rate(agent_tool_calls_total{service="{{service}}", namespace="{{ namespace }}", '
        'track="{{track}}", status="error"}[1m]))',
        max=0.5,
    )
    plan = analysis.plan(canary_spec(checks=[check]), SCOPE)
    user = by_name(plan)["tool-errors"]
    assert user.query == (
        'sum(rate(agent_tool_calls_total{service="support-bot", namespace="prod", track="canary", status="error"}[1m]))'
    )
    assert (user.min, user.max, user.gate, user.problem) == (None, 0.5, analysis.Gate.NONE, "")


def test_an_empty_namespace_fills_in_as_the_empty_matcher() -> None:
    query, unknown = analysis.fill_placeholders('x{namespace="{{namespace}}"}', Scope("svc"), "canary")
    assert (query, unknown) == ('x{namespace=""}', [])


def test_an_unknown_placeholder_is_an_error_and_its_query_is_not_run() -> None:
    check = models.CanaryCheck(name="odd", query='up{pod="{{pod}}"}', min=1)
    plan = analysis.plan(canary_spec(checks=[check]), SCOPE)
    assert 'up{pod="{{pod}}"}' not in plan.queries()
    result = analysis.judge(plan, healthy(plan), time=TIME, weight=10)
    odd = check_result(result, "odd")
    assert odd.verdict == "error"
    assert "pod" in odd.message
    assert result.verdict == "error"


def test_queries_are_deduplicated_and_count_stable_traffic_only_for_relative_checks() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    assert plan.queries() == [plan.canary_requests, *(c.query for c in plan.checks)]
    twice = models.CanaryCheck(name="again", query=plan.canary_requests, min=1)
    relative = analysis.plan(canary_spec(max_error_ratio=2, checks=[twice]), SCOPE)
    queries = relative.queries()
    assert queries[:2] == [relative.canary_requests, relative.stable_requests]
    assert len(queries) == len(set(queries)) == 5  # the repeated one runs once


# --- verdicts --------------------------------------------------------------------------------------


def test_a_healthy_canary_succeeds_and_every_check_says_why() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    measured = healthy(plan, **{"error-rate": Measurement(0.01), "p95-latency": Measurement(4.2)})
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    assert (result.verdict, result.weight, result.time) == ("success", 10, TIME)
    error_rate = check_result(result, "error-rate")
    assert error_rate.query == by_name(plan)["error-rate"].query
    assert (error_rate.value, error_rate.samples, error_rate.threshold) == (0.01, 120.0, "<= 0.05")
    assert error_rate.verdict == "success"
    assert error_rate.message == "canary error rate 0.01 is within <= 0.05"


def test_an_error_rate_above_the_threshold_fails_naming_value_and_threshold() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    result = analysis.judge(plan, healthy(plan, **{"error-rate": Measurement(0.3)}), time=TIME, weight=10)
    assert result.verdict == "failure"
    failed = check_result(result, "error-rate")
    assert (failed.verdict, failed.value, failed.threshold) == ("failure", 0.3, "<= 0.05")
    assert failed.message == "canary error rate 0.3 is above the maximum 0.05"
    assert check_result(result, "p95-latency").verdict == "success"


def test_a_value_below_a_user_minimum_fails() -> None:
    check = models.CanaryCheck(name="cache-hits", query="avg(cache_hit_ratio)", min=0.5, max=1)
    plan = analysis.plan(canary_spec(checks=[check]), SCOPE)
    result = analysis.judge(plan, healthy(plan, **{"cache-hits": Measurement(0.2)}), time=TIME, weight=10)
    hits = check_result(result, "cache-hits")
    assert (hits.verdict, hits.threshold) == ("failure", ">= 0.5 and <= 1")
    assert "below the minimum 0.5" in hits.message


def test_too_little_canary_traffic_is_inconclusive_even_with_good_values() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    measured = healthy(plan) | {plan.canary_requests: Measurement(12.0)}
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    assert result.verdict == "inconclusive"
    error_rate = check_result(result, "error-rate")
    assert (error_rate.verdict, error_rate.samples, error_rate.value) == ("inconclusive", 12.0, 0.025)
    assert error_rate.message == "12 canary requests in 60s, fewer than minRequests 20 (onNoData: hold)"


def test_too_little_traffic_with_a_bad_value_is_still_inconclusive() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    measured = healthy(plan, **{"error-rate": Measurement(1.0)}) | {plan.canary_requests: Measurement(3.0)}
    assert analysis.judge(plan, measured, time=TIME, weight=10).verdict == "inconclusive"


def test_on_no_data_fail_turns_too_little_traffic_into_a_failure() -> None:
    plan = analysis.plan(canary_spec(on_no_data="fail"), SCOPE)
    measured = healthy(plan) | {plan.canary_requests: Measurement(None)}
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    assert result.verdict == "failure"
    assert check_result(result, "p95-latency").message.endswith("(onNoData: fail)")
    assert check_result(result, "p95-latency").samples == 0.0


def test_no_data_is_inconclusive_whether_empty_or_nan() -> None:
    plan = analysis.plan(canary_spec(min_requests=0), SCOPE)
    for empty in (Measurement(None), Measurement(math.nan)):
        result = analysis.judge(plan, healthy(plan, **{"p95-latency": empty}), time=TIME, weight=10)
        latency = check_result(result, "p95-latency")
        assert (latency.verdict, latency.value) == ("inconclusive", None)
        assert latency.message == "no data for the canary p95 latency in seconds (onNoData: hold)"
        assert result.verdict == "inconclusive"


def test_a_query_error_is_an_error_never_a_success() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    measured = healthy(plan, **{"p95-latency": Measurement(error="connection refused")})
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    latency = check_result(result, "p95-latency")
    assert (latency.verdict, latency.message, latency.value) == ("error", "query failed: connection refused", None)
    assert result.verdict == "error"


def test_a_failed_traffic_count_makes_every_gated_check_an_error() -> None:
    user = models.CanaryCheck(name="queue", query="max(agent_queue_depth)", max=100)
    plan = analysis.plan(canary_spec(checks=[user]), SCOPE)
    measured = healthy(plan) | {plan.canary_requests: Measurement(error="timeout")}
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    assert check_result(result, "error-rate").verdict == "error"
    assert check_result(result, "error-rate").message == "could not count canary requests: timeout"
    assert check_result(result, "error-rate").samples is None
    assert check_result(result, "queue").verdict == "success"  # user checks need no traffic count


def test_a_missing_measurement_is_an_error() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    result = analysis.judge(plan, {plan.canary_requests: Measurement(100.0)}, time=TIME, weight=10)
    assert {c.verdict for c in result.checks} == {"error"}
    assert check_result(result, "error-rate").message == "the query was not run"


def test_a_relative_check_needs_stable_traffic_too() -> None:
    plan = analysis.plan(canary_spec(max_error_ratio=2), SCOPE)
    measured = healthy(plan) | {plan.stable_requests: Measurement(5.0)}
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    ratio = check_result(result, "error-ratio")
    assert ratio.verdict == "inconclusive"
    assert ratio.message.startswith("5 stable requests in 60s")
    assert check_result(result, "error-rate").verdict == "success"


def test_a_canary_three_times_worse_than_stable_fails_the_relative_check() -> None:
    plan = analysis.plan(canary_spec(max_error_ratio=2, max_error_rate=0.5), SCOPE)
    worse = healthy(plan, **{"error-rate": Measurement(0.15), "error-ratio": Measurement(3.0)})
    result = analysis.judge(plan, worse, time=TIME, weight=10)
    assert result.verdict == "failure"
    assert check_result(result, "error-rate").verdict == "success"
    ratio = check_result(result, "error-ratio")
    assert (ratio.verdict, ratio.value, ratio.threshold) == ("failure", 3.0, "<= 2")
    assert ratio.message == "canary error rate / stable error rate 3 is above the maximum 2"


def test_the_analysis_verdict_is_the_worst_check_verdict() -> None:
    assert analysis.overall(["success", "inconclusive", "error", "failure"]) == Verdict.FAILURE
    assert analysis.overall(["success", "inconclusive", "error"]) == Verdict.ERROR
    assert analysis.overall(["success", "inconclusive"]) == Verdict.INCONCLUSIVE
    assert analysis.overall(["success", "success"]) == Verdict.SUCCESS
    assert analysis.overall([]) == Verdict.INCONCLUSIVE


def test_the_summary_names_the_checks_behind_the_verdict() -> None:
    plan = analysis.plan(canary_spec(), SCOPE)
    result = analysis.judge(plan, healthy(plan, **{"error-rate": Measurement(0.3)}), time=TIME, weight=50)
    text = analysis.summary(result)
    assert text.startswith("failure at weight 50: error-rate = 0.3 (threshold <= 0.05; ")
    assert by_name(plan)["error-rate"].query in text
    assert "p95-latency" not in text
    passed = analysis.judge(plan, healthy(plan), time=TIME, weight=50)
    assert analysis.summary(passed) == "all 2 checks passed at weight 50"


# --- property: nothing but good numbers with enough traffic is a success ---------------------------

MEASUREMENTS = st.one_of(
    st.builds(Measurement, st.floats(min_value=0, max_value=200, allow_nan=False)),
    st.just(Measurement(None)),
    st.just(Measurement(math.nan)),
    st.just(Measurement(error="boom")),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=50),
    st.sampled_from(["hold", "fail"]),
    st.booleans(),
    st.data(),
)
def test_success_needs_numbers_in_range_and_enough_traffic(
    min_requests: int, on_no_data: str, relative: bool, data: st.DataObject
) -> None:
    spec = canary_spec(
        min_requests=min_requests,
        on_no_data=on_no_data,
        max_error_ratio=2 if relative else None,
        checks=[models.CanaryCheck(name="user", query="vector(1)", min=1, max=150)],
    )
    plan = analysis.plan(spec, SCOPE)
    measured = {query: data.draw(MEASUREMENTS, label=query) for query in plan.queries()}
    result = analysis.judge(plan, measured, time=TIME, weight=10)
    assert len(result.checks) == len(plan.checks)
    if result.verdict != "success":
        return
    for check in plan.checks:
        value = measured[check.query].value
        assert value is not None
        assert not math.isnan(value)
        assert not measured[check.query].error
        assert check.min is None or value >= check.min
        assert check.max is None or value <= check.max
    canary_requests = measured[plan.canary_requests]
    assert not canary_requests.error
    assert (canary_requests.value or 0) >= min_requests
    if relative:
        assert (measured[plan.stable_requests].value or 0) >= min_requests


def test_latency_and_provider_error_ratios_compare_both_tracks_when_set() -> None:
    scope = analysis.Scope(service="svc", namespace="team-a", window="60s")
    off = analysis.plan(models.Canary.model_validate({"enabled": True}), scope)
    assert not {"latency-ratio", "provider-error-ratio"} & {c.name for c in off.checks}
    on = analysis.plan(
        models.Canary.model_validate({"enabled": True, "maxLatencyRatio": 1.5, "maxProviderErrorRatio": 2}), scope
    )
    checks = {c.name: c for c in on.checks}
    for name, limit in (("latency-ratio", 1.5), ("provider-error-ratio", 2)):
        check = checks[name]
        assert check.gate == analysis.Gate.BOTH and check.max == limit
        assert 'track="canary"' in check.query and 'track="stable"' in check.query
        assert 'namespace="team-a"' in check.query
    assert 'outcome=~"unavailable|error"' in checks["provider-error-ratio"].query
    assert "rate_limited" not in checks["provider-error-ratio"].query
    assert "histogram_quantile(0.95" in checks["latency-ratio"].query

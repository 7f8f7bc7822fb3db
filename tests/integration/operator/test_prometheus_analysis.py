"""Canary analysis end to end: a real `prometheus` scraping a real exporter of runtime-shaped series.

One exporter serves several services at once (stable and canary tracks each, no namespace label),
one prometheus scrapes it every second; after a short warm-up every test reads the same data.
Covers:
- every built-in query (and the relative ones) is valid PromQL that returns one number;
- a healthy canary passes every check, with values, samples and thresholds recorded;
- a canary with 30 % errors fails, naming the query, the value (~0.3) and the threshold;
- a slow canary fails the p95 latency check;
- a canary with no traffic (series at zero) is inconclusive, and one with no series at all is
  inconclusive, or a failure under `onNoData: fail`;
- a canary 3x worse than stable fails the error, cost, fallback, latency and provider-error ratio
  checks while its absolute error rate passes; one as good as stable passes them;
- user checks: placeholders filled and answered, bad PromQL and a many-series answer are errors with
  Prometheus's reason, scalars and NaN results are read right;
- Prometheus down (nothing listening) is an error for every check, quickly, never a success;
- wired to the state machine: real analyses promote the healthy canary step by step and roll the
  faulty one back after `failureLimit` analyses with the failing query, value and threshold.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from agent_operator.api import models
from agent_operator.canary import analysis, machine
from agent_operator.canary.prometheus import Prometheus, parse_result
from agentops_dev.localprometheus import PrometheusServer, running_prometheus
from agentops_dev.localredis import free_port

from tests.support.metrics_exporter import MetricsExporter, Traffic

WINDOW = "8s"
RPS = 20.0
STABLE = Traffic(RPS, error_ratio=0.02, latency_seconds=3, cost_per_task=0.01, fallbacks_per_task=0.1)
PROFILES: dict[str, dict[str, Traffic]] = {
    "healthy": {"stable": STABLE, "canary": Traffic(RPS, 0.01, 3, 0.01, 0.1)},
    "faulty": {"stable": STABLE, "canary": Traffic(RPS, 0.30, 3, 0.01, 0.1)},
    "slow": {"stable": STABLE, "canary": Traffic(RPS, 0.01, 90, 0.01, 0.1)},
    "idle": {"stable": STABLE, "canary": Traffic(0.0)},
    "absent": {"stable": STABLE},
    # 3x worse on every relative measure: errors, cost, fallbacks, latency (3 s -> 9 s), provider errors
    "worse": {"stable": Traffic(RPS, 0.05, 3, 0.01, 0.1, 0.1), "canary": Traffic(RPS, 0.15, 9, 0.03, 0.3, 0.3)},
    "same": {"stable": Traffic(RPS, 0.05, 3, 0.01, 0.1, 0.1), "canary": Traffic(RPS, 0.05, 3, 0.01, 0.1, 0.1)},
}


@pytest.fixture(scope="module")
def exporter() -> Iterator[MetricsExporter]:
    with MetricsExporter() as running:
        for service, tracks in PROFILES.items():
            for track, traffic in tracks.items():
                running.set(service, track, traffic)
        yield running


@pytest.fixture(scope="module")
def server(exporter: MetricsExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [exporter.target]) as running:
        # warm-up: enough scrapes of live traffic that every window-based query has its samples
        probe = (
            f'count_over_time(agent_requests_total{{service="healthy", track="canary", status="succeeded"}}[{WINDOW}])'
        )
        running.wait_for(lambda: True if (r := running.query(probe)) and float(r[0]["value"][1]) >= 7 else None)
        yield running


@pytest.fixture
def client(server: PrometheusServer) -> Iterator[Prometheus]:
    with Prometheus(server.url) as connected:
        yield connected


def spec(**overrides: object) -> models.Canary:
    return models.Canary.model_validate({"enabled": True, "min_requests": 20, **overrides})


def run(client: Prometheus, service: str, canary_spec: models.Canary, **kwargs: float) -> models.Analysis:
    plan = analysis.plan(canary_spec, analysis.Scope(service=service, window=WINDOW), **kwargs)
    return client.analyse(plan, weight=10)


def check(result: models.Analysis, name: str) -> models.CheckResult:
    return next(c for c in result.checks if c.name == name)


def test_a_healthy_canary_passes_every_check(client: Prometheus) -> None:
    canary_spec = spec(max_error_ratio=2, max_cost_ratio=1.5)
    result = run(client, "healthy", canary_spec, max_fallback_ratio=2)
    assert result.verdict == "success", analysis.summary(result)
    assert [c.name for c in result.checks] == [
        "error-rate",
        "p95-latency",
        "error-ratio",
        "cost-ratio",
        "fallback-ratio",
    ]
    error_rate = check(result, "error-rate")
    assert error_rate.value is not None
    assert 0.0 <= error_rate.value <= 0.03
    assert error_rate.samples is not None
    assert error_rate.samples >= 100  # ~20 requests/s over 8 s
    assert error_rate.threshold == "<= 0.05"
    latency = check(result, "p95-latency")
    assert latency.value == pytest.approx(4.85, abs=0.01)  # 3 s lies in (2, 5]: 2 + 3 * 0.95
    assert check(result, "cost-ratio").value == pytest.approx(1.0, abs=0.01)
    assert check(result, "fallback-ratio").value == pytest.approx(1.0, abs=0.1)


def test_a_canary_with_30_percent_errors_fails_naming_query_value_and_threshold(client: Prometheus) -> None:
    result = run(client, "faulty", spec())
    assert result.verdict == "failure"
    failed = check(result, "error-rate")
    assert failed.verdict == "failure"
    assert failed.value == pytest.approx(0.3, abs=0.03)
    assert failed.threshold == "<= 0.05"
    assert 'service="faulty"' in failed.query
    assert 'status="failed"' in failed.query
    summary = analysis.summary(result)
    assert failed.query in summary
    assert "threshold <= 0.05" in summary
    assert check(result, "p95-latency").verdict == "success"


def test_a_slow_canary_fails_the_latency_check(client: Prometheus) -> None:
    result = run(client, "slow", spec())
    latency = check(result, "p95-latency")
    assert (latency.verdict, latency.threshold) == ("failure", "<= 60")
    assert latency.value == pytest.approx(117.0, abs=0.1)  # 90 s lies in (60, 120]: 60 + 60 * 0.95
    assert check(result, "error-rate").verdict == "success"


def test_a_canary_without_traffic_is_inconclusive(client: Prometheus) -> None:
    result = run(client, "idle", spec())
    assert result.verdict == "inconclusive"
    for item in result.checks:
        assert item.verdict == "inconclusive"
        assert item.samples == 0.0
        assert "fewer than minRequests 20" in item.message


def test_a_canary_without_series_is_inconclusive_or_fails_under_on_no_data_fail(client: Prometheus) -> None:
    held = run(client, "absent", spec())
    assert held.verdict == "inconclusive"
    assert check(held, "error-rate").value is None
    failed = run(client, "absent", spec(on_no_data="fail"))
    assert failed.verdict == "failure"
    assert check(failed, "error-rate").message.endswith("(onNoData: fail)")


def counted_ratio_bounds(ratio: models.CheckResult, expected: float, stable_per_task: float) -> tuple[float, float]:
    """Where a ratio of two counted event rates (errors, fallbacks) can lie, from how they are counted.

    The exporter spreads the events evenly, so any run of tasks holds the floor or the ceiling of
    its expected count: each track's count in the window is off by less than one event, whatever the
    load does to how many tasks fall between the window's first and last scrape. With `k` stable
    events expected, canary / stable lies in ((expected*k - 1) / (k + 1), (expected*k + 1) / (k - 1)).
    `samples` is the canary's tasks extrapolated to the whole window; the scrapes it counts between
    span at least window - 2 scrape intervals (6 of the 8 s), so k is taken at 3/4 of it.
    """
    assert ratio.samples is not None
    k = ratio.samples * stable_per_task * 0.75
    return (expected * k - 1) / (k + 1), ((expected * k + 1) / (k - 1) if k > 1 else float("inf"))


RELATIVE = {"max_error_ratio": 2, "max_cost_ratio": 1.5, "max_latency_ratio": 1.5, "max_provider_error_ratio": 2}


def test_a_canary_three_times_worse_than_stable_fails_the_relative_checks(client: Prometheus) -> None:
    canary_spec = spec(max_error_rate=0.2, max_p95_latency_seconds=60, **RELATIVE)
    result = run(client, "worse", canary_spec, max_fallback_ratio=2)
    assert result.verdict == "failure"
    assert check(result, "error-rate").verdict == "success"  # 0.15 is within the absolute 0.2
    assert check(result, "p95-latency").verdict == "success"  # 9 s is within the absolute 60 s
    for name in ("error-ratio", "cost-ratio", "fallback-ratio", "latency-ratio", "provider-error-ratio"):
        ratio = check(result, name)
        assert ratio.verdict == "failure", ratio
        assert ratio.value is not None and ratio.value > 2, ratio
        assert 'track="stable"' in ratio.query
    # cost is per task, the same on every task of a track: no counting error, 3x exactly (up to
    # a scrape landing mid-tick, a tick's tasks in one counter and not yet in the other)
    assert check(result, "cost-ratio").value == pytest.approx(3.0, rel=0.05)
    # p95 interpolated in its bucket: 3 s in (2, 5] -> 4.85 s, 9 s in (5, 10] -> 9.75 s
    assert check(result, "latency-ratio").value == pytest.approx(9.75 / 4.85, rel=0.05)
    # errors (5 % vs 15 %), fallbacks (0.1 vs 0.3 per task) and failed model calls (0.1 vs 0.3 per
    # task, among 1.1 vs 1.3 calls per task: a share of calls 0.3/1.3 over 0.1/1.1) are counted events
    for name, stable_per_task in (("error-ratio", 0.05), ("fallback-ratio", 0.1)):
        ratio = check(result, name)
        low, high = counted_ratio_bounds(ratio, 3.0, stable_per_task)
        assert ratio.value is not None and low <= ratio.value <= high, (low, high, ratio)


def test_a_canary_as_good_as_stable_passes_the_relative_checks(client: Prometheus) -> None:
    canary_spec = spec(max_error_rate=0.2, **RELATIVE)
    result = run(client, "same", canary_spec, max_fallback_ratio=2)
    assert result.verdict == "success", analysis.summary(result)
    assert check(result, "latency-ratio").value == pytest.approx(1.0, rel=0.01)
    provider = check(result, "provider-error-ratio")
    assert provider.verdict == "success" and 'outcome=~"unavailable|error"' in provider.query
    error_ratio = check(result, "error-ratio")
    low, high = counted_ratio_bounds(error_ratio, 1.0, 0.05)
    assert error_ratio.value is not None and low <= error_ratio.value <= high, (low, high, error_ratio)


def test_user_checks_are_filled_in_and_run(client: Prometheus) -> None:
    checks = [
        models.CanaryCheck(
            name="throughput",
            query='sum(rate(agent_requests_total{service="{{service}}", namespace="{{namespace}}", '
            f'track="{{{{track}}}}"}}[{WINDOW}]))',
            min=RPS / 2,
            max=RPS * 2,
        ),
        models.CanaryCheck(name="typo", query="sum(rate(agent_requests_total[8s])", max=1),
        models.CanaryCheck(name="unaggregated", query='agent_requests_total{service="{{service}}"}', max=1e9),
    ]
    result = run(client, "healthy", spec(checks=checks))
    throughput = check(result, "throughput")
    assert throughput.verdict == "success", throughput
    assert throughput.value == pytest.approx(RPS, rel=0.2)
    typo = check(result, "typo")
    assert typo.verdict == "error"
    assert "HTTP 400: bad_data" in typo.message
    assert "parse error" in typo.message
    unaggregated = check(result, "unaggregated")
    assert unaggregated.verdict == "error"
    assert "needs exactly one" in unaggregated.message
    assert result.verdict == "error"


def test_result_shapes_of_a_real_server(client: Prometheus) -> None:
    assert client.query("vector(2)").value == 2.0
    assert client.query("scalar(vector(3))").value == 3.0  # a scalar result type
    assert client.query("vector(0) / vector(0)") == analysis.Measurement(None)  # NaN is no data
    assert client.query('agent_requests_total{service="nobody"}') == analysis.Measurement(None)
    assert "range vector" in client.query('agent_requests_total{service="healthy"}[5s]').error
    assert "not a number" in parse_result([1.0, "fast"]).error


def test_prometheus_down_is_an_error_never_a_success() -> None:
    with Prometheus(f"http://127.0.0.1:{free_port()}", retries=0) as unreachable:
        started = time.monotonic()
        result = run(unreachable, "healthy", spec(max_error_ratio=2))
        elapsed = time.monotonic() - started
    assert result.verdict == "error"
    assert {c.verdict for c in result.checks} == {"error"}
    assert all("unreachable" in c.message for c in result.checks)
    assert elapsed < 5


def decide_with_real_analyses(client: Prometheus, service: str, canary_spec: models.Canary) -> list[machine.Decision]:
    """What the operator's interval timer does: analyse at the current weight, then decide."""
    plan = analysis.plan(canary_spec, analysis.Scope(service=service, window=WINDOW))
    status = machine.decide(canary_spec, models.CanaryStatus(), machine.Observation("v1")).status
    decisions = [machine.decide(canary_spec, status, machine.Observation("v2"))]
    while machine.needs_analysis(canary_spec, decisions[-1].status):
        status = decisions[-1].status
        observed = machine.Observation("v2", analysis=client.analyse(plan, weight=status.weight))
        decisions.append(machine.decide(canary_spec, status, observed))
    return decisions


def test_real_analyses_promote_a_healthy_canary_through_every_step(client: Prometheus) -> None:
    decisions = decide_with_real_analyses(client, "healthy", spec(steps=[10, 50, 100]))
    assert [d.action for d in decisions] == [
        machine.Action.SET_WEIGHT,
        machine.Action.SET_WEIGHT,
        machine.Action.PROMOTE,
    ]
    final = decisions[-1].status
    assert (final.phase, final.stable_revision, final.weight) == (models.CanaryPhase.PROMOTED, "v2", 0)
    assert [a.weight for a in final.history] == [10, 50]


def test_real_analyses_roll_a_faulty_canary_back_with_the_reason(client: Prometheus) -> None:
    decisions = decide_with_real_analyses(client, "faulty", spec(failure_limit=2))
    assert [d.action for d in decisions] == [machine.Action.SET_WEIGHT, machine.Action.WAIT, machine.Action.ROLL_BACK]
    final = decisions[-1].status
    assert (final.phase, final.stable_revision, final.weight) == (models.CanaryPhase.ROLLED_BACK, "v1", 0)
    assert final.last_analysis is not None
    failing = check(final.last_analysis, "error-rate")
    assert failing.query in final.message
    assert failing.value is not None
    assert f"error-rate = {analysis.number(failing.value)}" in final.message
    assert "threshold <= 0.05" in final.message

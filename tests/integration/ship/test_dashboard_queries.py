"""The Grafana dashboard's and the PrometheusRule's PromQL, run against a real Prometheus.

A real `prometheus` scrapes a runtime-shaped exporter (`tests.support.metrics_exporter`) extended
here with the runtime's remaining series (active agents, tool calls, queue depth, provider health);
the scrape adds the `namespace` label, as the Prometheus Operator does in a cluster. Two services:
`support-agent` misbehaves past every default alert threshold, `quiet-agent` stays under all of them.
Covers:
- the dashboard ConfigMap carries one panel per figure of issue 7 (request rate, p50/p95/p99
  latency, active agents, hourly cost, tool-call mix, error rate, queue depth, provider health,
  canary weight) and the per-tool panels of issue 34 (calls by tool and outcome, p95 latency by
  tool, MCP servers up) and of issue 30 (hourly cost by model and by route), each with a query;
- every panel target, its Grafana template variables substituted the way Grafana would (an unknown
  variable fails), parses and evaluates as Grafana sends it (range query) and as an instant query:
  HTTP 200, status success;
- the queries return the figures the exporter produces: exact latency quantiles, the error ratio,
  active agents per track, the tool-call mix, queue depth, provider health, a positive hourly cost;
- a deliberately broken panel query (syntax error, type error) fails the same check;
- every alert expression of the PrometheusRule evaluates as an instant query: each one returns a
  sample for the misbehaving service and none for the quiet one.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from agent_operator.api import models
from agent_operator.manifests import dashboard, monitoring
from agentops_dev.localprometheus import PrometheusServer
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent_runtime import constants
from tests.support.metrics_exporter import INTENT, MetricsExporter, Traffic

NAMESPACE = "agents"
BUSY = "support-agent"
QUIET = "quiet-agent"
TRACKS = ("stable", "canary")
# Every task of the busy service takes 90 s: all in the (60, 120] bucket, so the quantiles are exact.
BUSY_TRAFFIC = Traffic(requests_per_second=20, error_ratio=0.2, latency_seconds=90, cost_per_task=5.0)
QUIET_TRAFFIC = Traffic(requests_per_second=5, error_ratio=0.0, latency_seconds=1, cost_per_task=0.0)
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
SCRAPE_SECONDS = 1  # agentops_dev.localprometheus scrapes every second
RANGE_SECONDS = 10


class RuntimeExtras(Collector):
    """The runtime series the shared exporter does not produce, per service and track.

    Tool calls are counters growing with wall-clock time (`search` twice as fast as `fetch`).
    """

    TOOL_RATES: Mapping[str, float] = {"search": 4.0, "fetch": 2.0}
    # USD per second by (model, route): the strong model takes the complex route, the cheap one the rest
    MODEL_COST_RATES: Mapping[tuple[str, str], float] = {
        ("claude-opus-4-6", "complex"): 0.03,
        ("claude-haiku-4-5", "simple"): 0.01,
        ("claude-haiku-4-5", "default"): 0.005,
    }

    def __init__(self, figures: Mapping[str, Mapping[str, Any]]) -> None:
        self.figures = figures
        self.started = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        labels = [constants.LABEL_SERVICE, constants.LABEL_TRACK]
        active = GaugeMetricFamily(constants.METRIC_ACTIVE, "Tasks running now.", labels=labels)
        queue = GaugeMetricFamily(constants.METRIC_QUEUE_DEPTH, "Waiting plus pending tasks.", labels=labels)
        healthy = GaugeMetricFamily(
            constants.METRIC_PROVIDER_HEALTHY, "Provider breaker closed.", labels=[*labels, "provider"]
        )
        tools = CounterMetricFamily(constants.METRIC_TOOL_CALLS, "Tool calls.", labels=[*labels, "tool_name", "status"])
        servers = GaugeMetricFamily(constants.METRIC_TOOL_SERVER_UP, "MCP server up.", labels=[*labels, "server"])
        latency = HistogramMetricFamily(constants.METRIC_TOOL_LATENCY, "Tool call time.", labels=[*labels, "tool_name"])
        model_cost = CounterMetricFamily(
            constants.METRIC_MODEL_COST, "Spend by model and route.", labels=[*labels, "model", "route"]
        )
        elapsed = time.monotonic() - self.started
        for service, figure in self.figures.items():
            for track in TRACKS:
                active.add_metric([service, track], figure["active"][track])
                queue.add_metric([service, track], figure["queue"])
                for provider, up in figure["providers"].items():
                    healthy.add_metric([service, track, provider], up)
                for tool, rate in self.TOOL_RATES.items():
                    tools.add_metric([service, track, tool, "ok"], rate * elapsed)
                    # every call of `search` takes 0.2 s, of `fetch` 2 s (inside the (1, 2.5] bucket)
                    count = rate * elapsed
                    seconds = 0.2 if tool == "search" else 2.0
                    buckets = [(str(le), count if seconds <= le else 0.0) for le in (0.25, 1.0, 2.5)]
                    latency.add_metric([service, track, tool], [*buckets, ("+Inf", count)], count * seconds)
                servers.add_metric([service, track, "time"], 1)
                servers.add_metric([service, track, "crm"], 0)
                for (model, route), rate in self.MODEL_COST_RATES.items():
                    model_cost.add_metric([service, track, model, route], rate * elapsed * figure["spends"])
        return [active, queue, healthy, tools, servers, latency, model_cost]


EXTRAS = {
    BUSY: {
        "active": {"stable": 7, "canary": 2},
        "queue": 800,
        "providers": {"claude": 0, "fallback": 0},
        "spends": 1,
    },
    QUIET: {
        "active": {"stable": 1, "canary": 0},
        "queue": 3,
        "providers": {"claude": 1, "fallback": 0},
        "spends": 0,
    },
}


class NamespacedPrometheus(PrometheusServer):
    """The shared test server, with the `namespace` target label a cluster's scrape config adds."""

    @staticmethod
    def config(targets: Sequence[str]) -> dict[str, Any]:
        config = PrometheusServer.config(targets)
        for static in config["scrape_configs"][0]["static_configs"]:
            static["labels"] = {"namespace": NAMESPACE}
        return config


def agent_service(name: str) -> models.AgentService:
    return models.AgentService.from_manifest(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "model": {"providers": [{"name": "claude", "model": "m", "baseURL": "http://127.0.0.1:1"}]},
                "redis": {"url": "redis://127.0.0.1:6379/0"},
            },
        }
    )


def board_of(svc: models.AgentService) -> dict[str, Any]:
    config_map = dashboard.build_dashboard(svc)
    (text,) = config_map["data"].values()
    board: dict[str, Any] = json.loads(text)
    return board


# --- Grafana's variable substitution ---------------------------------------------------------

VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def grafana_variables(board: Mapping[str, Any], known: Mapping[str, str], step_seconds: int) -> dict[str, str]:
    """What Grafana would put in place of each variable for a query at `step_seconds` resolution.

    Built-ins follow Grafana's rules: `$__rate_interval` is max(`$__interval` + scrape interval,
    4 x scrape interval). Dashboard variables take their current value, else the one in `known`.
    """
    interval = max(step_seconds, SCRAPE_SECONDS)
    values = {
        "__interval": f"{interval}s",
        "__interval_ms": str(interval * 1000),
        "__rate_interval": f"{max(interval + SCRAPE_SECONDS, 4 * SCRAPE_SECONDS)}s",
        "__range": f"{RANGE_SECONDS}s",
        "__range_s": str(RANGE_SECONDS),
        "__range_ms": str(RANGE_SECONDS * 1000),
    }
    for variable in board.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        value = current if isinstance(current, str) and current else known.get(variable["name"])
        if value is not None:
            values[variable["name"]] = value
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$var`, `${var}`, `${var:format}` and `[[var]]`; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return VARIABLE.sub(replace, expr)


# --- Prometheus HTTP API ---------------------------------------------------------------------


def call(server: PrometheusServer, endpoint: str, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """GET one API endpoint; the HTTP status and decoded body, errors included."""
    url = f"{server.url}/api/v1/{endpoint}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with contextlib.closing(error):
            return error.code, json.loads(error.read() or b"{}")


def evaluate(server: PrometheusServer, expr: str) -> list[dict[str, Any]]:
    """Run `expr` as Grafana does (range query) and as an instant query; the instant result.

    Fails unless both answer HTTP 200 with status success.
    """
    end = time.time()
    queries = {
        "query_range": {"query": expr, "start": str(end - RANGE_SECONDS), "end": str(end), "step": "1"},
        "query": {"query": expr, "time": str(end)},
    }
    answers = {}
    for endpoint, params in queries.items():
        status, body = call(server, endpoint, params)
        assert (status, body.get("status")) == (200, "success"), f"{endpoint} {expr!r}: HTTP {status} {body}"
        answers[endpoint] = body["data"]
    instant = answers["query"]
    assert instant["resultType"] == "vector", (expr, instant)
    result: list[dict[str, Any]] = instant["result"]
    return result


def panel_targets(board: Mapping[str, Any], known: Mapping[str, str]) -> Iterator[tuple[str, str, str]]:
    """Each panel target as (panel title, legend, PromQL with variables substituted)."""
    values = grafana_variables(board, known, step_seconds=1)
    for panel in board["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["legendFormat"], substitute(target["expr"], values)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    with MetricsExporter() as exporter:
        exporter.registry.register(RuntimeExtras(EXTRAS))
        for track in TRACKS:
            exporter.set(BUSY, track, BUSY_TRAFFIC)
            exporter.set(QUIET, track, QUIET_TRAFFIC)
            for service in (BUSY, QUIET):  # the runtime exposes every final status at zero from the start
                for status in FINAL_STATUSES:
                    exporter.requests.labels(service, track, status, INTENT)
        prometheus = NamespacedPrometheus(Path(tmp_path_factory.mktemp("prometheus")), [exporter.target])
        prometheus.start()
        try:
            prometheus.wait_ready()
            # warm-up: every rate() needs two scraped samples of growing counters
            probe = f'count_over_time({constants.SERIES_REQUESTS}{{service="{BUSY}", namespace="{NAMESPACE}"}}[1m])'
            prometheus.wait_for(
                lambda: True if any(float(r["value"][1]) >= 3 for r in prometheus.query(probe)) else None
            )
            yield prometheus
        finally:
            prometheus.stop()


# --- tests -----------------------------------------------------------------------------------

# Every figure issue 7 asks for: (panel title, legends of its targets).
REQUIRED_PANELS = {
    "Request rate": ["{{status}}"],
    "Task latency": ["p50", "p95", "p99"],
    "Active agents": ["{{track}}"],
    "Hourly cost": ["USD / hour"],
    "Hourly cost by model": ["{{model}}"],
    "Hourly cost by route": ["{{route}}"],
    "Tool-call mix": ["{{tool_name}}"],
    "Tool calls by tool and outcome": ["{{tool_name}} {{status}}"],
    "Tool latency p95": ["{{tool_name}}"],
    "MCP servers up": ["{{server}}"],
    "Error rate": ["failed / all"],
    "Queue depth": ["waiting + pending"],
    "Provider health": ["{{provider}}"],
    "Canary weight": ["canary weight"],
}


def test_the_dashboard_has_every_panel_with_a_query() -> None:
    board = board_of(agent_service(BUSY))
    panels = {panel["title"]: panel for panel in board["panels"]}
    assert set(REQUIRED_PANELS) <= set(panels)
    for title, legends in REQUIRED_PANELS.items():
        targets = panels[title]["targets"]
        assert [t["legendFormat"] for t in targets] == legends, title
        for target in targets:
            assert target["expr"].strip(), f"{title}: empty query"
            assert target["datasource"]["type"] == "prometheus"


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {sample["metric"][label]: float(sample["value"][1]) for sample in result}


def only(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_every_panel_query_evaluates_and_returns_the_exported_figures(server: PrometheusServer) -> None:
    board = board_of(agent_service(BUSY))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for title, legend, expr in panel_targets(board, {"namespace": NAMESPACE, "service": BUSY}):
        assert "$" not in expr, expr
        results[(title, legend)] = evaluate(server, expr)

    rates = by(results[("Request rate", "{{status}}")], "status")
    assert set(rates) == set(FINAL_STATUSES)
    assert rates["succeeded"] > rates["failed"] > 0 and rates["cancelled"] == 0
    # 90 s tasks, linear interpolation inside the (60, 120] bucket
    assert only(results[("Task latency", "p50")]) == pytest.approx(90)
    assert only(results[("Task latency", "p95")]) == pytest.approx(117)
    assert only(results[("Task latency", "p99")]) == pytest.approx(119.4)
    assert by(results[("Active agents", "{{track}}")], "track") == {"stable": 7, "canary": 2}
    assert only(results[("Hourly cost", "USD / hour")]) > 0
    by_model = by(results[("Hourly cost by model", "{{model}}")], "model")
    assert set(by_model) == {"claude-opus-4-6", "claude-haiku-4-5"}
    assert by_model["claude-opus-4-6"] / by_model["claude-haiku-4-5"] == pytest.approx(2, rel=0.2)  # 0.03 : 0.015
    by_route = by(results[("Hourly cost by route", "{{route}}")], "route")
    assert set(by_route) == {"complex", "simple", "default"}
    assert by_route["simple"] / by_route["default"] == pytest.approx(2, rel=0.2)
    mix = by(results[("Tool-call mix", "{{tool_name}}")], "tool_name")
    assert set(mix) == {"search", "fetch"}
    assert mix["search"] / mix["fetch"] == pytest.approx(2, rel=0.2)
    by_outcome = {
        (m["metric"]["tool_name"], m["metric"]["status"])
        for m in results[("Tool calls by tool and outcome", "{{tool_name}} {{status}}")]
    }
    assert by_outcome == {("search", "ok"), ("fetch", "ok")}
    p95 = by(results[("Tool latency p95", "{{tool_name}}")], "tool_name")
    assert p95["search"] == pytest.approx(0.2375) and p95["fetch"] == pytest.approx(2.425)
    assert by(results[("MCP servers up", "{{server}}")], "server") == {"time": 1, "crm": 0}
    assert only(results[("Error rate", "failed / all")]) == pytest.approx(0.2, abs=0.05)
    assert only(results[("Queue depth", "waiting + pending")]) == 800
    assert by(results[("Provider health", "{{provider}}")], "provider") == {"claude": 0, "fallback": 0}
    # Canary weight is the operator's own series; no operator runs here, so the query is only
    # required to be valid (empty answer).
    assert results[("Canary weight", "canary weight")] == []


def test_panels_of_another_service_see_only_its_series(server: PrometheusServer) -> None:
    board = board_of(agent_service(QUIET))
    results = {
        (title, legend): evaluate(server, expr)
        for title, legend, expr in panel_targets(board, {"namespace": NAMESPACE, "service": QUIET})
    }
    assert only(results[("Error rate", "failed / all")]) == 0
    assert only(results[("Task latency", "p50")]) == pytest.approx(0.75)  # 1 s tasks: (0.5, 1] bucket
    assert only(results[("Queue depth", "waiting + pending")]) == 3
    assert by(results[("Active agents", "{{track}}")], "track") == {"stable": 1, "canary": 0}


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda expr: expr[:-1], id="syntax-error"),  # drop the closing parenthesis
        pytest.param(lambda expr: expr.replace("[5m]", ""), id="rate-of-an-instant-vector"),
    ],
)
def test_a_malformed_panel_query_fails_the_check(server: PrometheusServer, broken: Any) -> None:
    board = board_of(agent_service(BUSY))
    panel = next(p for p in board["panels"] if p["title"] == "Request rate")
    panel["targets"][0]["expr"] = broken(panel["targets"][0]["expr"])
    with pytest.raises(AssertionError, match=r"HTTP 400 .*'errorType': 'bad_data'"):
        for _, _, expr in panel_targets(board, {}):
            evaluate(server, expr)


def test_grafana_variables_are_substituted_or_refused() -> None:
    board = {"templating": {"list": [{"name": "namespace", "current": {"value": "prod"}}, {"name": "service"}]}}
    values = grafana_variables(board, {"service": "svc"}, step_seconds=15)
    expr = 'rate(x{namespace="$namespace", service="${service}", z="[[service]]"}[$__rate_interval])'
    assert substitute(expr, values) == 'rate(x{namespace="prod", service="svc", z="svc"}[16s])'
    with pytest.raises(AssertionError, match=r"unknown Grafana variable \$cluster"):
        substitute('x{cluster="$cluster"}', values)


def test_every_alert_expression_evaluates_and_fires_only_for_the_misbehaving_service(
    server: PrometheusServer,
) -> None:
    for name, firing in ((BUSY, True), (QUIET, False)):
        rule = monitoring.build_prometheus_rule(agent_service(name))
        assert rule is not None
        alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
        assert {a["alert"] for a in alerts} == {
            monitoring.ALERT_ERROR_RATE,
            monitoring.ALERT_LATENCY,
            monitoring.ALERT_COST,
            monitoring.ALERT_QUEUE_DEPTH,
            monitoring.ALERT_PROVIDERS_DOWN,
        }
        for alert in alerts:
            end = time.time()
            status, body = call(server, "query", {"query": alert["expr"], "time": str(end)})
            assert (status, body.get("status")) == (200, "success"), f"{alert['alert']}: HTTP {status} {body}"
            samples = body["data"]["result"]
            assert len(samples) == (1 if firing else 0), (name, alert["alert"], alert["expr"], samples)

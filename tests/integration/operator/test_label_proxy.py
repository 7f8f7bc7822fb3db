"""Tenant walls of the analysis queries, on a real Prometheus behind a real prom-label-proxy.

Two namespaces' runtime series are scraped by one Prometheus (`honor_labels: false`, target labels
as the operator's ServiceMonitor has them set), and a pod of `team-b` exposes series labelled as
`team-a`'s. The operator's client goes through prom-label-proxy with the chart's arguments
(`tests/support/labelproxy.py`), as the chart's sidecar has it do. Covers (docs/security.md):

- a check naming another namespace is refused by the proxy before it runs: an `error` verdict
  whose message says so, no value; the operator's own queries run (they name their namespace);
- a query naming no namespace (or a regex over all) reads only its AgentService's namespace;
- the budget report's queries are confined the same way, and answer;
- a series a pod exposes with another namespace's labels lands in the pod's own namespace (the
  exposed labels kept as `exported_*`), so the victim's figures do not move;
- no message quotes series labels Prometheus returned (several series);
- the query and analysis time limits: queries left when the analysis runs out are not sent;
- credentials: Prometheus behind basic auth, the client's credentials from the chart's
  environment reach it through the proxy; the URL's user and password never appear in a message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from agent_operator import budget, budgetreport, run
from agent_operator.api import models
from agent_operator.canary import analysis
from agent_operator.canary.prometheus import Prometheus, redact_url
from agentops_dev.localprometheus import DiscoveringPrometheus, serving
from agentops_dev.localredis import free_port
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.support import labelproxy
from tests.support.metrics_exporter import MetricsExporter, Traffic

VICTIM, ATTACKER = "team-a", "team-b"
SERVICE = "shop"
WINDOW = "8s"
# Basic auth of the Prometheus of `test_credentials_reach_prometheus_through_the_proxy`: a bcrypt
# hash (cost 4) of PASSWORD, as Prometheus's web config wants it.
USER, PASSWORD = "agentops", "tenant-wall-test-password"
PASSWORD_HASH = "$2a$04$xQFD4FEyFfGI8SazhOFR0.QMkfjzRhqC75krHhsk3eC/IrZ587Xzm"


class Forger:
    """A pod of the attacker's namespace exposing failures labelled as the victim's canary."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        forged = Counter(
            "agent_requests", "forged", ["namespace", "service", "track", "status", "intent"], registry=registry
        )
        forged.labels(VICTIM, SERVICE, "canary", "failed", "chat").inc(1_000_000)
        self._server, self._thread = start_http_server(0, addr="127.0.0.1", registry=registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def proxy_binary() -> Path:
    return labelproxy.require()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, proxy_binary: Path) -> Iterator[DiscoveringPrometheus]:
    victim, attacker, forger = MetricsExporter(), MetricsExporter(), Forger()
    try:
        victim.set(SERVICE, "canary", Traffic(20.0, error_ratio=0.0, cost_per_task=0.01))
        victim.set(SERVICE, "stable", Traffic(20.0, error_ratio=0.0, cost_per_task=0.01))
        attacker.set(SERVICE, "canary", Traffic(20.0, error_ratio=0.5, cost_per_task=1.0))
        with serving(DiscoveringPrometheus(tmp_path_factory.mktemp("prometheus"))) as server:
            server.set_targets(
                {
                    victim.target: {"namespace": VICTIM, "pod": "victim"},
                    attacker.target: {"namespace": ATTACKER, "pod": "attacker"},
                    # the operator's ServiceMonitor labels the forger's target from its pod
                    forger.target: {"namespace": ATTACKER, "pod": "forger", "service": "forger", "track": "stable"},
                }
            )
            probe = f'count_over_time(agent_requests_total{{namespace="{VICTIM}", track="canary"}}[{WINDOW}])'
            server.wait_for(lambda: True if (r := server.query(probe)) and float(r[0]["value"][1]) >= 7 else None)
            server.wait_for(lambda: server.query('agent_requests_total{pod="forger"}') or None)
            yield server
    finally:
        victim.close()
        attacker.close()
        forger.close()


@pytest.fixture(scope="module")
def proxy(prometheus: DiscoveringPrometheus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with labelproxy.LabelProxy(prometheus.url, tmp_path_factory.mktemp("proxy") / "proxy.log") as running:
        yield running.url


@pytest.fixture
def client(proxy: str) -> Iterator[Prometheus]:
    with Prometheus(proxy, namespace_param="namespace", retries=0) as connected:
        yield connected


def check_named(result: models.Analysis, name: str) -> models.CheckResult:
    return next(c for c in result.checks if c.name == name)


def analyse(client: Prometheus, checks: list[dict[str, object]], namespace: str = VICTIM) -> models.Analysis:
    canary = models.Canary.model_validate({"enabled": True, "minRequests": 1, "checks": checks})
    plan = analysis.plan(canary, analysis.Scope(service=SERVICE, namespace=namespace, window=WINDOW))
    return client.analyse(plan, weight=10, namespace=namespace)


def test_a_check_naming_another_namespace_is_refused_and_never_run(client: Prometheus) -> None:
    spend = f'sum(agent_cost_usd_total{{namespace="{ATTACKER}"}})'
    result = analyse(client, [{"name": "their-spend", "query": spend, "max": 1e12}])
    refused = check_named(result, "their-spend")
    assert refused.verdict == "error", refused
    assert refused.message.startswith(analysis.REFUSED), refused.message
    assert refused.value is None
    # the operator's own queries name their namespace: they run and measure
    assert check_named(result, "error-rate").verdict == "success", analysis.summary(result)
    assert result.verdict == "error"


def test_a_query_naming_no_namespace_reads_only_its_own(client: Prometheus, prometheus: DiscoveringPrometheus) -> None:
    own = prometheus.query(f'count(agent_requests_total{{namespace="{VICTIM}"}})')
    everyone = prometheus.query("count(agent_requests_total)")
    assert float(everyone[0]["value"][1]) > float(own[0]["value"][1])
    for query in ("count(agent_requests_total)", 'count(agent_requests_total{namespace=~".+"})'):
        measured = client.query(query, namespace=VICTIM)
        assert measured.value == float(own[0]["value"][1]), (query, measured)


def test_a_query_without_a_namespace_is_never_sent(client: Prometheus) -> None:
    measured = client.query("vector(1)", namespace="")
    assert measured.refused and measured.value is None


def test_the_budget_report_queries_are_confined_and_answer(client: Prometheus) -> None:
    scope = analysis.Scope(service=SERVICE, namespace=VICTIM)
    asked = budget.queries(scope)
    measured, unreachable = budgetreport._ask(client, asked.all(), VICTIM)
    assert not unreachable
    assert all(not m.error for m in measured.values()), measured
    # the attacker's namespace, same service name: it spends 100 times more per task
    theirs, _ = budgetreport._ask(client, asked.all(), ATTACKER)
    assert theirs != measured


def test_a_forged_series_lands_in_the_forgers_namespace(client: Prometheus, prometheus: DiscoveringPrometheus) -> None:
    (forged,) = prometheus.query('agent_requests_total{pod="forger"}')
    labels = forged["metric"]
    assert (labels["namespace"], labels["service"], labels["track"]) == (ATTACKER, "forger", "stable")
    assert (labels["exported_namespace"], labels["exported_service"], labels["exported_track"]) == (
        VICTIM,
        SERVICE,
        "canary",
    )
    result = analyse(client, [])
    error_rate = check_named(result, "error-rate")
    assert error_rate.verdict == "success" and error_rate.value == 0.0, error_rate


def test_several_series_are_an_error_that_quotes_none_of_their_labels(client: Prometheus) -> None:
    result = analyse(client, [{"name": "raw", "query": "agent_requests_total", "max": 1}])
    raw = check_named(result, "raw")
    assert raw.verdict == "error" and "series" in raw.message, raw
    # the message is the operator's own words; the series' labels (their namespace, statuses) nowhere
    assert "{" not in raw.message and VICTIM not in raw.message and "succeeded" not in raw.message, raw


def test_an_analysis_stops_sending_queries_at_its_time_limit(proxy: str) -> None:
    with Prometheus(proxy, namespace_param="namespace", retries=0, time_limit_seconds=1e-6) as hurried:
        result = analyse(hurried, [])
    assert result.verdict == "error"
    assert all("time limit" in c.message for c in result.checks), analysis.summary(result)


def test_credentials_reach_prometheus_through_the_proxy(
    tmp_path: Path, proxy_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "prometheus").mkdir()
    server = DiscoveringPrometheus(tmp_path / "prometheus")
    web = tmp_path / "web.yml"
    web.write_text(json.dumps({"basic_auth_users": {USER: PASSWORD_HASH}}))
    server.extra_args = [f"--web.config.file={web}"]
    with serving(server), labelproxy.LabelProxy(server.url, tmp_path / "proxy.log") as proxy:
        # as the chart sets them from its Secret (prometheus.auth)
        monkeypatch.setenv("PROMETHEUS_USERNAME", USER)
        monkeypatch.setenv("PROMETHEUS_PASSWORD", PASSWORD)
        args = run.build_parser().parse_args(
            [f"--prometheus-url={proxy.url}", "--prometheus-namespace-param=namespace"]
        )
        config = run.config_from(args)
        assert PASSWORD not in repr(config)
        authorised = config.prometheus()
        assert authorised is not None
        with authorised:
            assert authorised.query("vector(7)", namespace=VICTIM).value == 7.0
        with Prometheus(proxy.url, namespace_param="namespace", retries=0) as anonymous:
            refused = anonymous.query("vector(7)", namespace=VICTIM)
        assert refused.error.startswith("HTTP 401"), refused


def test_the_url_s_credentials_never_appear_in_a_message_or_log() -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    assert redact_url(url).startswith("http://***@127.0.0.1:")
    with structlog.testing.capture_logs() as logs, Prometheus(url, retries=0) as unreachable:
        started = time.monotonic()
        result = analyse(unreachable, [])
        assert time.monotonic() - started < 5
    assert result.verdict == "error"
    shown = analysis.summary(result) + json.dumps(result.model_dump(mode="json")) + json.dumps(logs, default=str)
    assert "unreachable" in shown and "***@127.0.0.1" in shown
    assert PASSWORD not in shown and f"{USER}:" not in shown

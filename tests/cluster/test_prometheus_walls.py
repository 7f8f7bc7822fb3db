"""The Prometheus walls between tenants on the real control plane, a real Prometheus and the chart's
prom-label-proxy sidecar (docs/security.md, "Queries confined to the namespace" and "Metrics no pod
can forge").

Every part real: the chart installed with `prometheus.url` (so it renders the sidecar), its operator
process run with the chart's arguments and ServiceAccount, its sidecar run with the chart's
arguments (prom-label-proxy built from its Go module), both talking to a real Prometheus that
scrapes where the ServiceMonitors say (with the Prometheus Operator's relabelling:
`tests/support/scrapetargets.py`, `honor_labels: false`). Three namespaces (three tenants):

- `team-a`, the victim: an AgentService `shop` whose canary rollout is analysed every 2 s with
  `minRequests: 0` and `failureLimit: 1`: one analysis that counts a failed task rolls it back;
- `team-b`, the forger: an AgentService `evil` with no replicas (its Services and ServiceMonitor
  only), and a pod of its own with the labels of `evil`'s API pods, exposing `agent_requests_total`
  labelled `namespace="team-a", service="shop", track="canary", status="failed"`, growing every
  tenth of a second. Scraped, the series is `team-b`'s and `evil`'s (`exported_namespace="team-a"`),
  so the victim's canary sees no failure: its analyses find no data, and it is never rolled back;
- `team-c`, the spy: an AgentService `spy` whose rollout runs two checks: one naming `team-a`,
  which prom-label-proxy refuses before it runs (the check is an error naming the refusal, no value,
  and `AnalysisReady` is `QueryRefused` naming the check), and one naming no namespace at all over
  every failed task, which reads only `team-c`'s series: no data (the forger's failures are
  `team-b`'s).

Before the walls (the ServiceMonitor's `honorLabels: true`, queries sent straight to Prometheus)
the victim's canary is rolled back on the forged failures and the spy's checks answer with the
other namespaces' figures.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_operator.canary import analysis
from agent_operator.canary.prometheus import rfc3339_ms
from agentops_dev.localprometheus import DiscoveringPrometheus, serving
from kubernetes import client, config

from agent_runtime import constants
from tests.cluster.harness import CHART, helm, run_operator_as_chart, wait_for
from tests.cluster.test_lifecycle import agent_service, apply
from tests.support import controlplane as cp
from tests.support import labelproxy
from tests.support.kubelet import HarnessKubelet
from tests.support.scrapetargets import ServiceMonitorTargets

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RELEASE = "walls"
OPERATOR_NAMESPACE = "walls-system"
VICTIM, FORGER, SPY = "team-a", "team-b", "team-c"
CANARY = {
    "enabled": True,
    "steps": [50, 100],
    "interval": "2s",
    "minRequests": 0,
    "failureLimit": 1,
    "inconclusiveLimit": 100,
}
FORGED_RATE = 100  # failed tasks a second the forger claims for the victim's canary
# The forger's program: `python -c`, its listen address from the harness kubelet's --host/--port.
FORGER_PROGRAM = f"""
import sys, time
from prometheus_client import CollectorRegistry, Counter, start_http_server
host, port = sys.argv[sys.argv.index("--host") + 1], int(sys.argv[sys.argv.index("--port") + 1])
registry = CollectorRegistry()
requests = Counter("{constants.METRIC_REQUESTS.removesuffix("_total")}", "forged",
                   ["namespace", "service", "track", "status", "intent"], registry=registry)
start_http_server(port, addr=host, registry=registry)
while True:
    requests.labels("{VICTIM}", "shop", "canary", "failed", "chat").inc({FORGED_RATE // 10})
    time.sleep(0.1)
"""


def canary_status(plane: cp.ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    body = plane.get("agsvc", name, "-n", namespace)
    return dict((body.get("status") or {}).get("canary") or {})


def conditions(plane: cp.ControlPlane, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    body = plane.get("agsvc", name, "-n", namespace)
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def start_rollout(plane: cp.ControlPlane, namespace: str, name: str, **spec: Any) -> None:
    """Create the service, wait for its stable track, then roll a new image out to a canary."""
    apply(plane, agent_service(name, namespace, image="registry.example/agent-runtime:1.0", **spec))
    plane.kubectl("wait", "--for=condition=Ready", f"agsvc/{name}", "-n", namespace, "--timeout=120s", timeout=150)
    apply(plane, agent_service(name, namespace, image="registry.example/agent-runtime:2.0", **spec))
    wait_for(lambda: canary_status(plane, namespace, name).get("phase") == "Progressing", what=f"{name} progressing")


def analysis_time_now() -> str:
    """Now, in the format of `lastAnalysis.time` (the operator runs on this machine's clock)."""
    return rfc3339_ms(datetime.datetime.now(datetime.UTC))


def analysed_after(plane: cp.ControlPlane, namespace: str, name: str, moment: str) -> dict[str, Any]:
    """The first analysis of `name` that ran after `moment` (an RFC 3339 time)."""

    def newer() -> dict[str, Any] | None:
        last = canary_status(plane, namespace, name).get("lastAnalysis") or {}
        return last if last.get("time", "") > moment else None

    found: dict[str, Any] = wait_for(newer, what=f"an analysis of {name} after {moment}", timeout=90)
    return found


@pytest.fixture(scope="module")
def walls(
    controlplane: cp.ControlPlane,
    third_party_crds: None,
    kubelet: HarnessKubelet,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DiscoveringPrometheus, ServiceMonitorTargets]]:
    labelproxy.require()
    plane = controlplane
    directory = tmp_path_factory.mktemp("walls")
    for namespace in (VICTIM, FORGER, SPY):
        plane.kubectl("create", "namespace", namespace)
    kubelet.run_namespace(FORGER, directory / "pods")  # only the forger's pods run as processes
    (directory / "prometheus").mkdir()
    with contextlib.ExitStack() as exits:
        prometheus = exits.enter_context(serving(DiscoveringPrometheus(directory / "prometheus")))
        admin = client.ApiClient(config.new_client_from_config(str(plane.kubeconfig)).configuration)
        exits.callback(admin.close)
        targets = ServiceMonitorTargets(admin, kubelet, prometheus, FORGER).start()
        exits.callback(targets.stop)
        helm(plane, "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
             "--set", "logFormat=json", "--set", f"prometheus.url={prometheus.url}",
             "--set", "prometheus.scrapeIntervalSeconds=1",
             # the chart's admission policy is on by default: allow the images this test rolls out
             "--set", "policy.allowedImages={agentops/agent-runtime,registry.example/}")  # fmt: skip
        exits.callback(helm, plane, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait", check=False)
        (deployment,) = plane.get(
            "deployments", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
        )["items"]
        sidecar = next(
            c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "prom-label-proxy"
        )
        assert set(labelproxy.CHART_ARGS) <= set(sidecar["args"])
        assert f"--upstream={prometheus.url}" in sidecar["args"]
        proxy = exits.enter_context(
            labelproxy.LabelProxy(prometheus.url, directory / "proxy.log", chart_args=sidecar["args"])
        )
        operator = run_operator_as_chart(
            plane,
            directory,
            release=RELEASE,
            namespace=OPERATOR_NAMESPACE,
            overrides={"--prometheus-url": proxy.url, "--resync-interval": "3"},
        )
        exits.callback(operator.stop)
        assert "--prometheus-namespace-param=namespace" in operator.args
        for namespace in (VICTIM, FORGER, SPY):
            exits.callback(
                plane.kubectl,
                "delete",
                "namespace",
                namespace,
                "--wait=true",
                "--timeout=120s",
                check=False,
                timeout=150,
            )
        yield prometheus, targets
        assert not targets.errors, targets.errors
        assert not operator.forbidden_lines(), operator.forbidden_lines()[:10]


def test_a_forged_series_never_reaches_the_victim_and_another_namespace_cannot_be_read(
    controlplane: cp.ControlPlane,
    kubelet: HarnessKubelet,
    walls: tuple[DiscoveringPrometheus, ServiceMonitorTargets],
    tmp_path: Path,
) -> None:
    plane = controlplane
    prometheus, targets = walls
    # the forger: a service with no pods of its own, and a pod wearing its API pods' labels
    apply(plane, agent_service("evil", FORGER, api={"replicas": 0}, worker={"replicas": 0}))
    wait_for(lambda: plane.get("servicemonitors", "-n", FORGER)["items"], what="evil's ServiceMonitor")
    wait_for(lambda: plane.exists("service", "evil-api", "-n", FORGER), what="evil's API Service")
    selector = plane.get("service", "evil-api", "-n", FORGER)["spec"]["selector"]
    forger = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "forger", "namespace": FORGER, "labels": {**selector, "track": "canary"}},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "forger",
                    "image": "registry.example/forger:1",
                    "command": ["python"],
                    "args": ["-c", FORGER_PROGRAM],
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(forger))
    forged_query = f'{constants.METRIC_REQUESTS}{{exported_namespace="{VICTIM}"}}'
    try:
        (forged,) = prometheus.wait_for(lambda: prometheus.query(forged_query) or None, timeout=90)
    except TimeoutError as error:
        pods = [(w.process.name, w.started) for w in kubelet.workers(FORGER)]
        raise AssertionError(
            f"no forged series: targets {targets.published}, errors {targets.errors}, "
            f"kubelet errors {kubelet.errors}, pods {pods}"
        ) from error
    labels = forged["metric"]
    # the target's labels won: the forger's own namespace, service and track
    assert (labels["namespace"], labels["service"], labels["track"]) == (FORGER, "evil", "canary"), labels
    assert (labels["exported_service"], labels["exported_track"]) == ("shop", "canary"), labels
    assert not prometheus.query(f'{constants.METRIC_REQUESTS}{{namespace="{VICTIM}"}}')

    # the victim's canary, analysed every 2 s over a 4 s window, one failure from a rollback
    start_rollout(plane, VICTIM, "shop", canary=CANARY)
    # the spy's checks: one names the victim's namespace, one names none
    spy_checks = [
        {"name": "their-tasks", "query": f'sum({constants.METRIC_REQUESTS}{{namespace="{VICTIM}"}})', "max": 1e12},
        {
            "name": "everyone-failed",
            "query": f'sum(rate({constants.METRIC_REQUESTS}{{status="failed"}}[10s]))',
            "max": 1e12,
        },
    ]
    start_rollout(plane, SPY, "spy", canary={**CANARY, "checks": spy_checks})

    # analyses that ran with the forged series a few seconds old (so inside their window)
    prometheus.wait_for(
        lambda: (r := prometheus.query(f"count_over_time({forged_query}[10s])")) and float(r[0]["value"][1]) >= 5 and r,
        timeout=60,
    )
    moment = analysis_time_now()
    for _ in range(3):  # three analyses in a row: none counts the forged failures
        victim = analysed_after(plane, VICTIM, "shop", moment)
        error_rate = next(c for c in victim["checks"] if c["name"] == analysis.CHECK_ERROR_RATE)
        assert error_rate["verdict"] == "inconclusive" and error_rate.get("value") is None, victim
        moment = victim["time"]
    assert canary_status(plane, VICTIM, "shop")["phase"] == "Progressing"

    spied = analysed_after(plane, SPY, "spy", analysis_time_now())
    checks = {c["name"]: c for c in spied["checks"]}
    refused = checks["their-tasks"]
    assert refused["verdict"] == "error" and refused.get("value") is None, refused
    assert refused["message"].startswith(analysis.REFUSED), refused
    everyone = checks["everyone-failed"]
    assert everyone["verdict"] == "inconclusive" and everyone.get("value") is None, everyone
    ready = wait_for(
        lambda: (c := conditions(plane, SPY, "spy").get("AnalysisReady")) and c["reason"] == "QueryRefused" and c,
        what="AnalysisReady: QueryRefused",
    )
    assert "their-tasks" in ready["message"] and ready["status"] == "False", ready
    # nothing the spy can read quotes another namespace's series or the Prometheus address's secrets
    events = plane.get("events", "-n", SPY)["items"]
    shown = json.dumps([e.get("message", "") for e in events]) + json.dumps(plane.get("agsvc", "spy", "-n", SPY))
    assert "exported_" not in shown and FORGER not in shown

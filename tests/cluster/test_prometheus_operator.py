"""The Prometheus Operator, built from its Go module, turns our ServiceMonitor and PrometheusRule into a config.

On the real control plane with the chart's operator: two AgentServices, one with
`spec.monitoring.labels: {release: kps}` and one without; a `Prometheus` object selecting
ServiceMonitors and PrometheusRules by `release: kps`, as kube-prometheus-stack's does. Covers:
the Prometheus Operator writes a configuration whose scrape jobs are exactly the labelled
service's two endpoints (API and worker) and whose rule files hold exactly its alert group; a real
`prometheus` process started with that configuration (the operator's own, the rule files moved to
a local folder) loads it and evaluates the five alerts. Not proven here: target discovery, since
Debian's prometheus is built without the Kubernetes service discovery (its `kubernetes_sd_configs`
are dropped from the copy it loads; the jobs and their relabelling are kept).
"""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_operator.manifests import naming
from agentops_dev.localprometheus import installed

from tests.cluster.harness import OperatorProcess, wait_for
from tests.cluster.test_lifecycle import agent_service, apply
from tests.support import controlplane as cp
from tests.support import prometheus_operator as po

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NAMESPACE = "kps-selects"
RELEASE = "kps"


@pytest.fixture
def prometheus_operator(controlplane: cp.ControlPlane, tmp_path: Path) -> Iterator[po.PrometheusOperator]:
    if not po.built():
        if cp.in_ci():
            pytest.fail("the Prometheus Operator is not built: run `make setup-test`")
        pytest.skip("the Prometheus Operator is not built: run `scripts/prometheus-operator.sh build`")
    controlplane.kubectl("create", "namespace", NAMESPACE)
    operator = po.PrometheusOperator(controlplane, NAMESPACE, tmp_path).start()
    try:
        yield operator
    finally:
        operator.stop()


def secret_config(plane: cp.ControlPlane) -> dict[str, Any] | None:
    if not plane.exists("secret", "prometheus-kps", "-n", NAMESPACE):
        return None
    data = plane.get("secret", "prometheus-kps", "-n", NAMESPACE).get("data") or {}
    if "prometheus.yaml.gz" not in data:
        return None
    config: dict[str, Any] = yaml.safe_load(gzip.decompress(base64.b64decode(data["prometheus.yaml.gz"])))
    return config


def jobs(config: dict[str, Any]) -> list[str]:
    return sorted(job["job_name"] for job in config.get("scrape_configs") or [])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_a_release_selector_turns_our_monitoring_objects_into_prometheus_config(
    controlplane: cp.ControlPlane,
    installed_operator: OperatorProcess,
    prometheus_operator: po.PrometheusOperator,
    tmp_path: Path,
) -> None:
    plane = controlplane
    small = {"autoscaling": {"enabled": False}, "api": {"replicas": 1}, "worker": {"replicas": 1}}
    apply(plane, agent_service("scraped", NAMESPACE, monitoring={"labels": {"release": RELEASE}}, **small))
    apply(plane, agent_service("ignored", NAMESPACE, **small))
    prometheus = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": "kps", "namespace": NAMESPACE},
        "spec": {
            "replicas": 0,  # the configuration is what is proven; a real prometheus loads it below
            "version": "v2.42.0",  # the Debian prometheus the suite runs: the config is written for it
            "serviceMonitorSelector": {"matchLabels": {"release": RELEASE}},
            "ruleSelector": {"matchLabels": {"release": RELEASE}},
        },
    }
    plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(prometheus))

    monitor = naming.service_monitor_name("scraped")
    expected_jobs = [f"serviceMonitor/{NAMESPACE}/{monitor}/0", f"serviceMonitor/{NAMESPACE}/{monitor}/1"]
    seen: list[Any] = []

    def generated() -> dict[str, Any] | None:
        config = secret_config(plane)
        seen[:] = [jobs(config) if config is not None else None]
        return config if config is not None and jobs(config) == expected_jobs else None

    try:
        config = wait_for(generated, timeout=120, what=f"the config with {expected_jobs}")
    except AssertionError as exc:
        errors = [line for line in prometheus_operator.logs().splitlines() if "level=error" in line or "warn" in line]
        raise AssertionError(f"{exc}; jobs seen: {seen}; operator: {errors[-5:]}") from None
    rules = wait_for(
        lambda: (
            plane.exists("configmap", "prometheus-kps-rulefiles-0", "-n", NAMESPACE)
            and plane.get("configmap", "prometheus-kps-rulefiles-0", "-n", NAMESPACE).get("data")
        ),
        timeout=60,
        what="the rule ConfigMap",
    )
    groups = [g["name"] for text in rules.values() for g in yaml.safe_load(text)["groups"]]
    assert groups == [f"agentservice.{NAMESPACE}.scraped"]

    if not installed():
        if cp.in_ci():
            pytest.fail("prometheus is not installed (scripts/setup.sh installs it)")
        pytest.skip("prometheus is not installed: the config was checked, not loaded")
    group = load_in_prometheus(config, rules, tmp_path)
    assert group["name"] == f"agentservice.{NAMESPACE}.scraped"
    assert len(group["rules"]) == 5 and all(r["health"] != "err" for r in group["rules"])


def load_in_prometheus(config: dict[str, Any], rules: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """Start a real prometheus on the operator's config; return the one rule group it loaded."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for key, text in rules.items():
        (rules_dir / key).write_text(text)
    config["rule_files"] = [str(rules_dir / "*.yaml")]
    config.pop("alerting", None)
    for job in config["scrape_configs"]:
        # Debian's prometheus has no Kubernetes discovery: the jobs stay, without targets.
        job.pop("kubernetes_sd_configs", None)
    config_path = tmp_path / "prometheus.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    port = po.free_port()
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def loaded() -> list[dict[str, Any]] | None:
        if server.poll() is not None:
            raise AssertionError(f"prometheus exited: {log_path.read_text()[-3000:]}")
        try:
            found: list[dict[str, Any]] = get_json(f"http://127.0.0.1:{port}/api/v1/rules")["data"]["groups"]
        except OSError:
            return None
        return found or None

    try:
        (group,) = wait_for(loaded, timeout=60, what="prometheus loading the rules")
        jobs_loaded = get_json(f"http://127.0.0.1:{port}/api/v1/status/config")["data"]["yaml"]
        assert all(job["job_name"] in jobs_loaded for job in config["scrape_configs"])
        return group
    finally:
        server.terminate()
        server.wait(15)

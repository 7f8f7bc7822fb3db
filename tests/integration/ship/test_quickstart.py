"""docs/quickstart.md, every command this machine can run without a cluster, run.

Covers: each AgentService manifest of the page validates and renders (`agentctl render`, with the
operator-wide defaults the page's helm commands set); every `helm install|upgrade` of the chart
renders with the page's own flags through the real helm (`helm template`), and the operator
arguments it renders are accepted by `agentctl operator` (recipe B: the Prometheus URL and the
`release` label reach the ServiceMonitor and PrometheusRule; the private-registry command: the
pull secret reaches every pod); the Deployment the page waits for is the chart's; every
`kubectl create` runs through the real kubectl (client-side dry run); recipe A's spec renders a
CPU-only worker HPA. Not run here: kind, the image build, the port-forward and curl (no container
engine on this machine).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_operator import run
from agent_operator.api import defaults, models
from agent_operator.manifests import builders

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "quickstart.md").read_text()
HELM = ROOT / ".tools" / "bin" / "helm"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
CHART = "charts/agentservice-operator"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE, re.DOTALL)


def commands() -> list[list[str]]:
    """The shell commands of the page, continuation lines joined, comments dropped."""
    found = []
    for block in blocks("sh"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.split(" #")[0].strip()
            if line and not line.startswith("#"):
                found.append(shlex.split(line.rstrip("&").strip()))
    return found


def chart_commands() -> list[list[str]]:
    return [c for c in commands() if c[:1] == ["helm"] and CHART in c]


def helm_template(command: list[str]) -> list[dict[str, Any]]:
    """`helm install|upgrade RELEASE CHART FLAGS` as `helm template` with the same flags."""
    release, flags = command[2], [f for f in command[4:] if f not in ("--create-namespace", "--reuse-values")]
    result = subprocess.run(
        [str(HELM), "template", release, str(ROOT / CHART), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def operator_config(docs: list[dict[str, Any]]) -> run.Config:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return run.config_from(
        run.build_parser().parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    )


def services() -> list[models.AgentService]:
    manifests = [yaml.safe_load(block) for block in blocks("yaml")]
    return [models.AgentService.model_validate(m) for m in manifests if m.get("kind") == models.KIND]


def test_the_page_has_both_recipes() -> None:
    assert len(services()) == 2
    assert len(chart_commands()) == 3  # install, recipe B's upgrade, the private-registry upgrade


def test_recipe_a_scales_on_cpu_only() -> None:
    recipe_a = services()[0]
    hpas = [c for c in builders.build_children(recipe_a) if c["kind"] == "HorizontalPodAutoscaler"]
    assert hpas and all([m["type"] for m in h["spec"]["metrics"]] == ["Resource"] for h in hpas)


def test_the_install_renders_the_deployment_the_page_waits_for() -> None:
    install = chart_commands()[0]
    docs = helm_template(install)
    waited = next(c for c in commands() if c[:2] == ["kubectl", "-n"] and "rollout" in c and "agent-system" in c)
    name = waited[-1].split("/", 1)[1]
    assert name in {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert operator_config(docs).defaults == defaults.NONE


def test_recipe_b_reaches_prometheus_and_labels_the_monitoring_objects() -> None:
    docs = helm_template(chart_commands()[1])
    config = operator_config(docs)
    # The operator queries through its prom-label-proxy sidecar (on by default), whose upstream is
    # the stack's Prometheus.
    url = "http://kps-kube-prometheus-stack-prometheus.monitoring.svc:9090"
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    args = [a for c in pod["containers"] for a in c.get("args") or []]
    assert config.prometheus_url == "http://127.0.0.1:9095" and f"--upstream={url}" in args
    recipe_b = defaults.apply(services()[1], config.defaults)
    monitors = [c for c in builders.build_children(recipe_b) if c["kind"] in {"ServiceMonitor", "PrometheusRule"}]
    assert len(monitors) == 2 and all(m["metadata"]["labels"]["release"] == "kps" for m in monitors)


def test_private_registry_reaches_every_pod() -> None:
    docs = helm_template(chart_commands()[2])
    assert next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "regcred"}
    ]
    config = operator_config(docs)
    for svc in services():
        desired = builders.desired(defaults.apply(svc, config.defaults))
        pods = [
            c["spec"]["template"]["spec"] for c in [*desired.children, *desired.canary] if c["kind"] == "Deployment"
        ]
        assert pods and all(p["imagePullSecrets"] == [{"name": "regcred"}] for p in pods)


@pytest.mark.parametrize(
    "command",
    [c for c in commands() if c[:1] == ["kubectl"] and "create" in c],
    ids=lambda c: " ".join(c[:6]),
)
def test_kubectl_create_commands_run(command: list[str]) -> None:
    # the dry-run flags go before a `--` (after it they would be the container's arguments)
    end = command.index("--") if "--" in command else len(command)
    result = subprocess.run(
        [str(KUBECTL), *command[1:end], "--dry-run=client", "-o", "yaml", *command[end:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

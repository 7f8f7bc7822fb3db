"""The Helm chart and the operator's RBAC on the real control plane.

- `helm install` (cluster-wide and namespaced), `helm upgrade` with changed values, and
  `helm uninstall`, which leaves none of the release's objects behind;
- the operator's rendered PrometheusRule, ServiceMonitor, ScaledObject (and the rest) accepted by
  the real schemas of prometheus-operator's and KEDA's own CRDs;
- the operator runs as the chart's ServiceAccount (a TokenRequest token), reconciles with no 403,
  and a namespaced install can neither read a Secret nor create children outside its namespaces.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import AGENTCTL, CHART, EXAMPLES_DIR, example_in, helm, run_operator_as_chart, wait_for
from tests.support import controlplane as cp
from tests.support.kubelet import HarnessKubelet

# The first test of a session also starts the control plane: a slow machine needs more than 120 s.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RELEASE_KINDS = "deployments,serviceaccounts,services,roles,rolebindings,clusterroles,clusterrolebindings"


def release_objects(plane: cp.ControlPlane, release: str) -> list[str]:
    result = plane.kubectl(
        "get", RELEASE_KINDS, "-A", "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
    )  # fmt: skip
    return result.stdout.split()


def render(*files: Path) -> str:
    args = [str(AGENTCTL), "render"]
    for file in files:
        args += ["-f", str(file)]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout


def test_rendered_children_accepted_by_the_real_schemas(
    controlplane: cp.ControlPlane, third_party_crds: None, tmp_path: Path
) -> None:
    """Every child `agentctl render` prints, the custom kinds included, passes server-side dry run.

    The examples, moved into one namespace, and one of them again with `engine: keda` (the
    ScaledObject and its TriggerAuthentication).
    """
    namespace = "render-check"
    controlplane.kubectl("create", "namespace", namespace)
    files = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        body["metadata"]["namespace"] = namespace
        files.append(tmp_path / path.name)
        files[-1].write_text(yaml.safe_dump(body))
    keda = yaml.safe_load((EXAMPLES_DIR / "minimal.yaml").read_text())
    keda["metadata"] = {"name": "keda-agent", "namespace": namespace}
    keda["spec"]["autoscaling"] = {"enabled": True, "engine": "keda", "minReplicas": 0, "maxReplicas": 5}
    files.append(tmp_path / "keda.yaml")
    files[-1].write_text(yaml.safe_dump(keda))
    manifests = render(*files)
    for kind in ("kind: PrometheusRule", "kind: ServiceMonitor", "kind: ScaledObject"):
        assert kind in manifests, f"the examples render no {kind}"
    result = controlplane.kubectl(
        "apply", "--dry-run=server", "--server-side", "--field-manager=render-check", "-f", "-",
        input=manifests, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_install_upgrade_uninstall(controlplane: cp.ControlPlane, third_party_crds: None, mode: str) -> None:
    release, namespace = f"chart-{mode}", f"chart-{mode}-system"
    extra: list[str] = []
    if mode == "namespaced":
        for watched in ("chart-team-a", "chart-team-b"):
            controlplane.kubectl("create", "namespace", watched)
        extra = ["--set", "watch.allNamespaces=false", "--set", "watch.namespaces={chart-team-a,chart-team-b}"]
    helm(controlplane, "install", release, str(CHART), "--namespace", namespace, "--create-namespace", *extra)
    objects = release_objects(controlplane, release)
    assert any(o.startswith("deployment") for o in objects), objects
    if mode == "namespaced":
        roles = controlplane.get("roles", "-A", "-l", f"app.kubernetes.io/instance={release}")["items"]
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["chart-team-a", "chart-team-b"]

    helm(controlplane, "upgrade", release, str(CHART), "--namespace", namespace, *extra,
         "--set", "resyncIntervalSeconds=17", "--set", "logFormat=text")  # fmt: skip
    deployment = controlplane.get("deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    args = deployment["items"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--resync-interval=17" in args and "--log-format=text" in args, args

    helm(controlplane, "uninstall", release, "--namespace", namespace, "--wait")
    assert release_objects(controlplane, release) == []
    # The CRD stays: Helm never deletes what it installed from crds/ (the AgentServices would go with it).
    assert controlplane.exists("crd", "agentservices.agentops.dev")


def test_namespaced_operator_stays_in_its_namespaces(
    controlplane: cp.ControlPlane, third_party_crds: None, kubelet: HarnessKubelet, tmp_path: Path
) -> None:
    release, namespace = "scoped", "scoped-system"
    for watched in ("scoped-team-a", "scoped-team-b"):
        controlplane.kubectl("create", "namespace", watched)
    helm(controlplane, "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
         "--set", "watch.allNamespaces=false", "--set", "watch.namespaces={scoped-team-a}")  # fmt: skip
    operator = run_operator_as_chart(
        controlplane, tmp_path, release=release, namespace=namespace, overrides={"--resync-interval": "3"}
    )
    try:
        for watched in ("scoped-team-a", "scoped-team-b"):
            controlplane.kubectl("create", "secret", "generic", "llm-keys", "-n", watched, "--from-literal=anthropic=k")
            controlplane.kubectl("apply", "-f", "-", input=example_in("minimal.yaml", watched))
        wait_for(
            lambda: controlplane.exists("deployment", "support-agent-worker", "-n", "scoped-team-a"),
            what="children in the watched namespace",
        )
        # The unwatched namespace: the ServiceAccount may not read its Secrets, and gets no children.
        mark = controlplane.audit_mark()
        refused = controlplane.kubectl(
            "get", "secret", "llm-keys", "-n", "scoped-team-b", kubeconfig=operator.kubeconfig, check=False
        )  # fmt: skip
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
        denied = [
            e for e in controlplane.audit_since(mark)
            if e.get("objectRef", {}).get("namespace") == "scoped-team-b"
            and e.get("objectRef", {}).get("resource") == "secrets"
            and e.get("responseStatus", {}).get("code") == 403
        ]  # fmt: skip
        assert denied and denied[0]["user"]["username"].startswith("system:serviceaccount:scoped-system:")
        unwatched = controlplane.kubectl(
            "get", "deployments,services,configmaps,secrets", "-n", "scoped-team-b",
            "-l", "app.kubernetes.io/instance=support-agent", "-o", "name",
        ).stdout  # fmt: skip
        assert unwatched.strip() == "", unwatched
        assert not controlplane.exists("configmap", "support-agent-config", "-n", "scoped-team-b")
        assert not operator.forbidden_lines(), operator.forbidden_lines()[:5]
    finally:
        operator.stop()
        helm(controlplane, "uninstall", release, "--namespace", namespace, "--wait", check=False)

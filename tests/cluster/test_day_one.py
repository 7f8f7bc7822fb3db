"""A first day on the real control plane: private registries, the monitoring stack's selectors, a CI gate.

The operator runs from the chart as its ServiceAccount; kube-apiserver, the controllers, the
scheduler and the harness kubelet are real. Covers: `spec.imagePullSecrets` reaches the pod
template of both Deployments and the pods the scheduler binds; `spec.monitoring.labels` and
`annotations` reach the ServiceMonitor and PrometheusRule the API server stores (the
`release: <name>` a kube-prometheus-stack Prometheus selects by), and the API server refuses a
label under app.kubernetes.io/; `kubectl agentservice status --timeout` exits 0 once the service
is Ready, run by kubectl as a plugin; `kubectl agentservice set image` then `undo` go back to the
image of the previous Deployment revision, from the ReplicaSets the real Deployment controller
keeps.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.harness import OperatorProcess, kubectl_plugin, wait_for
from tests.cluster.test_lifecycle import agent_service, apply, children
from tests.support import controlplane as cp

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

NAMESPACE = "day-one"
MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")


def pod_specs(plane: cp.ControlPlane, name: str) -> list[dict[str, Any]]:
    found = children(plane, NAMESPACE, name)
    return [found[f"Deployment/{name}-{c}"]["spec"]["template"]["spec"] for c in ("api", "worker")]


def monitoring(plane: cp.ControlPlane) -> list[dict[str, Any]]:
    return [o for k, o in children(plane, NAMESPACE, "dayone").items() if k.split("/")[0] in MONITORING_KINDS]


def test_pull_secrets_monitoring_labels_status_and_undo(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess
) -> None:
    plane = controlplane
    plane.kubectl("create", "namespace", NAMESPACE)
    body = agent_service(
        "dayone",
        NAMESPACE,
        image="registry.example.com/agent-runtime:1.0",
        imagePullSecrets=[{"name": "regcred"}],
        monitoring={"labels": {"release": "kps"}, "annotations": {"team": "agents"}},
        autoscaling={"enabled": False},
        api={"replicas": 1},
        worker={"replicas": 1},
    )
    apply(plane, body)
    wait_for(
        lambda: {"Deployment/dayone-api", "Deployment/dayone-worker"} <= children(plane, NAMESPACE, "dayone").keys()
    )
    for pod in pod_specs(plane, "dayone"):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    monitors = wait_for(
        lambda: len(found := monitoring(plane)) == 2 and found, what="ServiceMonitor and PrometheusRule"
    )
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kps"
        assert monitor["metadata"]["annotations"]["team"] == "agents"
        assert monitor["metadata"]["labels"]["app.kubernetes.io/instance"] == "dayone"
    # the kube-prometheus-stack selector finds them
    selected = plane.get("servicemonitors,prometheusrules", "-n", NAMESPACE, "-l", "release=kps")
    assert len(selected["items"]) == 2

    status = kubectl_plugin(plane, "status", "dayone", "-n", NAMESPACE, "--timeout", "3m")
    assert status.returncode == 0, status
    assert status.stdout.splitlines()[-1].startswith("Ready: ")

    changed = kubectl_plugin(plane, "set", "image", "dayone", "registry.example.com/agent-runtime:2.0", "-n", NAMESPACE)
    assert changed.returncode == 0, changed
    wait_for(
        lambda: pod_specs(plane, "dayone")[1]["containers"][0]["image"] == "registry.example.com/agent-runtime:2.0",
        what="the new image",
    )
    # the Deployment controller keeps the old ReplicaSet: undo finds the previous image there
    undone = wait_for(
        lambda: (r := kubectl_plugin(plane, "undo", "dayone", "-n", NAMESPACE)).returncode == 0 and r,
        what="undo",
    )
    assert "-> registry.example.com/agent-runtime:1.0" in undone.stdout, undone
    spec = plane.get("agsvc", "dayone", "-n", NAMESPACE)["spec"]
    assert spec["image"] == "registry.example.com/agent-runtime:1.0"

    refused = plane.kubectl(
        "apply", "--dry-run=server", "-f", "-",
        input=json.dumps(agent_service("bad", NAMESPACE, monitoring={"labels": {"app.kubernetes.io/name": "x"}})),
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "labels under app.kubernetes.io/ are set by the operator" in refused.stderr

"""An AgentService's life on the real control plane, the operator running as the chart's ServiceAccount.

Create (every child, managed by `agentservice-operator`), a spec edit that touches only the
affected children, drift repaired (a deleted child, a changed image), list semantics of
server-side apply (a removed env entry or provider leaves the live object), `kubectl scale` of an
autoscaled worker left alone, Ready from the Deployment controller's own status (`kubectl wait`),
zero writes at steady state counted in the audit log, and the real garbage collector removing
every child when the AgentService goes.
"""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import AGENTCTL, OperatorProcess, wait_for
from tests.support import controlplane as cp

# The first test of a session also starts the control plane: a slow machine needs more than 120 s.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

FIELD_MANAGER = "agentservice-operator"
RESYNC = 3.0  # the chart value the installed operator runs with (conftest)


def agent_service(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {
            "providers": [
                {"name": "primary", "model": "claude-test", "baseURL": "http://127.0.0.1:9/"},
                {"name": "backup", "model": "claude-test-2", "baseURL": "http://127.0.0.1:9/"},
            ],
            "strategy": "failover",
        },
        "redis": {"url": "redis://redis:6379/0"},
        "autoscaling": {"enabled": False},
        "api": {"replicas": 1},
        "worker": {"replicas": 2},
        "env": [{"name": "KEEP_ME", "value": "1"}, {"name": "DROP_ME", "value": "2"}],
    }
    body.update(spec)
    return {
        "apiVersion": "agentops.dev/v1alpha1",
        "kind": "AgentService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def apply(plane: cp.ControlPlane, body: dict[str, Any]) -> None:
    plane.kubectl(
        "apply", "--server-side", "--field-manager=tenant", "--force-conflicts", "-f", "-", input=json.dumps(body)
    )


def children(plane: cp.ControlPlane, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    """Every object labelled as this service's, by `kind/name`."""
    listing = plane.get(
        "deployments,services,configmaps,secrets,horizontalpodautoscalers,prometheusrules,servicemonitors,"
        "poddisruptionbudgets,networkpolicies,scaledobjects",
        "-n", namespace, "-l", f"app.kubernetes.io/instance={name}", "--show-managed-fields",
    )  # fmt: skip
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in listing["items"]}


def rendered(body: dict[str, Any], directory: Path) -> dict[str, dict[str, Any]]:
    """Every child `agentctl render` prints for this AgentService, by `kind/name`."""
    path = directory / "agentservice.json"
    path.write_text(json.dumps(body))
    output = subprocess.run([str(AGENTCTL), "render", "-f", str(path)], capture_output=True, text=True, check=True)
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in yaml.safe_load_all(output.stdout) if doc}


def api_image(plane: cp.ControlPlane, namespace: str, name: str) -> str:
    deployment = children(plane, namespace, name)[f"Deployment/{name}-api"]
    image: str = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


def condition(plane: cp.ControlPlane, namespace: str, name: str, kind: str) -> dict[str, Any]:
    body = plane.get("agsvc", name, "-n", namespace)
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def is_operator(event: dict[str, Any]) -> bool:
    return str(event.get("user", {}).get("username", "")).startswith("system:serviceaccount:agent-system:")


def operator_writes(plane: cp.ControlPlane, mark: int, namespace: str | None = None) -> list[str]:
    """The operator's writes since `mark` (in `namespace`, when given), as `verb resource/sub/name`."""
    writes = []
    for event in plane.audit_since(mark):
        if namespace is not None and event.get("objectRef", {}).get("namespace") != namespace:
            continue
        if is_operator(event) and event.get("verb") in (
            "create", "update", "patch", "delete", "deletecollection"
        ):  # fmt: skip
            ref = event.get("objectRef", {})
            writes.append(f"{event['verb']} {ref.get('resource')}/{ref.get('subresource', '')}/{ref.get('name')}")
    return writes


def resync_passes(plane: cp.ControlPlane, mark: int, namespace: str) -> int:
    """How many separate times since `mark` the operator read this namespace's objects.

    A reconcile reads the service's children in a burst; bursts more than half a resync interval
    apart are separate passes. This is the event the steady-state checks wait for: the operator
    has looked, not merely "enough time has passed".
    """
    times = sorted(
        datetime.datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        for e in plane.audit_since(mark)
        if is_operator(e) and e.get("verb") in ("get", "list") and e.get("objectRef", {}).get("namespace") == namespace
    )
    passes, last = 0, None
    for moment in times:
        if last is None or moment - last > RESYNC / 2:
            passes += 1
        last = moment
    return passes


@pytest.fixture
def namespace(controlplane: cp.ControlPlane, request: pytest.FixtureRequest) -> str:
    name = f"life-{request.node.name.removeprefix('test_').replace('_', '-')[:40]}"
    controlplane.kubectl("create", "namespace", name)
    return name


def test_create_edit_drift_and_delete(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    plane = controlplane
    body = agent_service("life", namespace)
    apply(plane, body)
    expected = rendered(body, tmp_path)
    assert {"Deployment/life-api", "Deployment/life-worker", "Secret/life-auth"} <= expected.keys()
    found = wait_for(
        lambda: (c := children(plane, namespace, "life")) and expected.keys() <= c.keys() and c, what="children"
    )
    for key, child in found.items():
        managers = {m["manager"] for m in child["metadata"].get("managedFields", [])}
        assert FIELD_MANAGER in managers, (key, managers)
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["kind"] == "AgentService" and owner["controller"] is True

    # Ready comes from the Deployment controller's own status (the harness kubelet reports the pods).
    plane.kubectl("wait", "--for=condition=Ready", "agsvc/life", "-n", namespace, "--timeout=90s", timeout=120)

    # A spec edit touching only the worker: the children whose rendering changes are rewritten, and
    # every other child keeps its resourceVersion.
    before = {k: v["metadata"]["resourceVersion"] for k, v in children(plane, namespace, "life").items()}
    mark = plane.audit_mark()
    edited = agent_service("life", namespace, worker={"replicas": 3})
    after_render = rendered(edited, tmp_path)
    affected = {k for k, v in after_render.items() if expected.get(k) != v}
    assert "Deployment/life-worker" in affected and "Deployment/life-api" not in affected, affected
    apply(plane, edited)
    wait_for(
        lambda: children(plane, namespace, "life")["Deployment/life-worker"]["spec"]["replicas"] == 3,
        what="worker scaled",
    )
    wait_for(
        lambda: condition(plane, namespace, "life", "Ready").get("status") == "True", timeout=90, what="Ready again"
    )
    after = {k: v["metadata"]["resourceVersion"] for k, v in children(plane, namespace, "life").items()}
    # Controllers write the status of Deployments, HPAs and PDBs (new resourceVersions); what the
    # operator wrote is in the audit log: the affected children, and its own AgentService.
    written = {
        w.split("/")[0].split(" ")[1] + "/" + w.rsplit("/", 1)[1] for w in operator_writes(plane, mark, namespace)
    }
    kinds = {"deployments": "Deployment", "poddisruptionbudgets": "PodDisruptionBudget", "configmaps": "ConfigMap",
             "secrets": "Secret", "services": "Service", "horizontalpodautoscalers": "HorizontalPodAutoscaler",
             "prometheusrules": "PrometheusRule", "servicemonitors": "ServiceMonitor"}  # fmt: skip
    children_written = {f"{kinds[r]}/{n}" for r, n in (w.split("/") for w in written) if r in kinds}
    assert children_written == affected, (children_written, affected)
    statusless = {
        k for k in before if k.split("/")[0] in ("ConfigMap", "Secret", "Service", "PrometheusRule", "ServiceMonitor")
    }
    assert {k for k in statusless if before[k] != after.get(k)} == set()

    # Drift: a deleted child comes back, and so does a field someone else changed.
    plane.kubectl("delete", "configmap", "life-config", "-n", namespace)
    wait_for(lambda: plane.exists("configmap", "life-config", "-n", namespace), timeout=30, what="ConfigMap restored")
    image = api_image(plane, namespace, "life")
    container = children(plane, namespace, "life")["Deployment/life-api"]["spec"]["template"]["spec"]["containers"][0]
    plane.kubectl("set", "image", "deployment/life-api", f"{container['name']}=intruder:latest", "-n", namespace)
    wait_for(lambda: api_image(plane, namespace, "life") == image, timeout=30, what="image restored")

    # Deleting the AgentService: the real garbage collector removes every child.
    plane.kubectl("delete", "agsvc", "life", "-n", namespace)
    wait_for(lambda: not children(plane, namespace, "life"), timeout=60, what="children garbage-collected")


def test_removed_list_entries_leave_the_live_object(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str
) -> None:
    plane = controlplane
    apply(plane, agent_service("lists", namespace))

    def env_names() -> set[str]:
        deployment = children(plane, namespace, "lists").get("Deployment/lists-worker")
        if deployment is None:
            return set()
        return {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}

    def provider_names() -> set[str]:
        config_map = children(plane, namespace, "lists").get("ConfigMap/lists-config")
        if config_map is None:
            return set()
        return {p["name"] for p in json.loads(config_map["data"]["config.json"])["providers"]}

    wait_for(lambda: {"KEEP_ME", "DROP_ME"} <= env_names(), what="env applied")
    wait_for(lambda: provider_names() == {"primary", "backup"}, what="providers applied")
    spec = agent_service("lists", namespace)
    spec["spec"]["env"] = [{"name": "KEEP_ME", "value": "1"}]
    spec["spec"]["model"]["providers"] = spec["spec"]["model"]["providers"][:1]
    apply(plane, spec)
    wait_for(lambda: "DROP_ME" not in env_names() and "KEEP_ME" in env_names(), what="env entry removed")
    wait_for(lambda: provider_names() == {"primary"}, what="provider removed")


def test_kubectl_scale_of_an_autoscaled_worker_is_not_reverted(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str
) -> None:
    plane = controlplane
    apply(plane, agent_service("scaled", namespace, autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5}))
    wait_for(lambda: "Deployment/scaled-worker" in children(plane, namespace, "scaled"), what="worker")
    worker = children(plane, namespace, "scaled")["Deployment/scaled-worker"]
    owners = {
        m["manager"] for m in worker["metadata"]["managedFields"] if "f:replicas" in json.dumps(m.get("fieldsV1", {}))
    }
    assert FIELD_MANAGER not in owners, "the operator owns spec.replicas of an autoscaled worker"
    plane.kubectl("scale", "deployment/scaled-worker", "--replicas=4", "-n", namespace)
    # The operator looks at the service in two resync passes after the scale, and leaves it alone.
    mark = plane.audit_mark()
    wait_for(lambda: resync_passes(plane, mark, namespace) >= 2, timeout=10 * RESYNC, what="two resync passes")
    assert children(plane, namespace, "scaled")["Deployment/scaled-worker"]["spec"]["replicas"] == 4
    assert not [w for w in operator_writes(plane, mark) if "deployments" in w], operator_writes(plane, mark)


def test_zero_writes_at_steady_state(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str
) -> None:
    plane = controlplane
    apply(plane, agent_service("steady", namespace))
    plane.kubectl("wait", "--for=condition=Ready", "agsvc/steady", "-n", namespace, "--timeout=90s", timeout=120)
    # One pass to settle what reaching Ready still posts (its Event), then two passes of nothing.
    settle = plane.audit_mark()
    wait_for(lambda: resync_passes(plane, settle, namespace) >= 1, timeout=10 * RESYNC, what="a resync pass")
    mark = plane.audit_mark()
    wait_for(lambda: resync_passes(plane, mark, namespace) >= 2, timeout=10 * RESYNC, what="two resync passes")
    writes = [w for w in operator_writes(plane, mark, namespace)]
    assert writes == [], writes

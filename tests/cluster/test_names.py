"""An AgentService named with 63 characters on the real control plane: every child named within its kind's limit.

- `agentctl render` of the longest name, with the HPA engine and with KEDA, passes the API server's
  own validation (`kubectl apply --dry-run=server`): names of every kind (a Service's is a DNS-1035
  label) and every label value;
- the operator, running as the chart's ServiceAccount, creates every child the render names, with
  its shortened name, all found by the `app.kubernetes.io/instance` label that carries the whole
  name; `status.children` lists exactly them;
- the real Deployment controller and the API server's name generator name the pods
  `<ReplicaSet>-<5 random>`, the ReplicaSet `<Deployment>-<pod-template-hash>`: no part cut off,
  since Deployment names stay within 46 characters;
- a rollout adds the canary track (ConfigMap and both Deployments, shortened too), listed last in
  `status.children`, and `kubectl agentservice get` shows the shortened Deployments per track;
- turning the disruption budgets and the network policy off prunes them: pruning finds them by label;
- deleting the AgentService lets the garbage collector remove every child.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_operator.api import models
from agent_operator.manifests import builders

from tests.cluster.harness import AGENTCTL, OperatorProcess, kubectl_plugin, wait_for
from tests.cluster.test_lifecycle import FIELD_MANAGER, agent_service, apply, children, rendered
from tests.support import controlplane as cp

# The first test of a session also starts the control plane: a slow machine needs more than 120 s.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

LONGEST = "a-name-of-sixty-three-characters-exactly-the-most-a-service-has"
DEPLOYMENT_NAME_MAX = 46
POD_RANDOM_SUFFIX = 5  # what the API server's name generator appends to a generateName


def keys(listing: list[dict[str, Any]]) -> list[str]:
    return [f"{c['kind']}/{c['name']}" for c in listing]


def status_children(plane: cp.ControlPlane, namespace: str) -> list[str]:
    body = plane.get("agsvc", LONGEST, "-n", namespace)
    return keys((body.get("status") or {}).get("children") or [])


def long_service(namespace: str, **spec: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "image": "registry.example/agent-runtime:1.0",
        "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3},
        "podDisruptionBudget": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "canary": {"enabled": True, "steps": [10, 50, 100], "interval": "1h", "inconclusiveLimit": 100},
    }
    fields.update(spec)
    return agent_service(LONGEST, namespace, **fields)


@pytest.fixture
def namespace(controlplane: cp.ControlPlane) -> str:
    controlplane.kubectl("create", "namespace", "long-names")
    return "long-names"


def test_the_render_of_the_longest_name_passes_the_apiservers_validation(
    controlplane: cp.ControlPlane, third_party_crds: None, tmp_path: Path
) -> None:
    controlplane.kubectl("create", "namespace", "long-render")
    for engine in ("hpa", "keda"):
        body = long_service("long-render", autoscaling={"enabled": True, "engine": engine, "maxReplicas": 3})
        path = tmp_path / f"{engine}.json"
        path.write_text(json.dumps(body))
        manifests = subprocess.run(
            [str(AGENTCTL), "render", "-f", str(path)], capture_output=True, text=True, check=True, timeout=60
        ).stdout
        documents = [d for d in yaml.safe_load_all(manifests) if d]
        assert {d["kind"] for d in documents} >= {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
        names = [d["metadata"]["name"] for d in documents]
        assert all(name != LONGEST and len(name) <= 63 for name in names), names
        result = controlplane.kubectl(
            "apply", "--dry-run=server", "--server-side", "--field-manager=long-render", "-f", "-",
            input=manifests, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        # The canary track's objects too, as the operator writes them (the render prints the steady state).
        if engine == "hpa":
            track = builders.desired(models.AgentService.model_validate(body)).canary
            assert [d["kind"] for d in track] == ["ConfigMap", "Deployment", "Deployment"]
            result = controlplane.kubectl(
                "apply", "--dry-run=server", "--server-side", "--field-manager=long-render", "-f", "-",
                input=yaml.safe_dump_all(track), check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr


def test_the_operator_names_every_child_of_the_longest_name_within_its_kinds_limit(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    plane = controlplane
    body = long_service(namespace)
    expected = rendered(body, tmp_path)
    assert {k.split("/")[0] for k in expected} >= {
        "ConfigMap", "Secret", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "NetworkPolicy", "PrometheusRule", "ServiceMonitor",
    }  # fmt: skip
    apply(plane, body)

    # Every child the render names exists, by its shortened name, found by the whole name's label.
    found = wait_for(
        lambda: (c := children(plane, namespace, LONGEST)) and expected.keys() <= c.keys() and c,
        timeout=90,
        what="children",
    )
    for key, child in found.items():
        kind, name = key.split("/", 1)
        limit = DEPLOYMENT_NAME_MAX if kind in ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget") else 63
        assert name.startswith("a-name-of-sixty") and len(name) <= limit, key
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == LONGEST
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["name"], owner["controller"]) == (LONGEST, True)
        assert FIELD_MANAGER in {m["manager"] for m in child["metadata"]["managedFields"]}, key
    # status.children: exactly the rendered children, in the render's (apply) order.
    wait_for(lambda: status_children(plane, namespace) == list(expected), timeout=60, what="status.children")
    plane.kubectl("wait", "--for=condition=Ready", f"agsvc/{LONGEST}", "-n", namespace, "--timeout=90s", timeout=120)

    # The pods: `<Deployment>-<pod-template-hash>-<5 random>`, nothing cut off.
    deployments = [k.split("/", 1)[1] for k in expected if k.startswith("Deployment/")]
    pods = wait_for(lambda: pods_of(plane, namespace, deployments), timeout=90, what="a pod of each Deployment")
    for deployment, pod in pods.items():
        template_hash = pod["metadata"]["labels"]["pod-template-hash"]
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet" and owner["name"] == f"{deployment}-{template_hash}", owner
        name = pod["metadata"]["name"]
        assert name.startswith(f"{owner['name']}-") and len(name) == len(owner["name"]) + 1 + POD_RANDOM_SUFFIX
        assert len(name) <= 63, name

    # A rollout: the canary track, shortened, listed last; the plugin shows it per track.
    apply(plane, long_service(namespace, image="registry.example/agent-runtime:2.0"))
    listed = wait_for(
        lambda: (k := status_children(plane, namespace)) and len(k) == len(expected) + 3 and k,
        timeout=90,
        what="the canary track in status.children",
    )
    assert listed[: len(expected)] == list(expected)
    canary_track = listed[len(expected) :]
    assert [k.split("/")[0] for k in canary_track] == ["ConfigMap", "Deployment", "Deployment"], canary_track
    live = children(plane, namespace, LONGEST)
    for key in canary_track:
        assert key in live and live[key]["metadata"]["labels"]["track"] == "canary", key
        assert len(key.split("/", 1)[1]) <= (DEPLOYMENT_NAME_MAX if key.startswith("Deployment/") else 63)
    shown = kubectl_plugin(plane, "get", LONGEST, "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in shown.stdout.splitlines() if line.startswith("  ")}
    for component in ("api", "worker"):
        stable = next(k for k in expected if k.startswith("Deployment/") and k.endswith(f"-{component}"))
        canary = next(k for k in canary_track if k.endswith(f"-{component}-canary"))
        assert rows[(component, "stable")] == stable.split("/", 1)[1], shown.stdout
        assert rows[(component, "canary")] == canary.split("/", 1)[1], shown.stdout

    # Pruning finds the children by label: budgets and policy off, both gone.
    apply(
        plane,
        long_service(
            namespace,
            image="registry.example/agent-runtime:2.0",
            podDisruptionBudget={"enabled": False},
            networkPolicy={"enabled": False},
        ),
    )
    prunable = {k for k in expected if k.startswith(("PodDisruptionBudget/", "NetworkPolicy/"))}
    assert len(prunable) == 3, prunable
    wait_for(lambda: not prunable & children(plane, namespace, LONGEST).keys(), timeout=60, what="pruned")
    wait_for(lambda: not prunable & set(status_children(plane, namespace)), timeout=60, what="status without them")

    # The garbage collector removes every child with the AgentService.
    plane.kubectl("delete", "agsvc", LONGEST, "-n", namespace)
    wait_for(lambda: not children(plane, namespace, LONGEST), timeout=60, what="children garbage-collected")


def pods_of(plane: cp.ControlPlane, namespace: str, deployments: list[str]) -> dict[str, dict[str, Any]] | None:
    """One pod of each Deployment (by its ReplicaSet's owner), or None while one has none."""
    replica_sets = plane.get("replicasets", "-n", namespace)["items"]
    owner_of = {
        rs["metadata"]["name"]: rs["metadata"]["ownerReferences"][0]["name"]
        for rs in replica_sets
        if rs["metadata"].get("ownerReferences")
    }
    found: dict[str, dict[str, Any]] = {}
    for pod in plane.get("pods", "-n", namespace)["items"]:
        refs = pod["metadata"].get("ownerReferences") or []
        if refs and owner_of.get(refs[0]["name"]) in deployments:
            found.setdefault(owner_of[refs[0]["name"]], pod)
    return found if set(found) == set(deployments) else None

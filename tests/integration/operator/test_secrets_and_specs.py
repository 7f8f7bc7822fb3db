"""Secrets, invalid specs and autoscaling on the dev cluster, with the real operator.

Covers:
- a provider's apiKeySecretRef naming a missing Secret → SecretMissing (naming the Secret and the
  field), a Warning Event, no Deployment; the Secret created → the service recovers on its own
  (resync timer, no nudge); a Secret without the key → SecretMissing naming the key;
  `status.children` lists what a hold creates (no Deployment) and keeps (running Deployments);
- a spec that passes the CRD schema but not the model → SpecInvalid naming the field, phase
  Failed, a Warning Event, no children, and no hot retry loop; fixing it recovers;
- autoscaling turned on for a Deployment with applied replicas → the HPA is created and the
  replicas are handed over, not reset; the HPA's later replica changes are never fought;
  autoscaling and disruption budgets turned off → their children are pruned.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from tests.integration.operator.conftest import Operator, agent_service, child_writes, eventually, ready_service

KEYED = {
    "providers": [{"name": "primary", "model": "claude-test", "apiKeySecretRef": {"name": "llm", "key": "api-key"}}]
}


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def is_true(op: Operator, type_: str) -> dict[str, Any]:
    cond = op.condition(type_)
    return cond if cond.get("status") == "True" else {}


def deployments(op: Operator) -> list[str]:
    return sorted(k for k in op.children() if k.startswith("Deployment/"))


def status_children(operator: Operator) -> list[str]:
    return [f"{c['kind']}/{c['name']}" for c in operator.status().get("children") or []]


async def test_missing_secret_blocks_pods_until_it_appears(operator: Operator) -> None:
    await operator.put(agent_service(model=KEYED))
    missing = await eventually(
        lambda: operator.condition("SecretMissing").get("status") == "True" and operator.condition("SecretMissing")
    )
    assert "'llm'" in missing["message"] and "spec.model.providers[0].apiKeySecretRef" in missing["message"]
    assert operator.status()["phase"] == "Degraded"
    assert operator.condition("Ready")["status"] == "False"
    events = await eventually(  # posted right after the status write
        lambda: [e for e in operator.cluster.live_objects("v1/events", "default") if e["reason"] == "SecretMissing"]
    )
    assert events[0]["type"] == "Warning" and "'llm'" in events[0]["message"]
    await operator.settle(passes=3)
    assert deployments(operator) == []
    assert "ConfigMap/demo-config" in operator.children()  # everything but the pods is in place
    assert set(status_children(operator)) == set(operator.children())  # and listed as they are
    assert "Secret/demo-auth" in status_children(operator)

    # A Secret without the key is still missing, and the message says which key.
    await operator.cluster.put_object("v1/secrets", secret("llm", other="x"))
    await eventually(lambda: "'api-key'" in operator.condition("SecretMissing").get("message", ""))
    assert deployments(operator) == []

    # The key appears: the next resync pass rolls the pods out, nobody touches the AgentService.
    await operator.cluster.put_object("v1/secrets", secret("llm", **{"api-key": "sk-test"}))
    await eventually(lambda: deployments(operator) == ["Deployment/demo-api", "Deployment/demo-worker"])
    await eventually(lambda: operator.condition("SecretMissing")["status"] == "False")
    await operator.cluster.simulate_rollouts()
    await eventually(lambda: operator.status().get("phase") == "Ready")
    api = operator.children()["Deployment/demo-api"]
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    refs = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})]
    assert {"name": "llm", "key": "api-key"} in refs  # referenced, never copied


async def test_deleted_secret_leaves_running_pods_alone(operator: Operator) -> None:
    await operator.cluster.put_object("v1/secrets", secret("llm", **{"api-key": "sk-test"}))
    await ready_service(operator, agent_service(model=KEYED))
    async with aiohttp.ClientSession() as http:
        await http.delete(f"{operator.url}/api/v1/namespaces/default/secrets/llm")
    await eventually(lambda: operator.condition("SecretMissing").get("status") == "True")
    mark = operator.cluster.request_count
    body = agent_service(model=KEYED, image="registry.example/agent-runtime:9")
    await operator.put(body)
    await eventually(lambda: operator.status().get("observedGeneration") == 2)
    await operator.settle(passes=2)
    written = child_writes(operator.cluster.writes(mark))
    assert not any(w.startswith("deployments/") for w in written)  # the new template is not rolled out
    assert len(deployments(operator)) == 2  # the running ones stay
    assert {"Deployment/demo-api", "Deployment/demo-worker"} <= set(status_children(operator))  # and are listed


async def test_invalid_spec_gets_a_condition_and_no_hot_loop(operator: Operator) -> None:
    # Passes the CRD's OpenAPI schema (CEL rules are not enforced by the emulator) but not the model.
    bad = agent_service(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2})
    await operator.put(bad)
    invalid = await eventually(
        lambda: operator.condition("SpecInvalid").get("status") == "True" and operator.condition("SpecInvalid")
    )
    assert "spec.autoscaling.maxReplicas" in invalid["message"]
    assert operator.status()["phase"] == "Failed"
    assert operator.children() == {}
    # the Event is posted right after the status write: wait for it rather than race it
    events = await eventually(
        lambda: [e for e in operator.cluster.live_objects("v1/events", "default") if e["reason"] == "SpecInvalid"]
    )
    assert len(events) == 1 and events[0]["type"] == "Warning"

    # kopf records the handled (permanently failed) spec once, in its last-handled-configuration
    # annotation; under load that write may land after the Event: wait for it, then nothing at all
    # may be written again.
    def kopf_recorded_the_spec() -> bool:
        annotations = (operator.service() or {})["metadata"].get("annotations") or {}
        return '"maxReplicas":2' in annotations.get("agentops.dev/last-handled-configuration", "")

    await eventually(kopf_recorded_the_spec)
    mark = operator.cluster.request_count
    await operator.settle(passes=5)
    assert operator.cluster.writes(mark) == []  # no retry storm: nothing is written again
    assert len([e for e in operator.cluster.live_objects("v1/events", "default") if e["reason"] == "SpecInvalid"]) == 1

    await operator.put(agent_service(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5}))
    await eventually(lambda: operator.condition("SpecInvalid").get("status") == "False")
    await eventually(lambda: len(deployments(operator)) == 2)


async def test_autoscaling_takes_over_replicas_without_a_fight(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    assert operator.children()["Deployment/demo-worker"]["spec"]["replicas"] == 3
    await operator.put(agent_service(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 10}))
    await eventually(lambda: "HorizontalPodAutoscaler/demo-worker" in operator.children())
    await operator.settle(passes=2)
    worker = operator.children()["Deployment/demo-worker"]
    assert worker["spec"]["replicas"] == 3  # handed over, not reset to the default of 1
    managers = {m["manager"] for m in worker["metadata"]["managedFields"]}
    assert "agentservice-operator-handover" in managers

    # The HPA scales the worker (an update by another manager); the operator leaves it alone.
    async with aiohttp.ClientSession() as http:
        response = await http.patch(
            f"{operator.url}/apis/apps/v1/namespaces/default/deployments/demo-worker?fieldManager=kube-controller-manager",
            json={"spec": {"replicas": 6}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status == 200
    mark = operator.cluster.request_count
    await operator.settle(passes=4)
    assert child_writes(operator.cluster.writes(mark)) == set()
    assert operator.children()["Deployment/demo-worker"]["spec"]["replicas"] == 6

    # Autoscaling off again: the HPAs are pruned, the spec's replicas apply.
    await operator.put(agent_service(pod_disruption_budget={"enabled": False}))
    await eventually(
        lambda: not any(k.startswith(("HorizontalPodAutoscaler/", "PodDisruptionBudget/")) for k in operator.children())
    )
    await eventually(lambda: operator.children()["Deployment/demo-worker"]["spec"]["replicas"] == 3)

"""The operator's RBAC, audited against what the operator really does.

Covers: every request the real operator (kopf and the apply layer) sends to the dev cluster —
through create with every optional child, an update that prunes children, a missing Secret and
its recovery, deletion, a canary rollout that is aborted, and one rolled back by its evaluation
Job's report (read from the Job's Pod) — is granted by the generated rules
(`agentctl rbac`, the chart's copy); and the rules grant nothing the code paths above do not use,
beyond the few verbs the scenario cannot reach here, each named with its reason.
"""

from __future__ import annotations

import base64
from typing import Any

from agent_operator import rbac
from agent_operator.api import models

from tests.integration.operator.conftest import Operator, agent_service, eventually, ready_service
from tests.integration.operator.test_canary_rollout import (
    annotate,
    canary_of,
    canary_service,
    deployments,
    op,
    start_rollout,
)

EVERY_CHILD = {
    "autoscaling": {"enabled": True, "engine": "hpa", "minReplicas": 1, "maxReplicas": 4},
    "networkPolicy": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "alerts": {"enabled": True},
    "model": {"providers": [{"name": "primary", "model": "m", "apiKeySecretRef": {"name": "llm", "key": "key"}}]},
}
# Granted but not reached by the first scenario: the canary track's Deployments and ConfigMap are
# deleted only when a rollout ends (the canary scenario below), KEDA objects only with engine keda,
# a Service only when it is a leftover of an earlier naming rule (test_reconcile.py: the Deployment
# and Service an upgrade renamed).
NOT_EXERCISED = {
    ("", "services", "delete"),
    ("apps", "deployments", "delete"),
    ("keda.sh", "scaledobjects", "create"),
    ("keda.sh", "scaledobjects", "patch"),
    ("keda.sh", "scaledobjects", "get"),
    ("keda.sh", "scaledobjects", "delete"),
    ("keda.sh", "triggerauthentications", "create"),
    ("keda.sh", "triggerauthentications", "patch"),
    ("keda.sh", "triggerauthentications", "get"),
    ("keda.sh", "triggerauthentications", "delete"),
    ("", "configmaps", "delete"),
    # evaluation gates only (test_evaluation_gate_requests_are_granted below)
    ("batch", "jobs", "create"),
    ("batch", "jobs", "get"),
    ("batch", "jobs", "patch"),
    ("", "pods", "list"),
}
# Granted only with peering (two or more replicas); this operator runs standalone. The peering's
# requests are made on the real control plane, under the chart's RBAC (tests/cluster/test_ha.py).
PEERING = {
    ("kopf.dev", resource, verb) for resource in ("clusterkopfpeerings", "kopfpeerings") for verb in rbac.PEERING_VERBS
}
__all__ = ["op"]  # the canary operator fixture, used below


APPLY_PATCH = "application/apply-patch+yaml"


def verb_of(request: Any) -> str:
    watching = str(request.params.get("watch", "")).lower() in ("true", "1")
    if request.method == "GET":
        return "watch" if watching else ("get" if request.name else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[request.method]


def observed(requests: list[Any]) -> set[tuple[str, str, str]]:
    seen = set()
    for request in requests:
        if request.resource is None or request.resource.plural is None:
            continue  # discovery (/api, /apis, /version): open to every authenticated user
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        group = request.resource.group or ""
        seen.add((group, resource, verb_of(request)))
        if APPLY_PATCH in request.headers.get("Content-Type", ""):
            # A real API server also authorises `create` when a server-side apply creates the object.
            seen.add((group, resource, "create"))
    return seen


def granted(document: dict[str, list[dict[str, Any]]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rules in document.values()
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def secret(name: str, **data: str) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "data": encoded}


async def test_every_request_is_granted_and_nothing_more(operator: Operator) -> None:
    mark = 0  # from the operator's start: kopf's own lists and watches count too
    # A missing Secret first (SecretMissing, Events), then it appears and everything is created.
    await operator.put(agent_service(**EVERY_CHILD))
    await eventually(lambda: operator.condition("SecretMissing").get("status") == "True")
    await operator.cluster.put_object("v1/secrets", secret("llm", key="k"))
    await eventually(lambda: operator.condition("SecretMissing").get("status") == "False")
    await operator.cluster.simulate_rollouts("default")
    await eventually(lambda: operator.status().get("phase") == "Ready")
    # Turning optional children off makes the operator list and delete (prune) them.
    off = {"enabled": False}
    body = agent_service(
        **{**EVERY_CHILD, "autoscaling": off, "networkPolicy": off, "podDisruptionBudget": off, "alerts": off}
    )
    await operator.put(body)
    await eventually(lambda: not any(k.startswith(("NetworkPolicy/", "PrometheusRule/")) for k in operator.children()))
    await operator.settle()
    await operator.cluster.delete_object(f"{models.GROUP}/{models.VERSION}/{models.PLURAL}", "default", "demo")
    await operator.settle()

    requests = operator.cluster._requests[mark:]
    document = rbac.rules_document()
    used = observed(requests)
    denied = sorted(need for need in used if not rbac.allows(document, *need))
    assert denied == [], f"the operator needs rules it is not granted: {denied}"
    unused = sorted(granted(document) - used - NOT_EXERCISED - PEERING)
    assert unused == [], f"granted but never used (least privilege): {unused}"


async def test_ready_service_requests_are_granted(operator: Operator) -> None:
    """The plain path of the other operator tests, audited the same way."""
    mark = operator.cluster.request_count
    await ready_service(operator, agent_service())
    document = rbac.rules_document()
    denied = sorted(need for need in observed(operator.cluster._requests[mark:]) if not rbac.allows(document, *need))
    assert denied == []


async def test_canary_rollout_requests_are_granted(op: Operator) -> None:
    """A rollout creates canary objects and an abort deletes them: both are granted."""
    await start_rollout(op, canary_service())
    await annotate(op, **{"agentops.dev/abort": "true"})
    await eventually(lambda: canary_of(op).get("phase") == "RolledBack", timeout=15)
    await eventually(lambda: not any(name.endswith("-canary") for name in deployments(op)), timeout=15)
    used = observed(op.cluster._requests)
    document = rbac.rules_document()
    assert sorted(need for need in used if not rbac.allows(document, *need)) == []
    assert {("apps", "deployments", "delete"), ("", "configmaps", "delete")} <= used


async def test_evaluation_gate_requests_are_granted(op: Operator) -> None:
    """A `before` gate applies a Job and, once it failed, lists its Pod for the report: both granted."""
    body = canary_service(evaluation={"before": ["smoke"]})
    body["spec"]["evaluation"] = {
        "suites": [{"name": "smoke", "inline": "name: smoke\ncases: [{name: a, input: x}]\n"}]
    }
    await start_rollout(op, body)
    jobs = await eventually(lambda: op.cluster.live_objects("batch/v1/jobs", "default"), timeout=15)
    (job,) = jobs
    name = job["metadata"]["name"]
    report = '{"verdict": "fail", "accuracy": 0.0, "failedCases": [{"name": "a", "reason": "task failed: x"}]}'
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-x", "namespace": "default",
           "labels": {"job-name": name}}, "spec": job["spec"]["template"]["spec"]}  # fmt: skip
    await op.cluster.put_object("v1/pods", pod)
    terminated = {"exitCode": 1, "reason": "Error", "message": report}
    await op.cluster.set_status(
        "v1/pods", "default", f"{name}-x", {"containerStatuses": [{"state": {"terminated": terminated}}]}
    )
    await op.cluster.set_status(
        "batch/v1/jobs", "default", name, {"conditions": [{"type": "Failed", "status": "True"}]}
    )
    rolled = await eventually(lambda: (c := canary_of(op)).get("phase") == "RolledBack" and c, timeout=15)
    assert "suite smoke: fail" in rolled["message"] and "a (task failed: x)" in rolled["message"]
    used = observed(op.cluster._requests)
    document = rbac.rules_document()
    assert sorted(need for need in used if not rbac.allows(document, *need)) == []
    assert {("batch", "jobs", "create"), ("batch", "jobs", "get"), ("", "pods", "list")} <= used

"""`agentctl demo`: the real operator against an embedded dev cluster, start to finish.

No cluster, no API key, no Docker: kmock's emulator (`devcluster`) serves the Kubernetes API on
loopback, the operator runs exactly as `agentctl operator` does (in a thread, against that URL),
`examples/full.yaml` is applied, and the children and conditions are printed as `kubectl get`
would. Then the spec is edited (the worker replica ceiling and an alert threshold) and the
children follow; finally the AgentService is deleted and the garbage collector removes the rest.
The emulator runs no controllers, so the demo plays the Deployment controller to report pods ready.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

import yaml
from agent_operator import run
from agent_operator.api import models
from agent_operator.kube import secrets

from agentops_dev import devcluster

EXAMPLE: Final = Path("examples/full.yaml")
AGSVC: Final = f"{models.GROUP}/{models.VERSION}/{models.PLURAL}"
KINDS: Final = (
    ("v1/configmaps", "ConfigMap"),
    ("v1/secrets", "Secret"),
    ("v1/services", "Service"),
    ("apps/v1/deployments", "Deployment"),
    ("autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1/scaledobjects", "ScaledObject"),
    ("keda.sh/v1alpha1/triggerauthentications", "TriggerAuthentication"),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget"),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy"),
    ("monitoring.coreos.com/v1/prometheusrules", "PrometheusRule"),
    ("monitoring.coreos.com/v1/servicemonitors", "ServiceMonitor"),
)
FALLBACK_SPEC: Final[dict[str, Any]] = {
    "model": {
        "strategy": "failover",
        "providers": [
            {
                "name": "claude",
                "model": "claude-sonnet-4-5",
                "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
            }
        ],
    },
    "redis": {"url": "redis://redis.agents.svc:6379/0"},
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 20},
    "alerts": {"errorRate": 0.1},
    "networkPolicy": {"enabled": True},
}


def load_example(path: Path = EXAMPLE) -> dict[str, Any]:
    """The AgentService of `examples/full.yaml`, or a full spec built here when it is absent."""
    if path.exists():
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == models.KIND:
                return doc
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "full-agent", "namespace": "agents"},
        "spec": copy.deepcopy(FALLBACK_SPEC),
    }


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _detail(kind: str, obj: dict[str, Any]) -> str:
    spec, status = obj.get("spec", {}), obj.get("status") or {}
    if kind == "Deployment":
        return f"ready {status.get('readyReplicas', 0)}/{status.get('replicas', spec.get('replicas', 1))}"
    if kind == "HorizontalPodAutoscaler":
        return f"replicas {spec.get('minReplicas')}..{spec.get('maxReplicas')}"
    if kind == "PrometheusRule":
        rules = [r for g in spec.get("groups", []) for r in g.get("rules", [])]
        return f"{len(rules)} alerts"
    if kind in ("ConfigMap", "Secret"):
        return f"{len(obj.get('data') or {})} keys"
    return ""


def children_table(cluster: devcluster.DevCluster, name: str, namespace: str) -> str:
    rows: list[tuple[str, ...]] = [("KIND", "NAME", "OWNER", "DETAIL")]
    for plural, kind in KINDS:
        for obj in cluster.live_objects(plural, namespace):
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/instance") != name:
                continue
            owners = ",".join(r["kind"] + "/" + r["name"] for r in obj["metadata"].get("ownerReferences", []))
            rows.append((kind, obj["metadata"]["name"], owners, _detail(kind, obj)))
    return table(rows)


def conditions_table(status: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("TYPE", "STATUS", "REASON", "MESSAGE")]
    for cond in status.get("conditions", []):
        rows.append((cond["type"], cond["status"], cond.get("reason", ""), cond.get("message", "")[:70]))
    return table(rows)


async def _until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError("the dev cluster did not reach the expected state in time")
        await asyncio.sleep(0.05)
    return value


async def run_cluster_demo(out: TextIO) -> None:
    """Run the whole demo, printing to `out`; everything started is stopped before returning."""
    body = load_example()
    name, namespace = body["metadata"]["name"], body["metadata"].get("namespace", "default")
    body["metadata"]["namespace"] = namespace
    svc = models.AgentService.model_validate(body)

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    async with devcluster.running() as (cluster, url):
        say(f"dev cluster (kmock's Kubernetes emulator) listening on {url}")
        operator = run.Background(run.Config(server=url, health_port=None, metrics_port=None, resync_interval=1.0))
        await operator.start()
        try:
            say("operator started (kopf, all namespaces, resync every 1s)\n")
            for secret_name in dict.fromkeys(ref.name for ref in secrets.references(svc.spec)):
                keys = {r.key for r in secrets.references(svc.spec) if r.name == secret_name}
                data = {k: base64.b64encode(b"placeholder").decode() for k in keys}
                meta = {"name": secret_name, "namespace": namespace}
                await cluster.put_object(
                    "v1/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}
                )
                say(f"$ kubectl create secret generic {secret_name} -n {namespace} ({', '.join(sorted(keys))})")
            started = time.perf_counter()
            await cluster.put_object(AGSVC, body)
            say(f"$ kubectl apply -f {EXAMPLE}")
            await _until(lambda: len([d for d in cluster.live_objects("apps/v1/deployments", namespace)]) >= 2)
            elapsed = time.perf_counter() - started
            say(f"children created in {elapsed:.2f}s; the Deployment controller reports pods ready\n")
            await cluster.simulate_rollouts(namespace)
            status = await _until(
                lambda: _phase(cluster, name, namespace) == "Ready" and _status(cluster, name, namespace)
            )
            say(
                f"$ kubectl get all,cm,secret,hpa,pdb,prometheusrule,servicemonitor -n {namespace}"
                f" -l app.kubernetes.io/instance={name}"
            )
            say(children_table(cluster, name, namespace))
            say(
                f"\n$ kubectl get agsvc {name} -n {namespace}   # phase {status['phase']},"
                f" {status['readyReplicas']}/{status['replicas']} ready"
            )
            say(conditions_table(status))

            edited = copy.deepcopy(body)
            spec = edited["spec"]
            spec.setdefault("autoscaling", {})["maxReplicas"] = int(spec["autoscaling"].get("maxReplicas", 10)) + 10
            spec.setdefault("alerts", {})["errorRate"] = 0.2
            mark = cluster.request_count
            await cluster.put_object(AGSVC, edited)
            say(
                f"\n$ kubectl edit agsvc {name}   # autoscaling.maxReplicas -> {spec['autoscaling']['maxReplicas']},"
                " alerts.errorRate -> 0.2"
            )
            await _until(lambda: _status(cluster, name, namespace).get("observedGeneration") == 2)
            await asyncio.sleep(1.5)  # a resync pass: nothing else should move
            written = sorted(
                {
                    f"{r.resource.plural}/{r.name}"
                    for r in cluster.writes(mark)
                    if r.resource is not None and r.name and r.resource.plural not in (models.PLURAL, "events")
                }
            )
            say("children written by the operator: " + (", ".join(written) or "none"))
            say(children_table(cluster, name, namespace))

            await _steady_and_delete(cluster, name, namespace, say)
        finally:
            await operator.stop()
        say("operator stopped, dev cluster closed")


async def _steady_and_delete(
    cluster: devcluster.DevCluster, name: str, namespace: str, say: Callable[[str], None]
) -> None:
    """Count writes over two resync passes, then delete the service and wait for the GC."""
    mark = cluster.request_count
    await asyncio.sleep(2.5)
    say(f"\nsteady state: {len(cluster.writes(mark))} write requests over 2 resync passes")

    await cluster.delete_object(AGSVC, namespace, name)
    await _until(
        lambda: (
            not any(
                o["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == name
                for plural, _ in KINDS
                for o in cluster.live_objects(plural, namespace)
            )
        )
    )
    say(f"$ kubectl delete agsvc {name}   # the garbage collector removes every child (ownerReferences)")


def _status(cluster: devcluster.DevCluster, name: str, namespace: str) -> dict[str, Any]:
    return (cluster.live(AGSVC, namespace, name) or {}).get("status") or {}


def _phase(cluster: devcluster.DevCluster, name: str, namespace: str) -> str:
    return str(_status(cluster, name, namespace).get("phase", ""))


def main(_: object = None) -> int:
    """Entry point used by `agentctl demo`."""
    asyncio.run(run_cluster_demo(sys.stdout))
    return 0

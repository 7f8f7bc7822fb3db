"""`agentctl demo` after its render step: parts 2 to 4, and where their logs go.

Part 2, here (`run_cluster_demo`): the real operator against an embedded dev cluster, start to
finish. No cluster, no API key, no Docker: kmock's emulator (`devcluster`) serves the Kubernetes
API on loopback, the operator runs exactly as `agentctl operator` does (in a thread, against that
URL), `examples/full.yaml` is applied, and the children and conditions are printed as `kubectl get`
would. Then the spec is edited (the worker replica ceiling and an alert threshold) and the
children follow; finally the AgentService is deleted and the garbage collector removes the rest.
The emulator runs no controllers, so the demo plays the Deployment controller to report pods ready.

Part 3 is `localdemo` (the runtime on one task), part 4 `canarydemo` (a canary rollout judged by
a real Prometheus). `main` runs the three with every log line of the process — kopf's (such as
"OS signals are ignored", since the operator runs in a thread), the operator's, the runtime's,
Python warnings — in a log file whose path the demo prints: the narrative is the output, and
nothing logged is lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import structlog
import yaml
from agent_operator import run
from agent_operator.api import models
from agent_operator.kube import secrets

from agent_runtime import logging as runtime_logging
from agentops_dev import canarydemo, devcluster, localdemo, waiting

EXAMPLE: Final = Path("examples/full.yaml")
LOG_FILE: Final = "demo.log"
CHATTY_LOGGERS: Final = ("aiohttp.access", "httpx")
AGSVC: Final = devcluster.AGSVC
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


async def _until(check: Callable[[], Any]) -> Any:
    return await waiting.eventually(check, timeout=60.0)


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


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[TextIO]:
    """Route every log line of this process to `path` while the block runs; yield the open file.

    The standard library's loggers (kopf's among them) get one handler on the root logger, Python
    warnings are logged, and structlog (the operator and the runtime) writes JSON lines there too.
    Everything is put back as it was on the way out.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    with path.open("a", encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        quiet = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
        for name in CHATTY_LOGGERS:  # a line per HTTP request; their warnings and errors still come
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.captureWarnings(True)
        runtime_logging.configure("info", stream)
        try:
            yield stream
        finally:
            logging.captureWarnings(False)
            root.handlers, root.level = saved_handlers, saved_level
            for name, level in quiet.items():
                logging.getLogger(name).setLevel(level)
            structlog.configure(**saved_structlog)


async def run_parts(out: TextIO, workdir: Path, log_stream: TextIO) -> bool:
    """Parts 2, 3 and 4, writing to `out`; False when part 4 could not run (it says why)."""
    log_path = workdir / LOG_FILE
    out.write(f"(logs of the operator, kopf and the runtime: {log_path}; pods, Prometheus and Redis: {workdir}/)\n")
    out.write("\n=== 2. The operator on an embedded dev cluster (kmock's Kubernetes emulator) ===\n\n")
    await run_cluster_demo(out)
    out.write("\n=== 3. The agent runtime: redis-server, the local model, the task API and a worker ===\n\n")
    await localdemo.run_runtime_demo(out, log_level="info", log_stream=log_stream)
    out.write("\n=== 4. A canary rollout judged by a real Prometheus ===\n\n")
    done = await canarydemo.run_canary_demo(out, workdir)
    out.write(f"\nlogs: {log_path} (the operator, kopf, the runtime); pods, Prometheus and Redis under {workdir}/\n")
    return done


def main(_: object = None) -> int:
    """Entry point used by `agentctl demo` after part 1; exit code 1 when part 4 could not run."""
    workdir = Path(tempfile.mkdtemp(prefix="agentops-demo-"))
    with logs_to(workdir / LOG_FILE) as log_stream:
        done = asyncio.run(run_parts(sys.stdout, workdir, log_stream))
    return 0 if done else 1

"""Queue-depth autoscaling on the real control plane: Prometheus → prometheus-adapter → the HPA controller.

Covers (issue 13, the HPA half), every part real:
- the operator (the chart's process and ServiceAccount) renders an AgentService with autoscaling
  min 1, max 6, 10 tasks per replica; the harness kubelet runs its pods as runtime processes,
  configured from the API (the ConfigMap volume, the token and the provider key from Secrets);
- a real Prometheus scrapes them where the operator's ServiceMonitor says, and prometheus-adapter
  (built from its Go module, registered through the aggregation layer) serves `agent_queue_depth`
  with **the rule docs/autoscaling.md gives users**, read from that file; its resource rules stand
  in for metrics-server (the HPAs' CPU metric);
- 200 slow tasks (the local model answers after 2 s): the real HPA controller scales the worker
  Deployment up from 1 to 6, the queue drains, and it scales back to 1;
- scale-in with tasks in flight: the model answers the first 160 calls and holds the replies to the
  later ones, so the queue stays at 40 and every worker holds two tasks; the HPA's scale-in (the
  ReplicaSet controller deletes pods) reaches pods that are draining tasks, and only then the model
  lets go;
- every task ends succeeded exactly once: one model call per task at the model server, one stored
  result per task in the worker pods' logs, none lost; the pods deleted exit 0 within their grace
  period; every worker pod deletion comes from the ReplicaSet controller (and the kubelet finishing
  it), every scale from the HPA controller (the audit log);
- the figures (seconds from the backlog, the queue above one worker's 10 tasks, to the first
  scale-up; from the drain to the minimum; tasks lost and duplicated) are printed and written to
  `hpa-figures.json` in the test's folder (bench/RESULTS.md).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from agentops_dev.localprometheus import DiscoveringPrometheus, serving
from kubernetes import client, config

from agent_runtime import constants
from tests.cluster.harness import OperatorProcess, wait_for
from tests.cluster.scenario import LocalModel, Sampler, draining_count, finished_results, worker_pods
from tests.support import adapter as metrics_adapter
from tests.support import controlplane as cp
from tests.support.kubelet import HarnessKubelet
from tests.support.redis_server import LocalRedis, running_redis
from tests.support.scrapetargets import ServiceMonitorTargets

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NAMESPACE = "hpa"
SERVICE = "queue-agent"
WORKER = f"{SERVICE}-worker"
TASKS = 200
MAX_REPLICAS = 6
PER_REPLICA = 10
CONCURRENCY = 2  # tasks per worker pod: 12 slots at most, far below the 40 tasks left at the hold
LATENCY = 2.0  # seconds the local model takes per reply: a task is one call
HOLD_AT = 40  # tasks left when the model starts holding its replies
STABILIZATION = 10  # scaleDownStabilizationSeconds
REPLICASET_CONTROLLER = "system:serviceaccount:kube-system:replicaset-controller"
HPA_CONTROLLER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
NODE_USER = "system:node:harness-node"


def agent_service(model_url: str, redis_url: str) -> dict[str, Any]:
    # CPU requests of a whole core: the HPAs' CPU metric must be readable (an HPA does not scale
    # down while one of its metrics is not) but must not be what drives the count.
    resources = {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    return {
        "apiVersion": "agentops.dev/v1alpha1",
        "kind": "AgentService",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "model": {
                "providers": [
                    {
                        "name": "local",
                        "model": "claude-sonnet-5-5",
                        "baseURL": model_url,
                        "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
                    }
                ]
            },
            "redis": {"url": redis_url},
            "autoscaling": {
                "enabled": True,
                "minReplicas": 1,
                "maxReplicas": MAX_REPLICAS,
                "targetQueueDepthPerReplica": PER_REPLICA,
                "scaleDownStabilizationSeconds": STABILIZATION,
            },
            "api": {"resources": resources},
            "worker": {"concurrency": CONCURRENCY, "resources": resources},
            "limits": {"requestsPerMinute": 1_000_000, "tokensPerMinute": 1_000_000_000},
        },
    }


@dataclasses.dataclass
class Stack:
    plane: cp.ControlPlane
    kubelet: HarnessKubelet
    redis: LocalRedis
    model: LocalModel
    prometheus: DiscoveringPrometheus
    targets: ServiceMonitorTargets
    adapter: metrics_adapter.PrometheusAdapter
    pods: Path
    directory: Path


@pytest.fixture(scope="module")
def stack(
    controlplane: cp.ControlPlane,
    kubelet: HarnessKubelet,
    installed_operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    if not metrics_adapter.built():
        if not cp.in_ci() and shutil.which("go") is None:
            pytest.skip("Go is not installed: prometheus-adapter is built from its Go module (Go 1.25+)")
        pytest.fail("prometheus-adapter is not built: run `make setup-test` or `scripts/prometheus-adapter.sh build`")
    directory = tmp_path_factory.mktemp("hpa")
    plane = controlplane
    plane.kubectl("create", "namespace", NAMESPACE)
    plane.kubectl("create", "secret", "generic", "llm-keys", "-n", NAMESPACE, "--from-literal=anthropic=local-key")
    pods = directory / "pods"
    kubelet.run_namespace(NAMESPACE, pods)
    for part in ("redis", "prometheus", "adapter"):
        (directory / part).mkdir()
    with contextlib.ExitStack() as exits:
        store = exits.enter_context(running_redis(directory / "redis", durable=False))
        model = LocalModel(directory, LATENCY)
        exits.callback(model.stop)
        prometheus = exits.enter_context(serving(DiscoveringPrometheus(directory / "prometheus")))
        admin = client.ApiClient(config.new_client_from_config(str(plane.kubeconfig)).configuration)
        exits.callback(admin.close)
        targets = ServiceMonitorTargets(admin, kubelet, prometheus, NAMESPACE).start()
        exits.callback(targets.stop)
        adapter = metrics_adapter.PrometheusAdapter(
            plane, directory / "adapter", prometheus_url=prometheus.url, rules=metrics_adapter.documented_rules()
        )
        exits.callback(adapter.stop)
        adapter.start()
        # The service and its pods go first (their processes need Redis and the model), waited for.
        exits.callback(
            plane.kubectl, "delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s", check=False, timeout=150
        )
        yield Stack(plane, kubelet, store, model, prometheus, targets, adapter, pods, directory)
        assert not targets.errors, targets.errors


def worker_hpa_reads_the_queue(autoscaling: client.AutoscalingV2Api) -> bool:
    """The worker HPA has read `agent_queue_depth` through the adapter and is ScalingActive."""
    try:
        hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(WORKER, NAMESPACE)
    except client.ApiException as error:
        if error.status == 404:  # not rendered yet
            return False
        raise
    status = hpa.status
    conditions = {c.type: c.status for c in status.conditions or []}
    metrics = [m for m in status.current_metrics or [] if m.type == "Object" and m.object is not None]
    return conditions.get("ScalingActive") == "True" and any(
        m.object.metric.name == constants.METRIC_QUEUE_DEPTH for m in metrics
    )


def draining(kubelet: HarnessKubelet) -> dict[str, int]:
    """Worker pods being deleted that are draining tasks: pod -> tasks in flight when SIGTERM came."""
    found = {}
    for worker in worker_pods(kubelet, NAMESPACE):
        if not worker.deleting or not worker.process.containers:
            continue
        log = worker.process.containers[0].log_path
        if log.exists() and (count := draining_count(log)) > 0:
            found[worker.process.name] = count
    return found


@pytest.fixture
def api(stack: Stack) -> Iterator[client.ApiClient]:
    """The test's own client of the API server (admin), for quick looks at Deployments and HPAs."""
    with client.ApiClient(config.new_client_from_config(str(stack.plane.kubeconfig)).configuration) as admin:
        yield admin


@pytest.fixture
def store(stack: Stack) -> Iterator[redis.Redis]:
    """A client of the service's Redis, to read the queue's depth and the task records."""
    with redis.Redis.from_url(stack.redis.url, decode_responses=True) as connection:
        yield connection


def test_hpa_scales_workers_on_queue_depth_and_scale_in_loses_no_task(
    stack: Stack, api: client.ApiClient, store: redis.Redis, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    plane, kubelet = stack.plane, stack.kubelet
    apps, autoscaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    keys = constants.ServiceKeys(namespace=NAMESPACE, service=SERVICE)

    body = agent_service(stack.model.url, stack.redis.url)
    plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
    try:
        wait_for(lambda: worker_hpa_reads_the_queue(autoscaling), timeout=240, interval=1, what="HPA reads the queue")
    except AssertionError as error:
        hpa = plane.get("hpa", WORKER, "-n", NAMESPACE)
        conditions = [f"{c['type']}={c['status']}: {c.get('message')}" for c in hpa["status"].get("conditions", [])]
        raise AssertionError(
            f"{error}\n{conditions}\nkubelet errors: {kubelet.errors}\nadapter log:\n{stack.adapter.logs()[-2000:]}"
        ) from None
    assert not kubelet.errors, kubelet.errors
    (api_pod,) = [w for w in kubelet.workers(NAMESPACE) if w.labels.get("app.kubernetes.io/component") == "api"]
    wait_for(api_pod.process.ready, timeout=60, what="the API pod ready")
    token = base64.b64decode(plane.get("secret", f"{SERVICE}-auth", "-n", NAMESPACE)["data"]["token"]).decode()
    mark = plane.audit_mark()

    # Scale-in with tasks in flight: the model answers the first 160 calls, then holds its replies.
    # The queue stays at 40 tasks, every worker holds its two, and the HPA (ceil(40 / 10) = 4)
    # removes pods that are draining them; the test lets the model go once it sees one.
    stack.model.hold(True, after=TASKS - HOLD_AT)
    streams = [keys.stream(p) for p in constants.PRIORITIES]
    with Sampler(apps, store, streams, deployment=WORKER, namespace=NAMESPACE) as sampler:
        # The backlog: 200 tasks through the task API of the running API pod.
        started = time.monotonic()
        task_ids = []
        with httpx.Client(
            base_url=f"http://{api_pod.process.address('http')}", headers={"authorization": f"Bearer {token}"}
        ) as http:
            for i in range(TASKS):
                response = http.post(constants.TASKS_PATH, json={"input": f"Task {i}: say hello."}, timeout=30)
                assert response.status_code == 202, response.text
                task_ids.append(response.json()["task_id"])
        submitted = time.monotonic()

        # Up: the HPA controller raises the workers to the maximum (1 → 5 → 6: its default policy adds
        # at most 4 pods a 15 s period; the tasks cannot drain faster than 6 a second).
        wait_for(lambda: (s := sampler.last()) and s.replicas == MAX_REPLICAS, timeout=240, what="6 workers")

        in_flight = wait_for(lambda: draining(kubelet), timeout=300, interval=0.5, what="a worker pod draining tasks")
        stack.model.hold(False)

        # The drain: every task succeeded, then back to the minimum.
        def finished() -> bool:
            pipe = store.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(keys.task(task_id), "status")
            return all(status == "succeeded" for status in pipe.execute())

        wait_for(finished, timeout=300, interval=0.5, what="every task succeeded")
        drained = time.monotonic()
        wait_for(lambda: (s := sampler.last()) and s.replicas == 1, timeout=240, what="back to 1 worker")
        wait_for(lambda: len(worker_pods(kubelet, NAMESPACE)) == 1, timeout=180, what="one worker pod left")
    assert not sampler.errors, sampler.errors
    assert not kubelet.errors, kubelet.errors

    # Every task succeeded, exactly once: its record, one model call, one stored result.
    # Through an API pod running now (the API's own HPA, on CPU, may have replaced the first).
    api_pod = next(w for w in kubelet.workers(NAMESPACE) if w.labels.get("app.kubernetes.io/component") == "api"
                   and not w.deleting and w.process.ready())  # fmt: skip
    with httpx.Client(
        base_url=f"http://{api_pod.process.address('http')}", headers={"authorization": f"Bearer {token}"}
    ) as http:
        records = [http.get(f"{constants.TASKS_PATH}/{task_id}", timeout=30).json() for task_id in task_ids]
    assert [r["status"] for r in records] == ["succeeded"] * TASKS, [r for r in records if r["status"] != "succeeded"]
    assert all(r["result"] for r in records)
    calls = collections.Counter(c["task_id"] for c in stack.model.calls() if c["outcome"] == "ok")
    other = [c for c in stack.model.calls() if c["outcome"] != "ok"]
    assert other == [], other
    assert calls == collections.Counter(task_ids), "a task was called twice or never"
    results = collections.Counter(finished_results(stack.pods, NAMESPACE, WORKER))
    lost = [t for t in task_ids if results[t] == 0]
    duplicated = [t for t in task_ids if results[t] > 1 or calls[t] > 1]
    assert lost == [] and duplicated == [], (lost, duplicated)

    # The pods the scale-in removed drained their tasks and exited 0 within their grace period.
    # The kubelet is the session's: the KEDA scenario's pods have the same names in another namespace.
    ended = [
        t
        for t in kubelet.terminations
        if t.pod.startswith(f"{WORKER}-") and (stack.pods / f"{NAMESPACE}_{t.pod}").is_dir()
    ]
    assert ended and all(t.exit_code == 0 and not t.killed for t in ended), ended
    assert set(in_flight) <= {t.pod for t in ended}
    drained_by_pod = {t.pod: draining_count(stack.pods / f"{NAMESPACE}_{t.pod}" / "worker.log") for t in ended}

    # Who did it: the HPA controller scaled, the ReplicaSet controller deleted, the kubelet finished.
    events = plane.audit_since(mark)
    scales = [
        e for e in events
        if e.get("objectRef", {}).get("subresource") == "scale" and e.get("objectRef", {}).get("name") == WORKER
        and e.get("verb") in ("update", "patch")
    ]  # fmt: skip
    assert scales and {e["user"]["username"] for e in scales} == {HPA_CONTROLLER}, [e["user"] for e in scales]
    deletions = [
        e for e in events
        if e.get("verb") == "delete" and e.get("objectRef", {}).get("resource") == "pods"
        and e.get("objectRef", {}).get("namespace") == NAMESPACE
        and str(e.get("objectRef", {}).get("name", "")).startswith(f"{WORKER}-")
    ]  # fmt: skip
    deleters: dict[str, set[str]] = collections.defaultdict(set)
    for event in deletions:
        deleters[event["objectRef"]["name"]].add(event["user"]["username"])
    assert deleters and set(deleters) == {t.pod for t in ended}, (deleters, ended)
    assert all(users == {REPLICASET_CONTROLLER, NODE_USER} for users in deleters.values()), deleters

    # The backlog begins when the queue holds more than one worker's share (the HPA should act).
    backlog = sampler.first(0, lambda s: s.depth > PER_REPLICA)
    assert backlog is not None
    first_up = sampler.first(backlog.at, lambda s: s.replicas > 1)
    peak = next(s for s in sampler.samples if s.replicas == MAX_REPLICAS)
    held = sampler.first(peak.at, lambda s: s.depth <= HOLD_AT)
    first_in = sampler.first(peak.at, lambda s: s.replicas < MAX_REPLICAS)
    at_minimum = sampler.first(drained, lambda s: s.replicas == 1)
    assert first_up is not None and held is not None and first_in is not None and at_minimum is not None
    figures = {
        "tasks": TASKS,
        "seconds_to_submit_all": round(submitted - started, 1),
        "seconds_backlog_to_first_scale_up": round(first_up.at - backlog.at, 1),
        "first_scale_up_to": first_up.replicas,
        "seconds_backlog_to_max": round(peak.at - backlog.at, 1),
        "seconds_depth_40_to_scale_in_with_tasks_in_flight": round(first_in.at - held.at, 1),
        "queue_depth_at_that_scale_in": first_in.depth,
        "workers_after_that_scale_in": first_in.replicas,
        "tasks_in_flight_in_pods_deleted_by_scale_in": sum(drained_by_pod.values()),
        "seconds_drain_to_scale_in_to_min": round(at_minimum.at - drained, 1),
        "worker_pods_deleted_by_scale_in": len(ended),
        "model_calls": sum(calls.values()),
        "tasks_lost": len(lost),
        "tasks_duplicated": len(duplicated),
    }
    (stack.directory / "hpa-figures.json").write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        record_property(key, value)
    with capsys.disabled():
        print("\nHPA scenario figures:", json.dumps(figures))

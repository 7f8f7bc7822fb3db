"""KEDA on the real control plane: workers at zero while idle, woken by the first task, scaled out on a
backlog and back to zero, with Redis behind a password that KEDA reads from the URL's own Secret.

Covers (issue 13, the KEDA half), every part real:
- KEDA v2.21.0's operator and metrics server, built from their Go module (scripts/keda.sh), with
  KEDA's own CRDs and RBAC; the metrics server registered as `v1beta1.external.metrics.k8s.io`
  through the aggregation layer, where the HPA controller reads it;
- a redis-server that requires a password (`requirepass`); the AgentService names it only through
  `redis.urlSecretRef`, a Secret that also holds the address and the password as KEDA reads them:
  the operator renders a TriggerAuthentication naming those keys, and KEDA reads them from the
  Secret itself (the ScaledObject carries no address and no password);
- `engine: keda`, minReplicas 0: the worker Deployment stays at zero while the queue is empty
  (several polling intervals, no worker pod); one task wakes a worker (KEDA's operator scales 0 to 1
  on the stream's length, activation above 0); a backlog scales it out (the HPA KEDA made, fed by
  KEDA's metrics server); an empty queue brings it back to zero (KEDA, after its cooldown);
- every task ends succeeded exactly once: one model call per task at the model server, one stored
  result per task in the worker pods' logs; the worker pods removed by scale-in and by the return
  to zero exit 0 within their grace period; every scale of the workers comes from KEDA's operator
  (0 to 1, 1 to 0) or the HPA controller (1 to N and back), in the API server's audit log;
- the figures (seconds from the first task to the first worker when at zero, from the backlog to
  the scale-out, from the drain to zero; tasks lost and duplicated) are printed and written to
  `keda-figures.json` in the test's folder (bench/RESULTS.md).
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
from kubernetes import client, config

from agent_runtime import constants
from tests.cluster.harness import OperatorProcess, wait_for
from tests.cluster.scenario import LocalModel, Sampler, finished_results, log_events, worker_pods
from tests.support import controlplane as cp
from tests.support import keda
from tests.support.kubelet import HarnessKubelet, PodWorker
from tests.support.redis_server import LocalRedis, running_redis

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

NAMESPACE = "keda-scale"
SERVICE = "queue-agent"
WORKER = f"{SERVICE}-worker"
KEDA_HPA = f"keda-hpa-{WORKER}"  # the HPA KEDA's operator makes for the ScaledObject
PASSWORD = "keda-reads-this-from-the-secret"
TASKS = 80
MAX_REPLICAS = 4
PER_REPLICA = 10
CONCURRENCY = 2
LATENCY = 2.0  # seconds the local model takes per reply: a task is one call
POLLING = 5  # autoscaling.pollingIntervalSeconds: KEDA reads the queue every 5 s
COOLDOWN = 10  # scaleDownStabilizationSeconds: KEDA's cooldownPeriod and the HPA's window
IDLE = 4 * POLLING  # how long the workers are watched at zero with nothing queued
HPA_CONTROLLER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
REPLICASET_CONTROLLER = "system:serviceaccount:kube-system:replicaset-controller"
NODE_USER = "system:node:harness-node"


def agent_service(model_url: str) -> dict[str, Any]:
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
            # The whole URL, password included, in a Secret; KEDA's keys beside it (the defaults).
            "redis": {"urlSecretRef": {"name": "redis-credentials", "key": "url"}},
            "autoscaling": {
                "enabled": True,
                "engine": "keda",
                "minReplicas": 0,
                "maxReplicas": MAX_REPLICAS,
                "targetQueueDepthPerReplica": PER_REPLICA,
                "pollingIntervalSeconds": POLLING,
                "scaleDownStabilizationSeconds": COOLDOWN,
            },
            "worker": {"concurrency": CONCURRENCY},
            "limits": {"requestsPerMinute": 1_000_000, "tokensPerMinute": 1_000_000_000},
        },
    }


@dataclasses.dataclass
class Stack:
    plane: cp.ControlPlane
    kubelet: HarnessKubelet
    redis: LocalRedis
    model: LocalModel
    keda: keda.Keda
    pods: Path
    directory: Path


@pytest.fixture(scope="module")
def stack(
    controlplane: cp.ControlPlane,
    kubelet: HarnessKubelet,
    installed_operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    if not keda.built():
        if not cp.in_ci() and shutil.which("go") is None:
            pytest.skip("Go is not installed: KEDA is built from its Go module (Go 1.26+)")
        pytest.fail("KEDA is not built: run `make setup-test` or `scripts/keda.sh build`")
    directory = tmp_path_factory.mktemp("keda")
    plane = controlplane
    plane.kubectl("create", "namespace", NAMESPACE)
    plane.kubectl("create", "secret", "generic", "llm-keys", "-n", NAMESPACE, "--from-literal=anthropic=local-key")
    pods = directory / "pods"
    kubelet.run_namespace(NAMESPACE, pods)
    for part in ("redis", "keda"):
        (directory / part).mkdir()
    with contextlib.ExitStack() as exits:
        store = exits.enter_context(running_redis(directory / "redis", durable=False))
        # A Redis that requires auth: nothing unauthenticated gets through from here on.
        with redis.Redis(port=store.port) as setup:
            setup.config_set("requirepass", PASSWORD)
        with pytest.raises(redis.AuthenticationError), redis.Redis(port=store.port) as anonymous:
            anonymous.ping()
        address = f"127.0.0.1:{store.port}"
        plane.kubectl(
            "create", "secret", "generic", "redis-credentials", "-n", NAMESPACE,
            f"--from-literal=url=redis://:{PASSWORD}@{address}/0", f"--from-literal=address={address}",
            f"--from-literal=password={PASSWORD}",
        )  # fmt: skip
        model = LocalModel(directory, LATENCY)
        exits.callback(model.stop)
        scaler = keda.Keda(plane, directory / "keda")
        exits.callback(scaler.stop)
        try:
            scaler.start()
        except keda.KedaError as error:
            pytest.fail(str(error), pytrace=False)
        # The service and its pods go first (their processes need Redis and the model), waited for:
        # the AgentService before its namespace, or the operator's resync re-creates the children the
        # namespace's deletion removes (KEDA's finalizer makes that deletion slow) and is refused.
        exits.callback(
            plane.kubectl, "delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s", check=False, timeout=150
        )
        exits.callback(
            plane.kubectl, "delete", "agentservice", SERVICE, "-n", NAMESPACE, "--ignore-not-found", "--wait=true",
            "--timeout=120s", check=False, timeout=150,
        )  # fmt: skip
        yield Stack(plane, kubelet, store, model, scaler, pods, directory)


@pytest.fixture
def api(stack: Stack) -> Iterator[client.ApiClient]:
    """The test's own client of the API server (admin), for quick looks at Deployments."""
    with client.ApiClient(config.new_client_from_config(str(stack.plane.kubeconfig)).configuration) as admin:
        yield admin


@pytest.fixture
def store(stack: Stack) -> Iterator[redis.Redis]:
    """A client of the service's Redis (with the password), to read the queue and the task records."""
    with redis.Redis(port=stack.redis.port, password=PASSWORD, decode_responses=True) as connection:
        yield connection


def scaled_object_ready(plane: cp.ControlPlane) -> bool:
    """KEDA took the ScaledObject: Ready (its triggers could reach Redis) and its HPA made."""
    conditions = keda.scaled_object_conditions(plane, NAMESPACE, WORKER)
    return conditions.get("Ready") == "True" and plane.exists("hpa", KEDA_HPA, "-n", NAMESPACE)


def live_workers(kubelet: HarnessKubelet) -> list[PodWorker]:
    return [w for w in worker_pods(kubelet, NAMESPACE) if not w.deleting]


def test_keda_wakes_workers_from_zero_scales_out_and_back_to_zero_losing_nothing(
    stack: Stack, api: client.ApiClient, store: redis.Redis, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    plane, kubelet = stack.plane, stack.kubelet
    apps = client.AppsV1Api(api)
    keys = constants.ServiceKeys(namespace=NAMESPACE, service=SERVICE)
    streams = [keys.stream(p) for p in constants.PRIORITIES]

    mark = plane.audit_mark()
    # The kubelet is the session's: the HPA scenario's pods have the same names in another namespace.
    terminations_before = len(kubelet.terminations)
    plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(agent_service(stack.model.url)))
    try:
        wait_for(lambda: scaled_object_ready(plane), timeout=240, interval=1, what="KEDA's ScaledObject Ready")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stack.keda.logs()}") from None

    # What the operator rendered: KEDA gets the address and password from the URL's Secret, by key.
    auth = plane.get("triggerauthentication", WORKER, "-n", NAMESPACE)
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "address", "name": "redis-credentials", "key": "address"},
        {"parameter": "password", "name": "redis-credentials", "key": "password"},
    ]
    scaled = plane.get("scaledobject", WORKER, "-n", NAMESPACE)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["authenticationRef"]["name"] == WORKER
        assert not {"address", "password", "host", "passwordFromEnv"} & set(trigger["metadata"]), trigger

    # Idle: the workers go to zero (the Deployment starts at one) and stay there, no worker pod.
    wait_for(lambda: apps.read_namespaced_deployment(WORKER, NAMESPACE).spec.replicas == 0, timeout=120,
             what="the workers at zero")  # fmt: skip
    wait_for(lambda: not worker_pods(kubelet, NAMESPACE), timeout=120, what="no worker pod")
    (api_pod,) = [w for w in kubelet.workers(NAMESPACE) if w.labels.get("app.kubernetes.io/component") == "api"]
    wait_for(api_pod.process.ready, timeout=60, what="the API pod ready")
    token = base64.b64decode(plane.get("secret", f"{SERVICE}-auth", "-n", NAMESPACE)["data"]["token"]).decode()
    http = httpx.Client(
        base_url=f"http://{api_pod.process.address('http')}", headers={"authorization": f"Bearer {token}"}
    )

    def submit(text: str) -> str:
        response = http.post(constants.TASKS_PATH, json={"input": text}, timeout=30)
        assert response.status_code == 202, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    def status(task_id: str) -> str | None:
        return store.hget(keys.task(task_id), "status")

    with http, Sampler(apps, store, streams, deployment=WORKER, namespace=NAMESPACE) as sampler:
        idle_from = time.monotonic()
        time.sleep(IDLE)
        idle = [s for s in sampler.samples if s.at >= idle_from]
        assert idle and all(s.replicas == 0 and s.depth == 0 for s in idle), idle[-5:]
        assert not worker_pods(kubelet, NAMESPACE)
        assert keda.scaled_object_conditions(plane, NAMESPACE, WORKER).get("Active") == "False"

        # The first task wakes a worker.
        first_at = time.monotonic()
        first = submit("The first task: say hello.")
        woken = wait_for(lambda: sampler.first(first_at, lambda s: s.replicas >= 1), timeout=120, interval=0.25,
                         what="a worker woken by the first task")  # fmt: skip
        wait_for(lambda: any(w.process.ready() for w in live_workers(kubelet)), timeout=120, interval=0.25,
                 what="the first worker pod ready")  # fmt: skip
        worker_ready_at = time.monotonic()
        wait_for(lambda: status(first) == "succeeded", timeout=120, interval=0.25, what="the first task succeeded")
        first_done_at = time.monotonic()

        # The backlog: the workers scale out (the HPA KEDA made, on its external metric).
        task_ids = [first]
        backlog_from = time.monotonic()
        task_ids += [submit(f"Task {i}: say hello.") for i in range(TASKS)]
        submitted = time.monotonic()
        wait_for(lambda: (s := sampler.last()) and s.replicas == MAX_REPLICAS, timeout=240, what="the maximum")

        # The drain, then zero.
        def finished() -> bool:
            pipe = store.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hget(keys.task(task_id), "status")
            return all(value == "succeeded" for value in pipe.execute())

        wait_for(finished, timeout=300, interval=0.5, what="every task succeeded")
        drained = time.monotonic()
        wait_for(lambda: (s := sampler.last()) and s.replicas == 0, timeout=180, what="back to zero workers")
        wait_for(lambda: not worker_pods(kubelet, NAMESPACE), timeout=180, what="no worker pod left")
    assert not sampler.errors, sampler.errors
    assert not kubelet.errors, kubelet.errors

    # Every task succeeded, exactly once: its record, one model call, one stored result.
    with httpx.Client(
        base_url=f"http://{api_pod.process.address('http')}", headers={"authorization": f"Bearer {token}"}
    ) as http:
        records = [http.get(f"{constants.TASKS_PATH}/{task_id}", timeout=30).json() for task_id in task_ids]
    assert [r["status"] for r in records] == ["succeeded"] * len(task_ids), [
        r for r in records if r["status"] != "succeeded"
    ]
    assert all(r["result"] for r in records)
    calls = collections.Counter(c["task_id"] for c in stack.model.calls() if c["outcome"] == "ok")
    other = [c for c in stack.model.calls() if c["outcome"] != "ok"]
    assert other == [], other
    assert calls == collections.Counter(task_ids), "a task was called twice or never"
    results = collections.Counter(finished_results(stack.pods, NAMESPACE, WORKER))
    lost = [t for t in task_ids if results[t] == 0]
    duplicated = [t for t in task_ids if results[t] > 1 or calls[t] > 1]
    assert lost == [] and duplicated == [], (lost, duplicated)

    # The worker pods that went (scale-in, and the return to zero) finished cleanly. The Deployment
    # is created at one replica (an autoscaled Deployment is rendered without `replicas`) and KEDA
    # takes it to zero at once: that first pod may get its SIGTERM before the runtime has even set
    # its handler (exit -15), never having read the queue (no `worker_started` in its log).
    ended = [
        t for t in kubelet.terminations[terminations_before:]
        if t.pod.startswith(f"{WORKER}-") and (stack.pods / f"{NAMESPACE}_{t.pod}").is_dir()
    ]  # fmt: skip
    assert ended and not [t for t in ended if t.killed], ended

    def never_consumed(pod: str) -> bool:
        log = stack.pods / f"{NAMESPACE}_{pod}" / "worker.log"
        return not any(e.get("event") == "worker_started" for e in log_events(log))

    unclean = [t for t in ended if t.exit_code != 0 and not (t.exit_code == -15 and never_consumed(t.pod))]
    assert unclean == [], unclean
    assert [t for t in ended if t.exit_code == 0], ended

    # Who did it: KEDA's operator scaled 0 -> 1 and 1 -> 0, the HPA controller 1 -> N -> 1; the
    # ReplicaSet controller deleted the pods and the kubelet finished them.
    events = plane.audit_since(mark)
    scales = [
        e for e in events
        if e.get("objectRef", {}).get("subresource") == "scale" and e.get("objectRef", {}).get("name") == WORKER
        and e.get("objectRef", {}).get("namespace") == NAMESPACE and e.get("verb") in ("update", "patch")
        and e.get("responseStatus", {}).get("code", 200) < 300
    ]  # fmt: skip
    scalers = {e["user"]["username"] for e in scales}
    assert scalers == {stack.keda.account, HPA_CONTROLLER}, scalers
    deletions = [
        e for e in events
        if e.get("verb") == "delete" and e.get("objectRef", {}).get("resource") == "pods"
        and e.get("objectRef", {}).get("namespace") == NAMESPACE
        and str(e.get("objectRef", {}).get("name", "")).startswith(f"{WORKER}-")
    ]  # fmt: skip
    deleters: dict[str, set[str]] = collections.defaultdict(set)
    for event in deletions:
        deleters[event["objectRef"]["name"]].add(event["user"]["username"])
    assert deleters and all(users == {REPLICASET_CONTROLLER, NODE_USER} for users in deleters.values()), deleters
    # The operator wrote the TriggerAuthentication once: nothing drifts at rest.
    writes = [
        e for e in events
        if e.get("objectRef", {}).get("resource") == "triggerauthentications" and not e["objectRef"].get("subresource")
        and e.get("objectRef", {}).get("namespace") == NAMESPACE and e.get("verb") in ("create", "patch", "update")
        and e["user"]["username"] != stack.keda.account
    ]  # fmt: skip
    assert len(writes) == 1, [(e["verb"], e["user"]["username"]) for e in writes]
    # KEDA read the queue through the password-protected Redis the whole time.
    assert "NOAUTH" not in stack.keda.logs() and "WRONGPASS" not in stack.keda.logs()

    backlog = sampler.first(backlog_from, lambda s: s.depth > PER_REPLICA)
    assert backlog is not None
    out = sampler.first(backlog.at, lambda s: s.replicas > 1)
    peak = sampler.first(backlog.at, lambda s: s.replicas == MAX_REPLICAS)
    zero = sampler.first(drained, lambda s: s.replicas == 0)
    assert out is not None and peak is not None and zero is not None
    figures = {
        "polling_interval_seconds": POLLING,
        "cooldown_seconds": COOLDOWN,
        "seconds_idle_at_zero_checked": IDLE,
        "seconds_first_task_to_first_worker_scaled": round(woken.at - first_at, 1),
        "seconds_first_task_to_first_worker_ready": round(worker_ready_at - first_at, 1),
        "seconds_first_task_to_succeeded": round(first_done_at - first_at, 1),
        "tasks": len(task_ids),
        "seconds_to_submit_backlog": round(submitted - backlog_from, 1),
        "replicas_at_backlog": backlog.replicas,
        "seconds_backlog_to_first_scale_out": round(out.at - backlog.at, 1),
        "first_scale_out_to": out.replicas,
        "seconds_backlog_to_max": round(peak.at - backlog.at, 1),
        "seconds_drain_to_zero": round(zero.at - drained, 1),
        "worker_pods_ended": len(ended),
        "model_calls": sum(calls.values()),
        "tasks_lost": len(lost),
        "tasks_duplicated": len(duplicated),
    }
    (stack.directory / "keda-figures.json").write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        record_property(key, value)
    with capsys.disabled():
        print("\nKEDA scenario figures:", json.dumps(figures))

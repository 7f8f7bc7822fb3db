"""A harness kubelet for the real control plane: one Node, whose pods it runs or only reports.

It does what the control plane needs from a kubelet, with the credentials of its Node
(`node_kubeconfig`: the Node authorizer decides what it may read and write):
- registers a Node with capacity and a Ready condition, and renews its Lease in
  `kube-node-lease` (the node lifecycle controller would otherwise taint it and evict its pods);
- watches the pods the scheduler binds to it;
- in the namespaces given to `run_namespace`, runs each pod as local processes
  (`tests.support.podprocess`: volumes from ConfigMaps and Secrets, env, a host port per container
  port), one thread per pod as the kubelet's pod workers: the pod is reported Running once its
  processes start and Ready from its readiness probe, with its IP (127.0.0.1: the pods share the
  host's loopback; `pod(namespace, name).address(port)` says where each port listens). A process
  that exits is started again (restartPolicy Always), with a back-off, and noted in `errors` (a
  crash is a fault in these tests). Liveness and startup probes are not run. A failed API call is
  retried at the next look (and noted in `retried`), as the kubelet's status manager does;
- on a pod's graceful deletion, sends SIGTERM, waits out the pod's grace period
  (`metadata.deletionGracePeriodSeconds`), SIGKILLs what is left, reports the containers
  terminated and then removes the pod (a delete with grace 0 and the pod's UID as precondition), as
  the kubelet's status manager does. `terminations` keeps how each container ended;
- serves the resource metrics of the pods it runs, as the kubelet's `/metrics/resource` does
  (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes` by namespace, pod and
  container, read from /proc, and the node's own figures) at `metrics_address`, for a metrics
  server (here prometheus-adapter's resource rules) to serve `metrics.k8s.io` from;
- everywhere else it only reports pods: Running and Ready at once, and finished at once on a
  graceful deletion. That proves what the controllers do with pod status (Deployment and
  ReplicaSet status, the AgentService's Ready condition), not the runtime inside the pods.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tests.support import controlplane as cp
from tests.support.podprocess import (
    CLOCK_TICKS,
    ContainerConfigError,
    PodProcess,
    PodSpecError,
    Termination,
    now,
)
from tests.support.redis_server import free_port

__all__ = ["HarnessKubelet", "node_kubeconfig"]

LEASE_SECONDS: Final = 40
RENEW_EVERY: Final = 5.0
# How often a running pod's readiness probe runs: at most a second, so the tests see a pod ready
# soon after it is (the pods' own periods, 5 s, would only slow them down).
PROBE_PERIOD: Final = 1.0
STOP_GRACE: Final = 5.0  # seconds each pod gets when the kubelet itself stops
DELETE_ATTEMPTS: Final = 8


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class PodWorker:
    """The thread that runs one pod: start, probe, report, and finish it when it is deleted."""

    def __init__(self, kubelet: HarnessKubelet, pod: dict[str, Any], directory: Path) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.process = PodProcess(pod, kubelet.core, directory)
        self.uid = str(pod["metadata"]["uid"])
        self.started = False
        self.start_time = now()
        self.spec_error: PodSpecError | None = None  # the pod cannot run here: not tried again
        self.waiting: tuple[str, str] | None = ("ContainerCreating", "")
        self.ready_since = now()
        self.was_ready = False
        self.terminal_phase: str | None = None
        self.reported: dict[str, Any] | None = None
        self.wake = threading.Event()
        self.gone = threading.Event()  # the pod left the API (force-deleted): just stop the processes
        self.thread = threading.Thread(target=self._run, name=f"pod-{pod['metadata']['name']}", daemon=True)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.pod["metadata"].get("labels") or {})

    @property
    def deleting(self) -> bool:
        return self.pod["metadata"].get("deletionTimestamp") is not None

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def _run(self) -> None:
        try:
            while not self.kubelet.stopping.is_set():
                if self.gone.is_set():
                    self.process.terminate(0)
                    return
                if self.deleting:
                    self._finish()
                    return
                self._sync()
                self._report()
                self.wake.wait(PROBE_PERIOD)
                self.wake.clear()
            self.process.terminate(STOP_GRACE)
        except Exception as error:  # kept for the test to fail on; the pod stays as it was
            self.kubelet.errors.append(error)
            self.process.terminate(0)

    def _sync(self) -> None:
        if self.spec_error is not None:
            return
        if not self.started:
            try:
                self.process.prepare()
            except ContainerConfigError as error:
                self.waiting = ("CreateContainerConfigError", str(error))
                return
            except (ApiException, urllib3.exceptions.HTTPError) as error:  # the API failed us: next look
                self.kubelet.retried.append(error)
                return
            except PodSpecError as error:
                self.spec_error, self.waiting = error, ("CreateContainerError", str(error))
                self.kubelet.errors.append(error)
                return
            self.started, self.waiting = True, None
        for container in self.process.reap():
            self.kubelet.errors.append(
                RuntimeError(f"pod {self.process.name}: {container.name} exited with {container.exit_code}")
            )
        self.process.start()
        self.process.probe()
        ready = self.process.ready()
        if ready != self.was_ready:
            self.was_ready, self.ready_since = ready, now()

    def _finish(self) -> None:
        """The kubelet's part of a graceful deletion: stop the containers, report them, remove the pod."""
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        grace = float(grace if grace is not None else self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        if self.was_ready:
            self.was_ready, self.ready_since = False, now()
            self._report()
        ended = self.process.terminate(grace)
        self.kubelet.terminations.extend(ended)
        self.terminal_phase = "Succeeded" if all(t.exit_code == 0 for t in ended) else "Failed"
        self._report()
        meta = self.pod["metadata"]
        options = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid))
        for attempt in range(DELETE_ATTEMPTS):  # a transient API error must not leave the pod behind
            try:
                self.kubelet.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=options)
                return
            except ApiException as error:
                if error.status in (404, 409):  # gone already, or a pod of that name with another UID
                    return
                self.kubelet.retried.append(error)
            except urllib3.exceptions.HTTPError as error:
                self.kubelet.retried.append(error)
            time.sleep(min(5.0, 0.5 * 2**attempt))
        self.kubelet.errors.append(RuntimeError(f"pod {meta['name']}: could not be removed"))

    def _container_status(self, index: int) -> dict[str, Any]:
        spec = self.pod["spec"]["containers"][index]
        status: dict[str, Any] = {
            "name": spec["name"],
            "image": spec.get("image", ""),
            "imageID": f"harness://{spec.get('image', '')}",
            "ready": False,
            "started": False,
            "restartCount": 0,
        }
        if not self.started:
            reason, message = self.waiting or ("ContainerCreating", "")
            status["state"] = {"waiting": {"reason": reason, "message": message}}
            return status
        container = self.process.containers[index]
        status["restartCount"] = container.restarts
        if container.popen is not None:
            status["containerID"] = f"harness://{container.popen.pid}"
        if container.exit_code is not None:
            status["state"] = {
                "terminated": {
                    "exitCode": container.exit_code,
                    "reason": "Completed" if container.exit_code == 0 else "Error",
                    "startedAt": container.started_at,
                    "finishedAt": container.finished_at,
                }
            }
        else:
            status["state"] = {"running": {"startedAt": container.started_at}}
            status["ready"], status["started"] = container.ready, True
        return status

    def _report(self) -> None:
        """Patch the pod's status when it differs from what was last reported."""
        meta = self.pod["metadata"]
        ready = "True" if self.was_ready else "False"
        start_time = self.pod.get("status", {}).get("startTime") or self.start_time
        status: dict[str, Any] = {
            "phase": self.terminal_phase or ("Running" if self.started else "Pending"),
            "hostIP": self.kubelet.pod_ip,
            "hostIPs": [{"ip": self.kubelet.pod_ip}],
            "podIP": self.kubelet.pod_ip,
            "podIPs": [{"ip": self.kubelet.pod_ip}],
            "startTime": start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": self.ready_since},
                {"type": "Ready", "status": ready, "lastTransitionTime": self.ready_since},
            ],
            "containerStatuses": [self._container_status(i) for i in range(len(self.pod["spec"]["containers"]))],
        }
        if status == self.reported:
            return
        try:
            self.kubelet.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})
        except ApiException as error:
            if error.status == 404:
                self.gone.set()
            else:  # reported again at the next look, as the kubelet's status manager retries
                self.kubelet.retried.append(error)
            return
        except urllib3.exceptions.HTTPError as error:
            self.kubelet.retried.append(error)
            return
        self.reported = status


class ResourceMetrics(Collector):
    """The kubelet's resource metrics: CPU and memory of the pods it runs, and of the node."""

    def __init__(self, kubelet: HarnessKubelet) -> None:
        self.kubelet = kubelet

    def collect(self) -> Iterator[Metric]:
        labels = ["container", "pod", "namespace"]
        cpu = CounterMetricFamily("container_cpu_usage_seconds", "Cumulative CPU time of the container.", labels=labels)
        memory = GaugeMetricFamily(
            "container_memory_working_set_bytes", "Resident memory of the container.", labels=labels
        )
        for worker in self.kubelet.workers():
            for container, seconds, resident in worker.process.usage():
                key = [container, worker.process.name, worker.process.namespace]
                cpu.add_metric(key, seconds)
                memory.add_metric(key, resident)
        yield cpu
        yield memory
        node_cpu = CounterMetricFamily("node_cpu_usage_seconds", "Cumulative CPU time of the node.", labels=["node"])
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
        node_cpu.add_metric([self.kubelet.name], busy / CLOCK_TICKS)
        yield node_cpu
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        used = (int(meminfo["MemTotal"].split()[0]) - int(meminfo["MemAvailable"].split()[0])) * 1024
        node_memory = GaugeMetricFamily("node_memory_working_set_bytes", "Memory in use on the node.", labels=["node"])
        node_memory.add_metric([self.kubelet.name], used)
        yield node_memory


def node_kubeconfig(plane: cp.ControlPlane, name: str) -> Path:
    """A kubeconfig for the kubelet of Node `name`, as TLS bootstrapping would give it.

    A client certificate `system:node:<name>` in `system:nodes`, signed by the cluster CA: the
    API server's Node authorizer then lets it do what a kubelet may (its Node, its Lease, the
    status and deletion of the pods bound to it, the Secrets and ConfigMaps those pods use), and
    the audit log tells its requests from the controllers' and the tests'.
    """
    user = f"system:node:{name}"
    key, csr, crt = (plane.directory / f"{name}.{suffix}" for suffix in ("key", "csr", "crt"))
    ext = plane.directory / f"{name}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=clientAuth\n")  # fmt: skip
    ca, ca_key = plane.directory / "ca.crt", plane.directory / "ca.key"
    for command in (
        ["openssl", "genrsa", "-out", str(key), "2048"],
        ["openssl", "req", "-new", "-key", str(key), "-subj", f"/O=system:nodes/CN={user}", "-out", str(csr)],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-CAserial", str(plane.directory / f"{name}.srl"), "-days", "2", "-sha256", "-extfile", str(ext),
         "-out", str(crt)],
    ):  # fmt: skip
        subprocess.run(command, capture_output=True, check=True, timeout=60)
    path = plane.directory / f"{name}.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": plane.server, "certificate-authority": str(ca)}}],
                "users": [{"name": user, "user": {"client-certificate": str(crt), "client-key": str(key)}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                "current-context": "local",
            }
        )
    )
    return path


class HarnessKubelet:
    """A Node named `name`, kept alive; its bound pods run (`run_namespace`) or are reported Ready."""

    def __init__(self, kubeconfig: Path, name: str = "harness-node", pod_ip: str = "127.0.0.1") -> None:
        self.name = name
        self.pod_ip = pod_ip
        self.api = client.ApiClient(config.new_client_from_config(str(kubeconfig)).configuration)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}  # by pod UID
        self._run_in: dict[str, Path] = {}  # namespace -> folder of its pods
        self._metrics_server: Any = None
        self.metrics_address = ""
        self.terminations: list[Termination] = []
        self.errors: list[BaseException] = []  # what a test should fail on
        self.retried: list[BaseException] = []  # transient API errors, retried

    # --- node and lease -------------------------------------------------------------------------

    def _ready_condition(self) -> dict[str, Any]:
        now = _now().isoformat()
        return {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "harness kubelet is posting ready status",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    def register(self) -> None:
        capacity = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "500Gi"}
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"},
            },
        }
        with contextlib.suppress(ApiException):
            self.core.create_node(body)
        self.core.patch_node_status(
            self.name,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [self._ready_condition()],
                    "addresses": [{"type": "InternalIP", "address": self.pod_ip}],
                    "nodeInfo": {
                        "kubeletVersion": "v1.35.4-harness",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                    },
                }
            },
        )
        self._renew_lease()

    def _renew_lease(self) -> None:
        now = _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
        }
        try:
            self.coordination.patch_namespaced_lease(self.name, "kube-node-lease", body)
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", body)

    def _heartbeat(self) -> None:
        while not self.stopping.wait(RENEW_EVERY):
            try:
                self._renew_lease()
                self.core.patch_node_status(self.name, {"status": {"conditions": [self._ready_condition()]}})
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                self.retried.append(error)  # a missed beat is retried; the lease outlives several

    # --- pods that run --------------------------------------------------------------------------

    def run_namespace(self, namespace: str, directory: Path) -> None:
        """Run the pods of `namespace` bound from now on as processes, their folders under `directory`."""
        with self._lock:
            self._run_in[namespace] = directory

    def workers(self, namespace: str | None = None) -> list[PodWorker]:
        with self._lock:
            return [w for w in self._workers.values() if namespace is None or w.process.namespace == namespace]

    def pod(self, namespace: str, name: str) -> PodProcess:
        """The processes of a running pod (KeyError when this kubelet runs no such pod)."""
        for worker in self.workers(namespace):
            if worker.process.name == name:
                return worker.process
        raise KeyError(f"{namespace}/{name}")

    def _forget(self, uid: str) -> None:
        """The pod left the API: its worker stops its processes (at once, if they still run)."""
        with self._lock:
            worker = self._workers.pop(uid, None)
        if worker is not None:
            worker.gone.set()
            worker.wake.set()

    def _run(self, pod: Any, event: str) -> None:
        body: dict[str, Any] = self.api.sanitize_for_serialization(pod)
        uid, namespace = body["metadata"]["uid"], body["metadata"]["namespace"]
        if event == "DELETED":
            self._forget(uid)
            return
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None:
                if body.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return  # finished by this kubelet already; its removal is on the way
                worker = PodWorker(self, body, self._run_in[namespace])
                self._workers[uid] = worker
                worker.thread.start()
                return
        worker.update(body)

    # --- pods that are only reported ----------------------------------------------------------

    def _report(self, pod: Any) -> None:
        meta = pod.metadata
        if meta.deletion_timestamp is not None:
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0)
            return
        conditions = {c.type: c.status for c in (pod.status.conditions or [])}
        if pod.status.phase == "Running" and conditions.get("Ready") == "True":
            return
        now = _now().isoformat()
        statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": f"harness://{c.image}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod.spec.containers
        ]
        status = {
            "phase": "Running",
            "hostIP": self.pod_ip,
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": now,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": now}
                for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": statuses,
        }
        with contextlib.suppress(ApiException):  # the pod may be gone already
            self.core.patch_namespaced_pod_status(meta.name, meta.namespace, {"status": status})

    # --- the pod watch ----------------------------------------------------------------------------

    def _handle(self, pod: Any, event: str) -> None:
        with self._lock:
            runs = pod.metadata.namespace in self._run_in or pod.metadata.uid in self._workers
        if runs:
            self._run(pod, event)
        elif event in ("ADDED", "MODIFIED"):
            self._report(pod)

    def _pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
                listed = {pod.metadata.uid for pod in listing.items}
                for worker in self.workers():  # removed while the watch was down
                    if worker.uid not in listed:
                        self._forget(worker.uid)
                for pod in listing.items:
                    self._handle(pod, "ADDED")
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                ):
                    if self.stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._handle(event["object"], event["type"])
            except Exception as error:  # a broken watch is re-listed, as a kubelet does
                if not self.stopping.is_set():
                    transient = isinstance(error, ApiException | urllib3.exceptions.HTTPError | OSError)
                    (self.retried if transient else self.errors).append(error)
                    self.stopping.wait(0.5)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> HarnessKubelet:
        self.register()
        registry = CollectorRegistry()
        registry.register(ResourceMetrics(self))
        port = free_port()
        self._metrics_server, _ = start_http_server(port, addr=self.pod_ip, registry=registry)
        self.metrics_address = f"{self.pod_ip}:{port}"
        for target in (self._heartbeat, self._pods):
            thread = threading.Thread(target=target, name=f"kubelet-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop watching and heartbeating; every pod it runs gets SIGTERM and `STOP_GRACE` seconds."""
        self.stopping.set()
        if self._watch is not None:
            self._watch.stop()
        for worker in self.workers():
            worker.wake.set()
        deadline = time.monotonic() + STOP_GRACE + 5
        for worker in self.workers():
            worker.thread.join(timeout=max(0.1, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(timeout=5)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.api.close()

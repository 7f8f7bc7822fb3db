"""A harness kubelet for the real control plane: one Node whose pods are reported, not run.

It does what the control plane needs from a kubelet and nothing more:
- registers a Node with capacity and a Ready condition, and renews its Lease in
  `kube-node-lease` (the node lifecycle controller would otherwise taint it and evict its pods);
- watches the pods the scheduler binds to it and reports each Running and Ready, with an IP;
- on a pod's graceful deletion, finishes it (a delete with grace 0), as a kubelet does once the
  containers have stopped.

The pods do not run: this proves what the controllers do with pod status (Deployment and
ReplicaSet status, the AgentService's Ready condition), not the runtime inside the pods.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

__all__ = ["HarnessKubelet"]

LEASE_SECONDS = 40
RENEW_EVERY = 5.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class HarnessKubelet:
    """A Node named `name`, kept alive, whose bound pods are reported Running and Ready."""

    def __init__(self, kubeconfig: Path, name: str = "harness-node", pod_ip: str = "127.0.0.1") -> None:
        self.name = name
        self.pod_ip = pod_ip
        self.api = client.ApiClient(config.new_client_from_config(str(kubeconfig)).configuration)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self.errors: list[BaseException] = []

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
        while not self._stop.wait(RENEW_EVERY):
            try:
                self._renew_lease()
                self.core.patch_node_status(self.name, {"status": {"conditions": [self._ready_condition()]}})
            except Exception as error:  # a missed beat is retried; the lease outlives several
                self.errors.append(error)

    # --- pods -----------------------------------------------------------------------------------

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

    def _pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self._stop.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listing.items:
                    self._report(pod)
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                ):
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._report(event["object"])
            except Exception as error:  # a broken watch is re-listed, as a kubelet does
                if not self._stop.is_set():
                    self.errors.append(error)
                    self._stop.wait(0.5)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> HarnessKubelet:
        self.register()
        for target in (self._heartbeat, self._pods):
            thread = threading.Thread(target=target, name=f"kubelet-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self.api.close()

"""Fixtures: a dev cluster (kmock's emulator over HTTP on loopback) and the real operator in-process.

The operator is `run.Background` (`run.operate`, the coroutine `agentctl operator` runs, in a thread)
with a short resync interval, cluster-wide (kmock 0.8 cannot serve kopf's namespace listing), against the
cluster's URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kopf
import pytest
from agent_operator import opmetrics, run
from agent_operator.api import models
from agent_operator.kube import client as kube_client
from agentops_dev import devcluster
from agentops_dev.waiting import eventually

RESYNC = 0.3
AGSVC = f"{models.GROUP}/{models.VERSION}/{models.PLURAL}"
CHILD_PLURALS = (
    "v1/configmaps",
    "v1/secrets",
    "v1/services",
    "apps/v1/deployments",
    "autoscaling/v2/horizontalpodautoscalers",
    "policy/v1/poddisruptionbudgets",
    "networking.k8s.io/v1/networkpolicies",
    "monitoring.coreos.com/v1/prometheusrules",
    "monitoring.coreos.com/v1/servicemonitors",
    "keda.sh/v1alpha1/scaledobjects",
    "keda.sh/v1alpha1/triggerauthentications",
)
BASE_SPEC: dict[str, Any] = {
    "model": {"providers": [{"name": "primary", "model": "claude-test", "baseURL": "http://127.0.0.1:9/"}]},
    "redis": {"url": "redis://redis.default.svc:6379/0"},
    "autoscaling": {"enabled": False},
    "api": {"replicas": 2},
    "worker": {"replicas": 3},
}


def agent_service(name: str = "demo", namespace: str = "default", **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE_SPEC)
    body.update(copy.deepcopy(spec))
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


@dataclasses.dataclass
class Operator:
    """A running in-process operator (`run.Background`, as the demo embeds it) and the cluster it serves."""

    cluster: devcluster.DevCluster
    url: str
    metrics: opmetrics.Metrics
    background: run.Background | None = None

    def config(self, resync: float) -> run.Config:
        """The operator's configuration; subclasses override it (the canary tests add analysis settings)."""
        return run.Config(server=self.url, health_port=None, metrics_port=None, resync_interval=resync)

    async def start(self, resync: float = RESYNC) -> None:
        """Run the operator in a thread with its own event loop (kopf owns its loop's tasks); wait until ready."""
        self.background = run.Background(self.config(resync), self.metrics)
        await self.background.start(timeout=15)

    async def halt(self) -> None:
        """Stop the operator; fail if it raised, or if its thread is still running 15 s later."""
        if self.background is None:
            return
        background, self.background = self.background, None
        await background.stop(timeout=15)  # raises what the operator raised
        assert not background.alive, "the operator did not stop within 15 s"

    @property
    def alive(self) -> bool:
        # Background has no public liveness; its thread is the one thing that says the operator still runs
        return self.background is not None and self.background.alive

    def service(self, name: str = "demo", namespace: str = "default") -> dict[str, Any] | None:
        return self.cluster.live(AGSVC, namespace, name)

    def status(self, name: str = "demo", namespace: str = "default") -> dict[str, Any]:
        return (self.service(name, namespace) or {}).get("status") or {}

    def condition(self, type_: str, name: str = "demo", namespace: str = "default") -> dict[str, Any]:
        for cond in self.status(name, namespace).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def children(self, name: str = "demo", namespace: str = "default") -> dict[str, dict[str, Any]]:
        """`Kind/name` -> live object, of every object labelled with this instance."""
        found = {}
        for plural in CHILD_PLURALS:
            for obj in self.cluster.live_objects(plural, namespace):
                if obj["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == name:
                    found[f"{obj['kind']}/{obj['metadata']['name']}"] = obj
        return found

    async def put(self, body: dict[str, Any]) -> dict[str, Any]:
        plural = AGSVC
        return await self.cluster.put_object(plural, body)

    async def settle(self, passes: int = 2) -> None:
        """Wait for `passes` resync intervals."""
        await asyncio.sleep(RESYNC * passes + 0.1)


def child_writes(requests: list[Any]) -> set[str]:
    """`plural/name` of each child object written (status and the AgentService itself excluded)."""
    written = set()
    for request in requests:
        if request.resource is None or request.resource.plural in (models.PLURAL, "events"):
            continue
        if request.subresource == "status":
            continue
        written.add(f"{request.resource.plural}/{request.name or ''}")
    return written


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[devcluster.DevCluster, str]]:
    async with devcluster.running() as served:
        yield served


@contextlib.asynccontextmanager
async def direct_client(url: str, metrics: opmetrics.Metrics) -> AsyncIterator[kube_client.Client]:
    """The operator's API client on the dev cluster at `url`, outside kopf (for a `Reconciler` driven
    by hand); closed on exit."""

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    client = kube_client.Client(login, metrics)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def operator(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[Operator]:
    emulator, url = cluster
    handle = Operator(cluster=emulator, url=url, metrics=opmetrics.create())
    await handle.start()
    try:
        yield handle
    finally:
        await handle.halt()


def events(op: Operator, reason: str, name: str = "demo", namespace: str = "default") -> list[dict[str, Any]]:
    """The Events with `reason` about the live AgentService `name` (this object, by uid)."""
    uid = ((op.service(name, namespace) or {}).get("metadata") or {}).get("uid")
    return [
        e
        for e in op.cluster.live_objects("v1/events", namespace)
        if e["reason"] == reason and e["involvedObject"].get("uid") == uid
    ]


def kopf_handled(op: Operator, name: str = "demo", namespace: str = "default") -> bool:
    """Whether kopf's bookkeeping write for the live spec has landed.

    kopf records the spec it handled (the `last-handled-configuration` annotation) in a patch of its
    own, after the handler returns; under load that write lands after the status and Events the
    handler wrote, so a test that marks the request log must wait for it first.
    """
    live = op.service(name, namespace) or {}
    raw = (live.get("metadata", {}).get("annotations") or {}).get(f"{models.GROUP}/last-handled-configuration")
    return raw is not None and json.loads(raw).get("spec") == live.get("spec")


async def ready_service(op: Operator, body: dict[str, Any]) -> dict[str, Any]:
    """Create `body`, play the Deployment controller, wait until the service is Ready and quiet.

    Quiet: the "Ready" Event (posted right after the status write) and kopf's bookkeeping write
    have landed, so no write of this creation can arrive after a caller's `request_count` mark.
    """
    await op.put(body)
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    await eventually(lambda: len([k for k in op.children(name, namespace) if k.startswith("Deployment/")]) == 2)
    await op.cluster.simulate_rollouts(namespace)
    await quiet_and_ready(op, name, namespace)
    return op.children(name, namespace)


async def quiet_and_ready(op: Operator, name: str = "demo", namespace: str = "default") -> None:
    """Wait until the service is Ready, the Event of its latest flip to Ready is posted, and kopf's
    bookkeeping write has landed: the writes that follow a status write, which a caller's
    `request_count` mark must not race."""

    def ready_event_posted() -> bool:
        ready = op.condition("Ready", name, namespace)
        if op.status(name, namespace).get("phase") != "Ready" or ready.get("status") != "True":
            return False
        since = ready.get("lastTransitionTime", "")  # RFC 3339 in UTC: compares as text
        return any(e.get("firstTimestamp", "") >= since for e in events(op, "Ready", name, namespace))

    await eventually(ready_event_posted)
    await eventually(lambda: kopf_handled(op, name, namespace))


Waiter = Callable[[], Awaitable[None]]

"""Fixtures: a dev cluster (kmock's emulator over HTTP on loopback) and the real operator in-process.

The operator is `run.operate` — the same coroutine `agentctl operator` runs — with a short resync
interval, cluster-wide (kmock 0.8 cannot serve kopf's namespace listing), against the cluster's URL.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from agent_operator import devcluster, models, opmetrics, run

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


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `check` until it returns a truthy value; fail with its last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


@dataclasses.dataclass
class Operator:
    """A running in-process operator and the cluster it serves."""

    cluster: devcluster.DevCluster
    url: str
    metrics: opmetrics.Metrics
    thread: threading.Thread | None = None
    stop: threading.Event | None = None
    failure: list[BaseException] = dataclasses.field(default_factory=list)

    async def start(self, resync: float = RESYNC) -> None:
        """Run the operator in a thread with its own event loop (kopf owns its loop's tasks)."""
        self.stop, ready = threading.Event(), threading.Event()
        config = run.Config(server=self.url, health_port=None, metrics_port=None, resync_interval=resync)

        def target() -> None:
            try:
                asyncio.run(run.operate(config, metrics=self.metrics, stop_flag=self.stop, ready_flag=ready))
            except BaseException as exc:  # reported by halt()
                self.failure.append(exc)

        self.thread = threading.Thread(target=target, name="operator", daemon=True)
        self.thread.start()
        await eventually(ready.is_set, timeout=15)

    async def halt(self) -> None:
        if self.thread is None or self.stop is None:
            return
        self.stop.set()
        await eventually(lambda: not self.thread.is_alive(), timeout=15)  # type: ignore[union-attr]
        self.thread = None
        assert not self.failure, self.failure

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

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


@pytest.fixture
async def operator(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[Operator]:
    emulator, url = cluster
    handle = Operator(cluster=emulator, url=url, metrics=opmetrics.create())
    await handle.start()
    try:
        yield handle
    finally:
        await handle.halt()


async def ready_service(op: Operator, body: dict[str, Any]) -> dict[str, Any]:
    """Create `body`, play the Deployment controller, wait until the service is Ready."""
    await op.put(body)
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    await eventually(lambda: len([k for k in op.children(name, namespace) if k.startswith("Deployment/")]) == 2)
    await op.cluster.simulate_rollouts(namespace)
    await eventually(lambda: op.status(name, namespace).get("phase") == "Ready")
    return op.children(name, namespace)


Waiter = Callable[[], Awaitable[None]]

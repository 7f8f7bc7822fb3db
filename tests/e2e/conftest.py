"""Fixtures of the end-to-end tests: Redis, a discovering Prometheus, and a `Stack` per test.

A `Stack` is one dev cluster with the real operator (`run.Background`, the composition root
`agentctl operator` runs, here with `--prometheus-url`, 1 s scrapes and 1 s budget refreshes) and a
`Kubelet` running its Deployments as runtime processes. Model servers belong to each test (each
track its own).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_operator import opmetrics, run
from agent_operator.api import models
from agentops_dev import devcluster
from agentops_dev.localredis import LocalRedis

from tests.e2e.harness import NAMESPACE, DiscoveringPrometheus, Kubelet, LoadGenerator
from tests.support import waiting
from tests.support.prometheus_server import serving
from tests.support.redis_server import running_redis

AGSVC = f"{models.GROUP}/{models.VERSION}/{models.PLURAL}"
ANALYSIS_TICK = 0.2
RESYNC = 1.0
BUDGET_INTERVAL = 1.0  # status.budget refreshes (the production default is 60 s)
BUDGET_TICK = 0.2


async def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """`tests.support.waiting.eventually` with the longer default a whole stack needs."""
    return await waiting.eventually(check, timeout, interval)


def service_body(name: str, model_url: str, redis_url: str, **canary: Any) -> dict[str, Any]:
    """An AgentService of 1 API and 2 worker replicas on one local model, canaries enabled."""
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"providers": [{"name": "local", "model": "claude-sonnet-5-5", "baseURL": model_url}]},
            "redis": {"url": redis_url},
            "autoscaling": {"enabled": False},
            "api": {"replicas": 1},
            "worker": {"replicas": 2, "concurrency": 8},
            "limits": {"requestsPerMinute": 1_000_000, "tokensPerMinute": 1_000_000_000},
            "canary": {"enabled": True, **canary},
        },
    }


@dataclasses.dataclass
class Stack:
    """The dev cluster, the operator and the kubelet of one test."""

    cluster: devcluster.DevCluster
    operator: run.Background
    kubelet: Kubelet
    redis_url: str
    prometheus: DiscoveringPrometheus

    @property
    def metrics(self) -> opmetrics.Metrics:
        return self.operator.metrics

    def service(self, name: str) -> dict[str, Any]:
        return self.cluster.live(AGSVC, NAMESPACE, name) or {}

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.service(name).get("status") or {})

    def canary(self, name: str) -> dict[str, Any]:
        return dict(self.status(name).get("canary") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in (self.service(name).get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return dict(cond)
        return {}

    def deployments(self, name: str) -> dict[str, dict[str, Any]]:
        return {
            d["metadata"]["name"]: d
            for d in self.cluster.live_objects("apps/v1/deployments", NAMESPACE)
            if d["metadata"]["labels"].get("app.kubernetes.io/instance") == name
        }

    def events(self, name: str, reason: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.cluster.live_objects("v1/events", NAMESPACE)
            if e["involvedObject"]["name"] == name and (reason is None or e["reason"] == reason)
        ]

    def token(self, name: str) -> str:
        secret = self.cluster.live("v1/secrets", NAMESPACE, f"{name}-auth") or {}
        return base64.b64decode(secret["data"]["token"]).decode()

    def sample(self, metric: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(metric, labels) or 0.0

    async def put(self, body: dict[str, Any]) -> None:
        await self.cluster.put_object(AGSVC, copy.deepcopy(body))

    async def edit(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        live = copy.deepcopy(self.service(name))
        change(live)
        await self.cluster.put_object(AGSVC, live)

    async def serve(self, body: dict[str, Any]) -> None:
        """Create the service and wait until its stable pods run and it is Ready and Idle."""
        name = body["metadata"]["name"]
        await self.put(body)
        await eventually(
            lambda: self.kubelet.errors or self.status(name).get("phase") == "Ready", timeout=120
        )  # pods are processes: slow to start on a busy machine
        assert not self.kubelet.errors, self.kubelet.errors
        await eventually(lambda: self.canary(name).get("phase") == "Idle")

    @contextlib.asynccontextmanager
    async def load(self, name: str, rate: float) -> AsyncIterator[LoadGenerator]:
        generator = LoadGenerator(self.kubelet, self.token(name), rate=rate)
        task = asyncio.create_task(generator.run())
        try:
            yield generator
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    with running_redis(tmp_path_factory.mktemp("redis"), durable=False) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiscoveringPrometheus]:
    with serving(DiscoveringPrometheus(tmp_path_factory.mktemp("prometheus"))) as server:
        yield server


@contextlib.asynccontextmanager
async def running_stack(
    directory: Path, redis_url: str, prometheus: DiscoveringPrometheus, *, prometheus_url: str | None = None
) -> AsyncIterator[Stack]:
    """A dev cluster, the operator (analysing against `prometheus_url`) and the kubelet; all stopped after."""
    async with devcluster.running() as (cluster, url):
        config = run.Config(
            server=url,
            health_port=None,
            metrics_port=None,
            resync_interval=RESYNC,
            prometheus_url=prometheus_url or prometheus.url,
            prometheus_scrape_interval=1.0,
            analysis_tick=ANALYSIS_TICK,
            budget_interval=BUDGET_INTERVAL,
            budget_tick=BUDGET_TICK,
        )
        operator = run.Background(config, opmetrics.create())
        await operator.start()
        kubelet = Kubelet(cluster, directory, prometheus)
        syncing = asyncio.create_task(kubelet.run())
        try:
            yield Stack(cluster, operator, kubelet, redis_url, prometheus)
        finally:
            try:
                syncing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await syncing
                await kubelet.close()
            finally:
                await operator.stop()
        assert not kubelet.errors, kubelet.errors


@pytest.fixture
async def stack(tmp_path: Path, redis_server: LocalRedis, prometheus: DiscoveringPrometheus) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, redis_server.url, prometheus) as running:
        yield running

"""The dev stack: the dev cluster, the real operator judging canaries from a real Prometheus, and the
kubelet running its pods as runtime processes.

`running_stack(...)` starts the dev cluster (kmock's emulator on loopback), the operator exactly as
`agentctl operator` runs it (`run.Background`, here with `--prometheus-url`, 1 s scrapes and 1 s
budget refreshes), and
a `Kubelet` whose pods a `DiscoveringPrometheus` scrapes; all are stopped after. A `Stack` reads the
AgentService, its children and Events off the dev cluster, writes the spec, and puts load on it.
Redis, Prometheus and the model servers belong to the caller (each track may have its own model).
The end-to-end tests, `bench/canary.py` and part 4 of `agentctl demo` run on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

from agent_operator import opmetrics, run
from agent_operator.api import models

from agentops_dev import devcluster, waiting
from agentops_dev.kubelet import NAMESPACE, Kubelet
from agentops_dev.loadgenerator import LoadGenerator
from agentops_dev.localprometheus import DiscoveringPrometheus

__all__ = ["AGSVC", "ANALYSIS_TICK", "NAMESPACE", "RESYNC", "Stack", "running_stack", "service_body"]

AGSVC: Final = devcluster.AGSVC
ANALYSIS_TICK: Final = 0.2
RESYNC: Final = 1.0
BUDGET_INTERVAL: Final = 1.0  # status.budget refreshes (the production default is 60 s)
BUDGET_TICK: Final = 0.2
START_TIMEOUT: Final = 120.0  # pods are processes: slow to start on a busy machine
SETTLE_TIMEOUT: Final = 20.0


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
    """The dev cluster, the operator and the kubelet of one stack."""

    cluster: devcluster.DevCluster
    operator: run.Background
    kubelet: Kubelet
    redis_url: str
    prometheus: DiscoveringPrometheus

    @property
    def url(self) -> str:
        """The dev cluster's base URL (what a kubeconfig names)."""
        return str(self.operator.config.server)

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
        await waiting.eventually(
            lambda: self.kubelet.errors or self.status(name).get("phase") == "Ready", timeout=START_TIMEOUT
        )
        if self.kubelet.errors:
            raise RuntimeError(f"pods of {name} did not start: {self.kubelet.errors}")
        await waiting.eventually(lambda: self.canary(name).get("phase") == "Idle", timeout=SETTLE_TIMEOUT)

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


@contextlib.asynccontextmanager
async def running_stack(
    directory: Path, redis_url: str, prometheus: DiscoveringPrometheus, *, prometheus_url: str | None = None
) -> AsyncIterator[Stack]:
    """A dev cluster, the operator (analysing against `prometheus_url`) and the kubelet; all stopped after.

    Pods that could not start are an error once the stack has stopped (the kubelet keeps syncing
    meanwhile, as a real one retries).
    """
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
        if kubelet.errors:
            raise RuntimeError(f"pods could not start: {kubelet.errors}")

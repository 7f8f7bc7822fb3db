"""The analysis fairness scenario: a victim namespace's analyses and creates beside hostile ones.

Real operator (`run.Background`, as `agentctl operator` runs it) on the dev cluster, its queries
sent with their namespace through a real prom-label-proxy to a real Prometheus, with a `SlowHop`
in between that holds every query of the `hostile` namespace `check_seconds` (4.9 s: just inside
the operator's 5 s query timeout). The dev cluster plays the Deployment controller (every
Deployment reported rolled out), so canary tracks are ready at once and no pod runs.

- `hostile` AgentServices in namespace `hostile`, canary rollouts under way, analysed every second,
  each with 20 checks (the most a spec may have): every query of theirs takes `check_seconds`;
- one AgentService in namespace `victim`, canary rollout under way, analysed every
  `victim_interval` seconds (its queries are answered at once);
- measured over `observe` seconds: the gaps between the victim's consecutive analyses (their
  `time`, written by the operator when the queries ran) and how late each was (gap - interval);
  and, one after another, `creates` new AgentServices in `victim`: seconds from the create to both
  Deployments existing (create -> children).

Shared by `tests/integration/operator/test_analysis_fairness.py` and `bench/analysis_fairness.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from agent_operator import opmetrics, run
from agent_operator.api import models
from agentops_dev import devcluster, waiting
from agentops_dev.localprometheus import running_prometheus

from tests.support import labelproxy
from tests.support.slowhop import SlowHop

AGSVC: Final = devcluster.AGSVC
HOSTILE: Final = "hostile"
VICTIM: Final = "victim"
CHECKS: Final = 20


def body(name: str, namespace: str, *, image: str = "registry.example/agent:1", **canary: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "image": image,
        "model": {"providers": [{"name": "local", "model": "claude-test", "baseURL": "http://127.0.0.1:9/"}]},
        "redis": {"url": "redis://127.0.0.1:1/0"},
        "autoscaling": {"enabled": False},
        "api": {"replicas": 1},
        "worker": {"replicas": 1},
    }
    if canary:
        spec["canary"] = {
            "enabled": True,
            "steps": [50, 100],
            "minRequests": 0,
            "inconclusiveLimit": 100,
            **canary,
        }
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclasses.dataclass
class Figures:
    hostile: int
    check_seconds: float
    victim_interval: float
    analysis_times: list[float]  # epoch seconds of the victim's analyses seen
    creates: list[float]  # seconds from create to children, one per new service
    hostile_queries_held: int

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.analysis_times, self.analysis_times[1:], strict=False)]

    @property
    def delays(self) -> list[float]:
        """How late each victim analysis came after its interval (never below 0)."""
        return [max(0.0, gap - self.victim_interval) for gap in self.gaps]

    def summary(self) -> dict[str, Any]:
        delays, creates = self.delays, self.creates
        return {
            "hostile services": self.hostile,
            "hostile query seconds": self.check_seconds,
            "victim interval": self.victim_interval,
            "victim analyses": len(self.analysis_times),
            "victim delay p50": round(statistics.median(delays), 3) if delays else None,
            "victim delay max": round(max(delays), 3) if delays else None,
            "create->children p50": round(statistics.median(creates), 3) if creates else None,
            "create->children max": round(max(creates), 3) if creates else None,
            "hostile queries held": self.hostile_queries_held,
        }


class Cluster:
    """The dev cluster with the operator running on it."""

    def __init__(self, cluster: devcluster.DevCluster) -> None:
        self.cluster = cluster

    def live(self, namespace: str, name: str) -> dict[str, Any]:
        return self.cluster.live(AGSVC, namespace, name) or {}

    def canary(self, namespace: str, name: str) -> dict[str, Any]:
        return dict((self.live(namespace, name).get("status") or {}).get("canary") or {})

    async def put(self, obj: dict[str, Any]) -> None:
        await self.cluster.put_object(AGSVC, copy.deepcopy(obj))

    async def roll_out(self, obj: dict[str, Any], timeout: float) -> None:
        """Create it, wait for its stable track, then change its image: a canary rollout under way."""
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        await self.put(obj)
        await waiting.eventually(lambda: self.canary(namespace, name).get("phase") == "Idle", timeout)
        changed = copy.deepcopy(self.live(namespace, name))
        changed["spec"]["image"] = "registry.example/agent:2"
        await self.put(changed)
        await waiting.eventually(lambda: self.canary(namespace, name).get("phase") == "Progressing", timeout)

    def children(self, namespace: str, name: str) -> int:
        return sum(
            1
            for d in self.cluster.live_objects("apps/v1/deployments", namespace)
            if d["metadata"]["labels"].get("app.kubernetes.io/instance") == name
        )


@contextlib.asynccontextmanager
async def operating(directory: Path, prometheus_url: str) -> AsyncIterator[Cluster]:
    """The dev cluster, its Deployment controller played every 0.2 s, the operator on it."""
    async with devcluster.running() as (cluster, url):
        config = run.Config(
            server=url,
            health_port=None,
            metrics_port=None,
            resync_interval=60.0,
            prometheus_url=prometheus_url,
            prometheus_namespace_param="namespace",
            prometheus_scrape_interval=1.0,
            analysis_tick=0.2,
        )
        operator = run.Background(config, opmetrics.create())
        await operator.start()

        async def deployment_controller() -> None:
            while True:
                await cluster.simulate_rollouts()
                await asyncio.sleep(0.2)

        playing = asyncio.create_task(deployment_controller())
        try:
            yield Cluster(cluster)
        finally:
            playing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await playing
            await operator.stop()


async def measure(
    directory: Path,
    *,
    hostile: int,
    check_seconds: float = 4.9,
    victim_interval: float = 2.0,
    observe: float = 30.0,
    creates: int = 5,
    start_timeout: float = 120.0,
) -> Figures:
    """Run the scenario once (see the module docstring)."""
    (directory / "prometheus").mkdir(parents=True)
    with (
        running_prometheus(directory / "prometheus", []) as prometheus,
        labelproxy.LabelProxy(prometheus.url, directory / "proxy.log") as proxy,
        SlowHop(proxy.url, {HOSTILE}, check_seconds) as hop,
    ):
        async with operating(directory, hop.url) as cluster:
            checks = [
                {
                    "name": f"slow-{i}",
                    "query": f'sum(agent_requests_total{{service="{{{{service}}}}", pod="{i}"}})',
                    "max": 1,
                }
                for i in range(CHECKS)
            ]
            # the hostile ones first: their analyses are under way when the victim's start
            await asyncio.gather(
                *(
                    cluster.roll_out(body(f"h{i}", HOSTILE, interval="1s", checks=checks), start_timeout)
                    for i in range(hostile)
                )
            )
            await cluster.roll_out(body("v", VICTIM, interval=f"{victim_interval:g}s"), start_timeout)
            seen: list[float] = []
            create_times: list[float] = []

            async def watch_analyses() -> None:
                while True:
                    stamp = (cluster.canary(VICTIM, "v").get("lastAnalysis") or {}).get("time")
                    if stamp and (not seen or seconds(stamp) != seen[-1]):
                        seen.append(seconds(stamp))
                    await asyncio.sleep(0.02)

            watching = asyncio.create_task(watch_analyses())
            started = time.monotonic()
            try:
                for i in range(creates):
                    name = f"new-{i}"
                    began = time.monotonic()
                    await cluster.put(body(name, VICTIM))
                    await waiting.eventually(lambda name=name: cluster.children(VICTIM, name) == 2, start_timeout, 0.01)  # type: ignore[misc]
                    create_times.append(time.monotonic() - began)
                await asyncio.sleep(max(0.0, observe - (time.monotonic() - started)))
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            return Figures(hostile, check_seconds, victim_interval, seen, create_times, hop.held)

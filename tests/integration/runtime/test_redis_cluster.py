"""The runtime on a real Redis Cluster (3 primaries, 3 replicas on loopback), through redis-py's RedisCluster.

Every key of a service carries one hash tag, so all of them sit in one slot of one primary: the
multi-key scripts never meet CROSSSLOT, and killing *that* primary is the failover that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import Faults, LocalModelServer
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime.api import create_app
from agent_runtime.breaker import Policy
from agent_runtime.circuits import circuit_script, run_op
from agent_runtime.composition import build_ledger, build_worker, connect_redis
from agent_runtime.config import RuntimeConfig
from agent_runtime.providers import limits_of
from agent_runtime.queue import TaskQueue
from agent_runtime.ratelimit import RateLimiter
from tests.integration.runtime.conftest import AUTH, TOKEN
from tests.support.redis_topologies import RedisCluster, role, running_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as made:
        yield made


@pytest.fixture
async def cluster_client(cluster: RedisCluster) -> AsyncIterator[redis.asyncio.Redis]:
    client = connect_redis(cluster.url)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def api_on(cfg: RuntimeConfig, client: redis.asyncio.Redis) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(cfg, redis=client, registry=CollectorRegistry(), auth_token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        yield api


async def status_of(api: httpx.AsyncClient, task_id: str) -> str:
    response = await api.get(f"/v1/tasks/{task_id}", headers=AUTH)
    return str(response.json()["status"]) if response.status_code == 200 else f"http {response.status_code}"


async def test_every_key_path_works_on_a_cluster_and_stays_in_one_slot(
    cluster: RedisCluster, cluster_client: redis.asyncio.Redis, config: RuntimeConfig
) -> None:
    cfg = config.model_copy(update={"cache_enabled": True, "daily_budget_usd": 100.0, "namespace": "team-a"})
    keys = cfg.keys()
    queue = TaskQueue.from_config(cfg, cluster_client)
    async with api_on(cfg, cluster_client) as api:
        first = await api.post("/v1/tasks", json={"input": "What is 6*7?", "idempotency_key": "k1"}, headers=AUTH)
        assert first.status_code == 202, first.text
        again = await api.post("/v1/tasks", json={"input": "What is 6*7?", "idempotency_key": "k1"}, headers=AUTH)
        assert again.json()["task_id"] == first.json()["task_id"]  # idempotency on the cluster
        conflict = await api.post("/v1/tasks", json={"input": "What is 1+1?", "idempotency_key": "k1"}, headers=AUTH)
        assert conflict.status_code == 409
        cancelled = (await api.post("/v1/tasks", json={"input": "What is 2+2?"}, headers=AUTH)).json()["task_id"]
        assert (await api.delete(f"/v1/tasks/{cancelled}", headers=AUTH)).status_code == 200

        # A consumer that takes a task and dies: the worker reclaims it once idle (XAUTOCLAIM).
        await queue.ensure_group()
        orphan = await api.post("/v1/tasks", json={"input": "What is 3*3?", "priority": "high"}, headers=AUTH)
        taken = await queue.read("dead-consumer", 1)
        assert [e.task_id for e in taken] == [orphan.json()["task_id"]]
        # The same input again later: its model replies come from the cache.
        repeat = (await api.post("/v1/tasks", json={"input": "What is 6*7?"}, headers=AUTH)).json()["task_id"]

        async def orphan_idle() -> bool:
            pending = await cluster_client.xpending_range(taken[0].stream, queue.group, "-", "+", 10)
            return all(p["time_since_delivered"] >= cfg.claim_idle_seconds * 1000 for p in pending)

        await eventually(orphan_idle)
        registry = CollectorRegistry()
        parts = build_worker(cfg, redis_client=cluster_client, registry=registry, burst=True, concurrency=1)
        try:
            await parts.worker.run()
        finally:
            await parts.aclose()
        for task_id in (first.json()["task_id"], orphan.json()["task_id"], repeat):
            assert await status_of(api, task_id) == "succeeded"
        assert await status_of(api, cancelled) == "cancelled"
        labels = {"service": cfg.service, "track": "stable"}
        assert registry.get_sample_value("agent_cache_requests_total", {**labels, "result": "hit"}) == 2.0
        assert await queue.depth() == 0

    # The worker asked the provider's shared circuit before every call (nothing stored while all went
    # well); a failure stores it, on the service's slot too.
    reply = await run_op(circuit_script(cluster_client), keys.breaker("local"), "failure", policy=Policy())
    assert reply.failures == 1 and await cluster_client.exists(keys.breaker("local"))

    # The shared limits and budget keep working (scripts with Redis's TIME, INCRBYFLOAT).
    assert (await build_ledger(cfg, cluster_client).snapshot()).spent > 0
    limiter = RateLimiter(cluster_client, keys=keys, limits=limits_of(cfg))
    await limiter.acquire("local", 10)
    assert await limiter.backoff("local", 2.0) > 0
    assert await limiter.backoff_left("local") > 0

    # Every key the runtime wrote sits on the one primary that owns the service's slot.
    owner = cluster.primary_port_of(keys.probe())
    for node in cluster.nodes:
        client = node.client()
        try:
            if role(client) != "master":
                continue
            found = list(client.scan_iter(match="agent:*"))
        finally:
            client.close()
        if node.port == owner:
            assert found and all(k.startswith(f"agent:{keys.tag}:") for k in found)
        else:
            assert found == [], (node.port, found)


async def test_tasks_survive_the_kill_of_the_primary_that_holds_the_service(
    tmp_path: Path, config: RuntimeConfig, model_server: LocalModelServer
) -> None:
    model_server.faults = Faults(latency_seconds=0.15)  # tasks are mid-run when the primary dies
    cfg = config.model_copy(update={"claim_idle_seconds": 1.0, "max_deliveries": 10, "worker_concurrency": 4})
    with running_cluster(tmp_path / "cluster") as cluster:
        client = connect_redis(cluster.url)
        parts = build_worker(cfg, redis_client=client, registry=CollectorRegistry())
        running = asyncio.create_task(parts.worker.run())
        accepted: list[str] = []
        try:
            async with api_on(cfg, client) as api:

                async def submit(n: int) -> None:
                    text = f"Task {n}: compute {n}+1, then {n}*2."
                    response = await api.post("/v1/tasks", json={"input": text}, headers=AUTH)
                    if response.status_code == 202:  # a 503 during the failover promised nothing
                        accepted.append(response.json()["task_id"])

                for n in range(12):
                    await submit(n)

                async def some_running() -> bool:
                    return any([await status_of(api, t) == "running" for t in accepted])

                await eventually(some_running)
                victim = cluster.node_at(cluster.primary_port_of(cfg.keys().probe()))
                victim.kill()
                for n in range(12, 24):  # submissions during the failover: 503 or accepted
                    await submit(n)

                async def promoted() -> bool:
                    return cluster.primary_port_of(cfg.keys().probe()) != victim.port

                await eventually(promoted, timeout=30)
                for n in range(24, 30):
                    await submit(n)

                async def all_succeeded() -> list[str] | None:
                    statuses = [await status_of(api, t) for t in accepted]
                    return None if any(s != "succeeded" for s in statuses) else statuses

                await eventually(all_succeeded, timeout=60, interval=0.2)
                assert len(accepted) >= 18  # the test exercised both sides of the failover
        finally:
            parts.worker.stop()
            await asyncio.wait_for(running, 30)
            await parts.aclose()
            await client.aclose()

"""Redis stopped in the middle of a run, then started again (same port, same data directory).

Covers: while Redis is down the API answers 503 with a clear error on submit, status and cancel,
`/ready` is false with the reason and `/health` stays 200; the worker neither crashes nor loses its
place; once Redis is back `/ready` turns true, submissions work again, and every task whose
submission was acknowledged (202) completes, including those interrupted mid-run.
"""

from __future__ import annotations

import asyncio

import httpx
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.config import RuntimeConfig
from tests.integration.runtime.conftest import AUTH


async def wait_for(predicate: object, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_redis_outage_then_recovery(
    api: httpx.AsyncClient, config: RuntimeConfig, redis_server: LocalRedis, model_server: LocalModelServer
) -> None:
    model_server.faults.latency_seconds = 0.1
    worker_redis = connect_redis(redis_server.url)
    parts = build_worker(config, redis_client=worker_redis, registry=CollectorRegistry(), concurrency=2)
    running = asyncio.create_task(parts.worker.run())
    try:
        accepted = []
        for n in range(6):
            response = await api.post("/v1/tasks", json={"input": f"Compute {n}+1 and {n}*3."}, headers=AUTH)
            assert response.status_code == 202
            accepted.append(response.json()["task_id"])

        async def some_running() -> bool:
            views = [(await api.get(f"/v1/tasks/{t}", headers=AUTH)).json() for t in accepted]
            return any(v["status"] == "running" and v["progress"]["step"] >= 1 for v in views)

        await wait_for(some_running, 10)
        handled_before = parts.worker.processed
        redis_server.stop()

        down = await api.post("/v1/tasks", json={"input": "while down"}, headers=AUTH)
        assert down.status_code == 503
        assert down.json()["error"].startswith("task store unavailable: Redis is not answering (ConnectionError")
        assert down.headers["retry-after"] == "1"
        assert (await api.get(f"/v1/tasks/{accepted[0]}", headers=AUTH)).status_code == 503
        assert (await api.delete(f"/v1/tasks/{accepted[0]}", headers=AUTH)).status_code == 503
        ready = await api.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert "Redis is not answering" in ready.json()["reason"]
        assert (await api.get("/health")).status_code == 200
        assert (await api.get("/metrics")).status_code == 200
        # the deliveries in flight meet the outage and end (their entries stay pending), the worker lives on
        await eventually(lambda: parts.worker.processed >= handled_before + 1, timeout=10)
        assert not running.done()

        redis_server.start()

        async def is_ready() -> bool:
            return (await api.get("/ready")).status_code == 200

        await wait_for(is_ready, 10)
        for n in range(6, 8):
            response = await api.post("/v1/tasks", json={"input": f"Compute {n}+1."}, headers=AUTH)
            assert response.status_code == 202
            accepted.append(response.json()["task_id"])

        async def all_done() -> bool:
            statuses = [(await api.get(f"/v1/tasks/{t}", headers=AUTH)).json()["status"] for t in accepted]
            return all(s == "succeeded" for s in statuses)

        await wait_for(all_done, 30)
        for n, task_id in enumerate(accepted[:6]):
            view = (await api.get(f"/v1/tasks/{task_id}", headers=AUTH)).json()
            assert view["result"] == f"The answer: {n}+1 = {n + 1}; {n}*3 = {n * 3}."
        assert await parts.queue.depth() == 0
    finally:
        parts.worker.stop()
        await asyncio.wait_for(running, 10)
        await parts.aclose()
        await worker_redis.aclose()

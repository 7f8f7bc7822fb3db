"""Two services of the same name in two namespaces, sharing one real redis-server, share nothing.

Covers: every Redis key is `agent:{<namespace>/<service>}:…` (one hash tag, so one Cluster slot per
service); team B cannot read or cancel team A's task, its idempotency key makes its own task instead
of deduplicating onto A's, its workers run only its own tasks, its cached replies are not served to
A (A's identical task makes its own model calls) and its spend does not count against A's daily
budget. Both APIs use the same token on purpose: the isolation shown here comes from the keys alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from agent_runtime.api import create_app
from agent_runtime.composition import build_ledger
from agent_runtime.config import RuntimeConfig
from agent_runtime.queue import TaskQueue
from tests.integration.runtime.conftest import AUTH, TOKEN, MakeWorker

NAME = "support-agent"


@pytest.fixture
def tenants(config: RuntimeConfig) -> dict[str, RuntimeConfig]:
    shared = {"service": NAME, "cache_enabled": True, "daily_budget_usd": 1.0}
    return {ns: config.model_copy(update={**shared, "namespace": ns}) for ns in ("team-a", "team-b")}


@pytest.fixture
async def apis(
    tenants: dict[str, RuntimeConfig], redis_client: redis.asyncio.Redis
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    clients: dict[str, httpx.AsyncClient] = {}
    for ns, cfg in tenants.items():
        app = create_app(cfg, redis=redis_client, registry=CollectorRegistry(), auth_token=TOKEN)
        clients[ns] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{ns}")
    yield clients
    for client in clients.values():
        await client.aclose()


async def test_same_named_services_in_two_namespaces_share_nothing(
    apis: dict[str, httpx.AsyncClient],
    tenants: dict[str, RuntimeConfig],
    make_worker: MakeWorker,
    model_server: LocalModelServer,
    redis_client: redis.asyncio.Redis,
) -> None:
    a, b = apis["team-a"], apis["team-b"]
    request = {"input": "What is 6*7?", "idempotency_key": "order-1"}
    made_a = await a.post("/v1/tasks", json=request, headers=AUTH)
    assert made_a.status_code == 202
    task_a = made_a.json()["task_id"]

    # B cannot see or cancel A's task, and the same idempotency key makes B's own task.
    assert (await b.get(f"/v1/tasks/{task_a}", headers=AUTH)).status_code == 404
    assert (await b.delete(f"/v1/tasks/{task_a}", headers=AUTH)).status_code == 404
    made_b = await b.post("/v1/tasks", json=request, headers=AUTH)
    assert made_b.status_code == 202, made_b.text
    task_b = made_b.json()["task_id"]
    assert task_b != task_a and made_b.json()["duplicate"] is False
    assert await TaskQueue.from_config(tenants["team-a"], redis_client).depth() == 1
    assert await TaskQueue.from_config(tenants["team-b"], redis_client).depth() == 1

    # B's worker runs B's task only; A's stays queued.
    await make_worker(cfg=tenants["team-b"]).worker.run()
    assert (await b.get(f"/v1/tasks/{task_b}", headers=AUTH)).json()["status"] == "succeeded"
    assert (await a.get(f"/v1/tasks/{task_a}", headers=AUTH)).json()["status"] == "queued"
    assert {c.task_id for c in model_server.calls} == {task_b}

    # B's spend counts against B's day, not A's.
    spent = {ns: (await build_ledger(cfg, redis_client).snapshot()).spent for ns, cfg in tenants.items()}
    assert spent["team-b"] > 0 and spent["team-a"] == 0

    # A's identical task is not served from B's cache: A's worker makes its own model calls.
    await make_worker(cfg=tenants["team-a"]).worker.run()
    done_a = (await a.get(f"/v1/tasks/{task_a}", headers=AUTH)).json()
    assert done_a["status"] == "succeeded" and done_a["result"] == "The answer: 6*7 = 42."
    assert [c.step for c in model_server.calls if c.task_id == task_a] == [0, 1]
    assert done_a["usage"]["cost_usd"] > 0  # billed: a cache hit costs nothing

    # Every key lives under its service's hash tag, and all keys of a service share one slot.
    keys: list[str] = await redis_client.keys("*")
    tags = {ns: f"agent:{{{ns}/{NAME}}}:" for ns in tenants}
    assert keys and all(any(k.startswith(tag) for tag in tags.values()) for k in keys), keys
    for tag in tags.values():
        mine = [k for k in keys if k.startswith(tag)]
        assert {"tasks", "task", "idem", "cache", "budget", "ratelimit"} <= {k[len(tag) :].split(":")[0] for k in mine}
        assert len({key_slot(k.encode()) for k in mine}) == 1

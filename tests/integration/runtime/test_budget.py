"""Budgets: per task (the task stops, transcript kept) and daily, shared across replicas (real processes).

Covers: the pure helpers (UTC day, seconds to midnight, messages with the figure); a task whose
spend reaches `per_task_budget_usd` stops as failed with the figure, keeping its transcript, and the
tools of the step that crossed it are not run; two worker processes spend into one daily total (it
equals the tasks' summed cost), after which both API replicas answer new submissions 429
`budget exhausted until 00:00 UTC` with the figure and a retry-after up to midnight, counted in
`agent_budget_rejections_total`; `agent_cost_usd` counts the spend per service.
"""

from __future__ import annotations

import asyncio
import datetime

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from prometheus_client import CollectorRegistry

from agent_runtime import budget, constants
from agent_runtime.api import create_app
from agent_runtime.composition import connect_redis
from agent_runtime.config import RuntimeConfig
from agent_runtime.constants import ServiceKeys
from agent_runtime.pricing import PriceTable
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus
from tests.integration.runtime.conftest import AUTH, TOKEN, Fleet, MakeWorker

LABELS = {"service": "svc", "track": "stable"}


def test_pure_helpers() -> None:
    noon = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
    assert budget.day_of(noon) == "2026-03-01"
    assert budget.seconds_until_midnight(noon) == 12 * 3600
    assert budget.seconds_until_midnight(noon + 12 * 3600 - 0.2) == 1
    assert budget.daily_message(12.3456, 10) == (
        "budget exhausted until 00:00 UTC: spent $12.35 of the $10.00 daily budget (budget.dailyUSD)"
    )
    assert budget.usd(0.00123) == "$0.0012"
    assert budget.per_task_exceeded(1.0, 1.0) and not budget.per_task_exceeded(0.99, 1.0)
    assert not budget.per_task_exceeded(5.0, None)


async def test_per_task_budget_stops_the_task_keeping_its_transcript(
    make_worker: MakeWorker, model_server: LocalModelServer, config: RuntimeConfig
) -> None:
    registry = CollectorRegistry()
    parts = make_worker(cfg=config.model_copy(update={"per_task_budget_usd": 0.0008}), registry=registry)
    made = await parts.queue.submit("Compute 1+2, then 3+4, then 5+6.", max_steps=6)
    await asyncio.wait_for(parts.worker.run(), 20)
    record = await parts.queue.get(made.task_id)

    prices = PriceTable()
    costs = [prices.cost("claude-sonnet-5-5", c.input_tokens, c.output_tokens) for c in model_server.calls]
    crossed = next(n for n in range(1, len(costs) + 1) if sum(costs[:n]) >= 0.0008)
    assert len(costs) == crossed < 4  # stopped before the final answer, no further call
    assert record.status == TaskStatus.FAILED
    spent = sum(costs)
    assert record.error == (
        f"per-task budget exhausted: spent ${spent:.4f} of $0.0008 (budget.perTaskUSD) after {crossed} steps; "
        "the transcript so far is kept"
    )
    messages = record.checkpoint.messages
    assert record.checkpoint.step == crossed and record.checkpoint.usage.cost_usd == pytest.approx(spent)
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"][-1]["type"] == "tool_use"  # not run
    assert registry.get_sample_value("agent_budget_rejections_total", {**LABELS, "budget": "per_task"}) == 1
    assert registry.get_sample_value("agent_cost_usd_total", LABELS) == pytest.approx(spent)


async def test_daily_budget_shared_by_two_replicas(
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    model_server: LocalModelServer,
    fleet: Fleet,
) -> None:
    cfg = config.model_copy(update={"daily_budget_usd": 0.002, "worker_concurrency": 2})
    other = connect_redis(redis_server.url)  # the second API replica has its own connection
    registries = [CollectorRegistry(), CollectorRegistry()]
    apps = [
        create_app(cfg, redis=client, registry=reg, auth_token=TOKEN)
        for client, reg in zip((redis_client, other), registries, strict=True)
    ]
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") for app in apps]
    model_server.faults.latency_seconds = 0.1  # both workers get some of the tasks
    try:
        await fleet.start(cfg, burst=False, count=2)
        await fleet.started()
        ids = []
        for n in range(6):
            reply = await clients[n % 2].post(constants.TASKS_PATH, json={"input": f"Hello {n}"}, headers=AUTH)
            assert reply.status_code == 202
            ids.append(reply.json()["task_id"])
        while len(model_server.completed()) < len(ids):
            await asyncio.sleep(0.05)
        await fleet.stop()

        queue = TaskQueue.from_config(cfg, redis_client)
        records = [await queue.get(task_id) for task_id in ids]
        assert all(r.status == TaskStatus.SUCCEEDED for r in records)
        consumers = {await redis_client.hget(queue.task_key(t), "consumer") for t in ids}  # type: ignore[misc]
        assert len(consumers) == 2  # both worker replicas spent
        spent = sum(r.checkpoint.usage.cost_usd for r in records)
        daily = budget.DailyBudget(redis_client, keys=ServiceKeys("default", "svc"), limit_usd=0.002)
        assert await daily.spent() == pytest.approx(spent) and spent > 0.002

        for client, registry in zip(clients, registries, strict=True):
            reply = await client.post(constants.TASKS_PATH, json={"input": "One more"}, headers=AUTH)
            assert reply.status_code == 429
            assert reply.json() == {
                "error": f"budget exhausted until 00:00 UTC: spent ${spent:.4f} of the $0.0020 daily budget "
                "(budget.dailyUSD)"
            }
            assert 1 <= int(reply.headers["retry-after"]) <= 86_400
            assert registry.get_sample_value("agent_budget_rejections_total", {**LABELS, "budget": "daily"}) == 1
        assert await queue.depth() == 0  # nothing was enqueued
    finally:
        for client in clients:
            await client.aclose()
        await other.aclose()

"""Prompt caching (`spec.model.promptCaching`): the local model server bills cache writes and reads; real redis-server.

Covers: the price of cache writes and reads (the Messages API's multipliers of the input price, or
the spec's own); a task run with caching marks the system prompt and the tools as the cache prefix,
its first call writes the prefix and the later ones read it, each call priced at those rates — in
the task's calls, the budget's spend, the cost report and the token metrics — and the task costs
less than the same task without caching; the reservation still covers a call that writes the cache.
"""

from __future__ import annotations

import time

import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime import budget, costs, pricing
from agent_runtime.composition import build_ledger, build_reports, build_worker
from agent_runtime.config import PriceConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskRecord, TaskStatus

TASK = "Compute 1+2, then 3+4, then 5+6."
SONNET = pricing.PriceTable().price("claude-sonnet-5-5")


def test_cache_prices() -> None:
    assert pricing.cache_write_price(SONNET) == SONNET.input_per_mtok * 1.25
    assert pricing.cache_read_price(SONNET) == SONNET.input_per_mtok * 0.1
    own = PriceConfig(input_per_mtok=2, output_per_mtok=10, cache_write_per_mtok=3, cache_read_per_mtok=0.5)
    table = pricing.PriceTable({"m": own})
    assert table.cost("m", 1_000_000, 0, cache_write_tokens=1_000_000, cache_read_tokens=2_000_000) == 2 + 3 + 1


async def run(cfg: RuntimeConfig, redis_client: redis.asyncio.Redis) -> tuple[TaskRecord, CollectorRegistry]:
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit(TASK, metadata={"user": "u"}, max_steps=8)).task_id
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    return await queue.get(task_id), registry


async def test_a_cached_prefix_is_written_once_then_read_and_priced_so(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    started = time.time()
    plain, _ = await run(config.model_copy(update={"service": "plain"}), redis_client)
    cfg = config.model_copy(update={"prompt_caching": True, "daily_budget_usd": 1.0})
    record, registry = await run(cfg, redis_client)
    assert plain.status == record.status == TaskStatus.SUCCEEDED and record.result == plain.result

    calls = record.checkpoint.calls
    assert [c.cache_write_tokens > 0 for c in calls] == [True, False, False, False]
    assert all(c.cache_read_tokens == calls[0].cache_write_tokens for c in calls[1:])
    served = model_server.completed()[-len(calls) :]
    assert [(s.cache_write_tokens, s.cache_read_tokens) for s in served] == [
        (c.cache_write_tokens, c.cache_read_tokens) for c in calls
    ]
    for call in calls:
        cost = pricing.PriceTable().cost(
            "claude-sonnet-5-5", call.input_tokens, call.output_tokens,
            cache_write_tokens=call.cache_write_tokens, cache_read_tokens=call.cache_read_tokens,
        )  # fmt: skip
        assert call.cost_micros == budget.micros(cost)
    assert record.checkpoint.cost_micros() < plain.checkpoint.cost_micros()

    spent = (await build_ledger(cfg, redis_client).snapshot()).spent
    assert spent == record.checkpoint.cost_micros()
    period = costs.parse_range(costs.rfc3339_at(started - 60), None, now=time.time(), retention_days=35)
    report = await build_reports(cfg, redis_client).report(period, top=1)
    row = report["byModel"]["claude-sonnet-5-5"]
    assert round(report["totalCostUSD"] * 1e6) == spent
    assert row["cacheReadTokens"] == sum(c.cache_read_tokens for c in calls)
    assert row["cacheWriteTokens"] == calls[0].cache_write_tokens
    labels = {"service": "svc", "track": "stable", "model": "claude-sonnet-5-5"}
    read = registry.get_sample_value("agent_model_tokens_total", {**labels, "kind": "cache_read"})
    assert read == sum(c.cache_read_tokens for c in calls)


def test_a_reservation_covers_a_cache_write() -> None:
    """With caching every input token may be written to the cache: the worst case prices input at the write rate."""
    reserving = PriceConfig(input_per_mtok=pricing.cache_write_price(SONNET), output_per_mtok=SONNET.output_per_mtok)
    cost = pricing.PriceTable().cost("claude-sonnet-5-5", 0, 100, cache_write_tokens=1000)
    assert budget.micros(cost) <= budget.worst_case([reserving], 1000, 100)

"""The response cache (real Redis, real model server): exact match, no provider call on a hit, errors never cached.

Covers: the digest changes with model, system, messages, tools and parameters and with nothing
else (key order does not matter); a repeated task is answered from the cache with zero provider
calls, the same result and no charge, and hits/misses are counted; a provider error is not cached
(the next identical request calls the provider again); entries expire after the TTL; with the cache
disabled nothing is stored.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime import errors
from agent_runtime.cache import request_digest
from agent_runtime.config import RuntimeConfig
from agent_runtime.metrics import Metrics
from agent_runtime.providers import build_providers
from agent_runtime.tasks import TaskStatus
from tests.integration.runtime.conftest import MakeWorker

LABELS = {"service": "svc", "track": "stable"}
BASE = {
    "model": "m",
    "system": "s",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    "parameters": {"max_tokens": 10},
}


def test_digest_is_exact() -> None:
    digest = request_digest(**BASE)  # type: ignore[arg-type]
    reordered = {**BASE, "tools": [{"input_schema": {"type": "object"}, "name": "t"}]}
    assert request_digest(**reordered) == digest  # type: ignore[arg-type]
    changes = {
        "model": "m2",
        "system": "s2",
        "messages": [{"role": "user", "content": "hi!"}],
        "tools": [],
        "parameters": {"max_tokens": 11},
    }
    for field, value in changes.items():
        assert request_digest(**{**BASE, field: value}) != digest  # type: ignore[arg-type]


async def test_repeated_task_is_served_from_the_cache(
    make_worker: MakeWorker, model_server: LocalModelServer, config: RuntimeConfig
) -> None:
    registry = CollectorRegistry()
    parts = make_worker(cfg=config.model_copy(update={"cache_enabled": True}), registry=registry, concurrency=1)
    first = await parts.queue.submit("What is 6*7?", max_steps=6)
    await asyncio.wait_for(parts.worker.run(), 20)
    calls = len(model_server.calls)
    assert calls == 2
    second = await parts.queue.submit("What is 6*7?", max_steps=6)
    await asyncio.wait_for(parts.worker.run(), 20)
    assert len(model_server.calls) == calls  # no provider call at all
    one, two = await parts.queue.get(first.task_id), await parts.queue.get(second.task_id)
    assert two.status == TaskStatus.SUCCEEDED and two.result == one.result == "The answer: 6*7 = 42."
    assert two.checkpoint.usage.cost_usd == 0 and one.checkpoint.usage.cost_usd > 0
    assert registry.get_sample_value("agent_cache_requests_total", {**LABELS, "result": "miss"}) == 2
    assert registry.get_sample_value("agent_cache_requests_total", {**LABELS, "result": "hit"}) == 2


async def test_errors_are_not_cached_and_entries_expire(
    model_server: LocalModelServer, config: RuntimeConfig, redis_client: redis.asyncio.Redis
) -> None:
    cfg = config.model_copy(update={"cache_enabled": True, "cache_ttl_seconds": 1})
    providers = build_providers(
        cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"), redis_client=redis_client
    )
    request = {"system": "s", "messages": [{"role": "user", "content": "Hi"}], "tools": [], "max_tokens": 20}
    model_server.faults.script = ["500"]
    try:
        with pytest.raises(errors.ProviderUnavailable, match="HTTP 500"):
            await providers.complete(**request, task_id="t")  # type: ignore[arg-type]
        assert await redis_client.keys("agent:{default/svc}:cache:*") == []  # the error was not stored
        fresh = await providers.complete(**request, task_id="t")  # type: ignore[arg-type]
        cached = await providers.complete(**request, task_id="t")  # type: ignore[arg-type]
        assert not fresh.cached and cached.cached and cached.content == fresh.content
        assert len(model_server.calls) == 2
        (key,) = await redis_client.keys("agent:{default/svc}:cache:*")
        assert 0 < await redis_client.pttl(key) <= 1000

        async def expired() -> bool:  # the entry's TTL ran out: Redis dropped it
            return not await redis_client.exists(key)

        await eventually(expired, timeout=5)
        again = await providers.complete(**request, task_id="t")  # type: ignore[arg-type]
        assert not again.cached and len(model_server.calls) == 3
    finally:
        await providers.aclose()

    disabled = build_providers(
        config, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"), redis_client=redis_client
    )
    await redis_client.flushdb()
    try:
        await disabled.complete(**request, task_id="t")  # type: ignore[arg-type]
    finally:
        await disabled.aclose()
    assert await redis_client.keys("agent:{default/svc}:cache:*") == []

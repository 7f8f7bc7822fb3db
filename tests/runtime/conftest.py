"""Fixtures of the runtime tests: a real redis-server, the local model server, config, and the API client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

from agent_runtime.api import create_app
from agent_runtime.composition import WorkerParts, build_worker, connect_redis
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.localmodel import LocalModelServer
from agent_runtime.localredis import LocalRedis
from tests.support.redis_server import running_redis

TOKEN = "test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MakeWorker = Callable[..., WorkerParts]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    data = tmp_path / "redis"
    data.mkdir()
    with running_redis(data) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: LocalRedis) -> AsyncIterator[redis.asyncio.Redis]:
    client = connect_redis(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def model_server() -> AsyncIterator[LocalModelServer]:
    async with LocalModelServer() as server:
        yield server


@pytest.fixture
def config(model_server: LocalModelServer) -> RuntimeConfig:
    return RuntimeConfig(
        service="svc",
        providers=[ProviderConfig(name="local", model="claude-sonnet-5-5", base_url=model_server.url)],
        max_steps_per_task=6,
        claim_idle_seconds=0.5,
        max_deliveries=3,
        provider_max_retries=0,
        provider_timeout_seconds=10,
        requests_per_minute=600_000,  # limits are exercised in test_ratelimit; elsewhere they stay out of the way
        tokens_per_minute=1_000_000_000,
        retry_base_seconds=0.05,
        max_input_chars=2000,
        max_body_bytes=8192,
        worker_concurrency=4,
        shutdown_grace_seconds=5,
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def api(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, registry: CollectorRegistry
) -> AsyncIterator[httpx.AsyncClient]:
    """The API app in-process over ASGI, with its own registry (workers get theirs)."""
    app = create_app(config, redis=redis_client, registry=registry, auth_token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


@pytest.fixture
async def make_worker(config: RuntimeConfig, redis_client: redis.asyncio.Redis) -> AsyncIterator[MakeWorker]:
    """Build burst workers (each with a fresh registry); closes their provider clients afterwards."""
    made: list[WorkerParts] = []

    def make(
        *, cfg: RuntimeConfig | None = None, registry: CollectorRegistry | None = None, concurrency: int | None = None
    ) -> WorkerParts:
        parts = build_worker(
            cfg or config,
            redis_client=redis_client,
            registry=registry or CollectorRegistry(),
            burst=True,
            concurrency=concurrency,
        )
        made.append(parts)
        return parts

    yield make
    for parts in made:
        await parts.aclose()

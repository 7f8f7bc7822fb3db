"""Fixtures of the runtime tests: a real redis-server, the local model server, config, the API client, workers.

`make_worker` builds in-process burst workers; `fleet` runs real worker processes (forked, see
`agentops_dev.runtimeprocesses`) that share the test's Redis.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config
from prometheus_client import CollectorRegistry

from agent_runtime.api import create_app
from agent_runtime.composition import WorkerParts, build_worker, connect_redis
from agent_runtime.config import ProviderConfig, RuntimeConfig
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


class Fleet:
    """Worker processes on the test's Redis (burst or long-running); all killed at the end of the test."""

    def __init__(self, directory: Path, redis_server: LocalRedis) -> None:
        self.directory = directory
        self.redis_server = redis_server
        self.processes: list[ForkedRuntime] = []
        self.metrics_urls: list[str] = []  # each process's /metrics, when started with `metrics=True`

    async def start(self, cfg: RuntimeConfig, *, burst: bool, count: int = 4, metrics: bool = False) -> None:
        path = write_config(self.directory, cfg.model_dump(mode="json"))
        for _ in range(count):
            port = free_port() if metrics else 0
            args = ["worker", "--host", "127.0.0.1", "--metrics-port", str(port), *(["--burst"] if burst else [])]
            if metrics:
                self.metrics_urls.append(f"http://127.0.0.1:{port}/metrics")
            process = ForkedRuntime(args, config_path=path, redis_url=self.redis_server.url)
            await process.start()
            self.processes.append(process)

    async def run(self, cfg: RuntimeConfig, count: int = 4) -> None:
        """Start `count` burst workers that drain the queue, and wait for all of them to exit 0."""
        await self.start(cfg, burst=True, count=count)
        await self.wait()

    async def started(self) -> None:
        """Wait until every process is up and reading (its `worker_started` log line)."""
        while not all("worker_started" in p.logs() for p in self.processes):
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for process in self.processes:
            process.signal(signal.SIGTERM)
        await self.wait()

    async def wait(self) -> None:
        for process in self.processes:
            assert await process.wait(60) == 0, process.logs()[-2000:]


@pytest.fixture
async def fleet(tmp_path: Path, redis_server: LocalRedis) -> AsyncIterator[Fleet]:
    made = Fleet(tmp_path, redis_server)
    yield made
    for process in made.processes:
        await process.kill()

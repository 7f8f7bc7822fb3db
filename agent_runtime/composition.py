"""The composition root: builds the worker (queue, providers, tools, agent, metrics) from config and clients.

The CLI, the demo and the tests all assemble the runtime here, so they run the same wiring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio
from prometheus_client import CollectorRegistry

from agent_runtime import redisconn
from agent_runtime.agent import Agent
from agent_runtime.budget import DailyBudget
from agent_runtime.config import RuntimeConfig
from agent_runtime.metrics import Metrics
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import ProviderSet, build_providers
from agent_runtime.queue import TaskQueue
from agent_runtime.redisconn import RedisSettings
from agent_runtime.tools import load_registry
from agent_runtime.worker import Worker

__all__ = ["WorkerParts", "build_worker", "connect_redis"]


def connect_redis(
    url: str, settings: RedisSettings | None = None, environ: Mapping[str, str] | None = None
) -> redis.asyncio.Redis:
    """The runtime's Redis client (standalone, Cluster or Sentinel; see `redisconn.connect`)."""
    return redisconn.connect(url, settings, environ)


@dataclass
class WorkerParts:
    worker: Worker
    queue: TaskQueue
    metrics: Metrics
    providers: ProviderSet

    async def aclose(self) -> None:
        await self.providers.aclose()


def build_worker(
    config: RuntimeConfig,
    *,
    redis_client: redis.asyncio.Redis,
    registry: CollectorRegistry,
    environ: Mapping[str, str] | None = None,
    burst: bool = False,
    concurrency: int | None = None,
    consumer: str | None = None,
) -> WorkerParts:
    """Wire one worker; the caller runs `parts.worker.run()` and then `await parts.aclose()`."""
    metrics = Metrics(registry, service=config.service, track=config.track.value, known_intents=config.known_intents)
    providers = build_providers(config, metrics=metrics, environ=environ, redis_client=redis_client)
    agent = Agent(
        providers=providers,
        tools=load_registry(config.tools),
        prices=PriceTable(config.prices),
        metrics=metrics,
        system_prompt=config.system_prompt,
        max_output_tokens=config.max_output_tokens,
        degraded_tools=config.degraded_tools,
        per_task_budget_usd=config.per_task_budget_usd,
        daily_budget=DailyBudget(redis_client, keys=config.keys(), limit_usd=config.daily_budget_usd),
    )
    queue = TaskQueue.from_config(config, redis_client)
    worker = Worker(
        queue=queue,
        runner=agent,
        metrics=metrics,
        concurrency=concurrency or config.worker_concurrency,
        task_timeout_seconds=config.task_timeout_seconds,
        shutdown_grace_seconds=config.shutdown_grace_seconds,
        burst=burst,
        consumer=consumer,
    )
    return WorkerParts(worker=worker, queue=queue, metrics=metrics, providers=providers)

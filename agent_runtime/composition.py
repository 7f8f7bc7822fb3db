"""The composition root: builds the worker (queue, providers, tools, agent, metrics) from config and clients.

The CLI, the demo and the tests all assemble the runtime here, so they run the same wiring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis.asyncio
from prometheus_client import CollectorRegistry

from agent_runtime import breaker, budget, redisconn
from agent_runtime.agent import Agent
from agent_runtime.budget import BudgetLedger, BudgetWatch
from agent_runtime.config import RuntimeConfig
from agent_runtime.costs import CostReports
from agent_runtime.mcptools import McpServer, ToolServers
from agent_runtime.metrics import Metrics
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import ProviderSet, build_providers
from agent_runtime.queue import TaskQueue
from agent_runtime.redisconn import RedisSettings
from agent_runtime.tools import load_registry
from agent_runtime.worker import Worker

__all__ = ["WorkerParts", "build_ledger", "build_reports", "build_tool_servers", "build_worker", "connect_redis"]


def connect_redis(
    url: str, settings: RedisSettings | None = None, environ: Mapping[str, str] | None = None
) -> redis.asyncio.Redis:
    """The runtime's Redis client (standalone, Cluster or Sentinel; see `redisconn.connect`)."""
    return redisconn.connect(url, settings, environ)


def build_ledger(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, *, clock: Callable[[], float] = time.time
) -> BudgetLedger:
    """The service's budgets in Redis, as the API and the workers share them."""
    return BudgetLedger(
        redis_client,
        keys=config.keys(),
        daily_limit_usd=config.daily_budget_usd,
        per_task_limit_usd=config.per_task_budget_usd,
        # Longer than a task may run (the worker cancels it then, releasing its reservation), with
        # room for that release's own round trip: a live worker's reservation never expires under it.
        hold_ttl_seconds=config.task_timeout_seconds + 10.0,
        task_ttl_seconds=config.task_ttl_seconds,
        report_retention_days=config.report_retention_days,
        report_max_users=config.report_max_users,
        clock=clock,
    )


def build_reports(config: RuntimeConfig, redis_client: redis.asyncio.Redis) -> CostReports:
    """The service's cost reports in Redis (read by the API, ranked into by the workers)."""
    return CostReports(redis_client, keys=config.keys(), retention_days=config.report_retention_days)


@dataclass
class WorkerParts:
    worker: Worker
    queue: TaskQueue
    metrics: Metrics
    providers: ProviderSet
    tool_servers: ToolServers

    async def aclose(self) -> None:
        await self.tool_servers.aclose()
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
    clock: Callable[[], float] = time.time,
) -> WorkerParts:
    """Wire one worker; the caller runs `parts.worker.run()` and then `await parts.aclose()`."""
    metrics = Metrics(registry, service=config.service, track=config.track.value, known_intents=config.known_intents)
    concurrency = concurrency or config.worker_concurrency
    providers = build_providers(
        config, metrics=metrics, environ=environ, redis_client=redis_client, concurrency=concurrency
    )
    prices = PriceTable(config.prices)
    ledger = build_ledger(config, redis_client, clock=clock)
    tool_servers = build_tool_servers(config, metrics=metrics, environ=environ)
    tools = load_registry(
        config.tools,
        builtin=config.builtin_tools,
        python=config.python_tools,
        sources=tool_servers.servers,
        metrics=metrics,
    )
    agent = Agent(
        providers=providers,
        tools=tools,
        prices=prices,
        metrics=metrics,
        system_prompt=config.system_prompt,
        max_output_tokens=config.max_output_tokens,
        degraded_tools=config.degraded_tools,
        per_task_budget_usd=config.per_task_budget_usd,
        ledger=ledger,
        on_exhausted=config.budget_on_exhausted,
        min_output_tokens=config.budget_min_output_tokens,
        budget_wait_seconds=config.budget_wait_seconds,
    )
    queue = TaskQueue.from_config(config, redis_client)
    watch = BudgetWatch(
        ledger,
        queue,
        metrics,
        smallest_call=budget.smallest_call(agent.call_prices, agent.min_output_tokens),
        interval_seconds=config.budget_check_seconds,
        most=concurrency,
    )
    agent.on_settled = watch.money_back
    worker = Worker(
        queue=queue,
        runner=agent,
        metrics=metrics,
        concurrency=concurrency,
        task_timeout_seconds=config.task_timeout_seconds,
        shutdown_grace_seconds=config.shutdown_grace_seconds,
        burst=burst,
        consumer=consumer,
        budget=watch,
        circuits=providers,
        reports=build_reports(config, redis_client),
        tool_servers=tool_servers,
    )
    return WorkerParts(worker=worker, queue=queue, metrics=metrics, providers=providers, tool_servers=tool_servers)


def build_tool_servers(
    config: RuntimeConfig, *, metrics: Metrics | None = None, environ: Mapping[str, str] | None = None
) -> ToolServers:
    """The service's MCP servers (not connected yet: `Worker.run` starts them)."""
    policy = breaker.Policy(
        failure_threshold=config.breaker_failure_threshold, cooldown_seconds=config.breaker_cooldown_seconds
    )
    return ToolServers(
        [
            McpServer(
                server,
                metrics=metrics,
                environ=environ,
                reconnect_max_seconds=config.tool_reconnect_seconds,
                breaker_policy=policy,
            )
            for server in config.mcp_servers
        ]
    )

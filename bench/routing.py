"""Routing by complexity against three local models: calls per model as routed, and cost against "all on the strongest".

Usage (from the repository root): `PYTHONPATH=. python bench/routing.py [--tasks 60]`.

One redis-server (no persistence); three local model servers in this process play claude-haiku-4-5
(`cheap`), claude-sonnet-5-5 (`mid`) and claude-opus-4-6 (`strong`), priced at their list prices
(`agent_runtime/pricing.py`). `--tasks` tasks, a third each simple (one expression to compute),
medium (two) and complex (three); every other task carries its `metadata.complexity`, the rest are
labelled by the classifier (`cheap`). A burst worker (concurrency 8) runs them three times on
fresh keys:

1. routed: rules simple → cheap, medium → mid, complex → strong;
2. everything on the strongest model (no routing, `strong` only);
3. routed, with $0.90 of a $1.50 daily budget left under a `budgetFallback` of $1.00.

Each run prints the calls every server answered, the calls by route, and the cost (the sum of the
tasks' settled micro-dollars, equal to the day's budget spend).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
from collections.abc import Mapping

from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from prometheus_client import CollectorRegistry

from agent_runtime import budget
from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.config import ProviderConfig, RouteRule, RoutingConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue

MODELS = {"cheap": "claude-haiku-4-5", "mid": "claude-sonnet-5-5", "strong": "claude-opus-4-6"}
ROUTES = RoutingConfig(
    rules=[
        RouteRule(name="simple", complexity="simple", provider="cheap"),
        RouteRule(name="medium", complexity="medium", provider="mid"),
        RouteRule(name="complex", complexity="complex", provider="strong"),
    ],
    default="mid",
    classifier="cheap",
    fallback_below_usd=1.0,
    fallback_provider="cheap",
)
INPUTS = {
    "simple": "What is {n}*7?",
    "medium": "Compute {n}+2, then 3+4.",
    "complex": "Compute {n}+2, then 3+4, then 5+6.",
}


async def run_once(
    label: str,
    client: object,
    servers: Mapping[str, LocalModelServer],
    cfg: RuntimeConfig,
    *,
    tasks: int,
    spent_before: int = 0,
) -> None:
    for server in servers.values():
        server.calls.clear()
    redis_client = client  # one Redis; each run its own service name, so its own keys
    queue = TaskQueue.from_config(cfg, redis_client)  # type: ignore[arg-type]
    if spent_before:
        await redis_client.set(cfg.keys().budget_spent(budget.day_of(time.time())), spent_before)  # type: ignore[attr-defined]
    ids = []
    for n in range(tasks):
        kind = ("simple", "medium", "complex")[n % 3]
        metadata = {"complexity": kind} if n % 2 else {}
        ids.append((await queue.submit(INPUTS[kind].format(n=n), metadata=metadata, max_steps=8)).task_id)
    parts = build_worker(cfg, redis_client=redis_client, registry=CollectorRegistry(), burst=True, concurrency=8)  # type: ignore[arg-type]
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    records = [await queue.get(task_id) for task_id in ids]
    routes = collections.Counter(call.route for r in records for call in r.checkpoint.calls)
    cost = sum(r.checkpoint.cost_micros() for r in records)
    ok = sum(r.status == "succeeded" for r in records)
    answered = {name: len(server.completed()) for name, server in servers.items()}
    print(f"{label}: {ok}/{tasks} succeeded, cost ${cost / 1e6:.6f}")
    print(f"  calls answered per server: {answered}")
    print(f"  calls per route: {dict(sorted(routes.items()))}")


async def run(args: argparse.Namespace) -> None:
    server = LocalRedis(durable=False)
    server.start()
    client = connect_redis(server.url)
    try:
        async with LocalModelServer() as cheap, LocalModelServer() as mid, LocalModelServer() as strong:
            servers = {"cheap": cheap, "mid": mid, "strong": strong}
            providers = [ProviderConfig(name=n, model=MODELS[n], base_url=s.url) for n, s in servers.items()]
            base = RuntimeConfig(
                providers=providers,
                provider_max_retries=0,
                requests_per_minute=600_000,
                tokens_per_minute=1_000_000_000,
                per_task_budget_usd=None,
            )
            routed = base.model_copy(update={"service": "routed", "routing": ROUTES})
            await run_once("routed", client, servers, routed, tasks=args.tasks)
            strongest = base.model_copy(update={"service": "strongest", "providers": providers[2:]})
            await run_once("all on the strongest model", client, servers, strongest, tasks=args.tasks)
            fallback = routed.model_copy(update={"service": "fallback", "daily_budget_usd": 1.5})
            label = "routed, $0.90 of $1.50 left (fallback under $1.00)"
            await run_once(label, client, servers, fallback, tasks=args.tasks, spent_before=600_000)
    finally:
        await client.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Budgets that are reached: how much of a daily budget a burst spends before the first task is held, and at the end.

Usage (from the repository root): `PYTHONPATH=. python bench/budget_reach.py [--tasks 200] [--workers 4]
[--concurrency 4] [--budget 1.0] [--max-output-tokens 8192] [--latency 0.05]`.

One redis-server (no persistence), the local model server in this process (each reply delayed
`--latency`, so calls overlap), and `--workers` long-running worker processes (`agent-runtime
worker`, forked) with `--concurrency` slots each, sharing a `--budget` USD daily budget
(`onExhausted: hold`, held tasks looked at every second). `--tasks` two-step tasks (`--padding`
characters of context, then "What is n*7?": a calculator call, then the answer) are queued at once,
then the workers start. A real call costs about $0.003 at claude-sonnet-5-5's list price; its worst
case as the runtime reserves it (the input bound plus all of `--max-output-tokens`) about $0.09.

Every 10 ms the bench reads the day's figures from Redis (the ledger's snapshot). It reports:
the spend when the first task was held (and the share of the budget), the spend at the end (once
nothing runs, nothing is reserved, the queue is empty and that lasts 3 s), the spend the model
server's own usage counts at list price (billed), tasks succeeded / held / failed, and any overspend
(billed over the budget).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config

from agent_runtime.budget import MICROS, BudgetLedger
from agent_runtime.composition import build_ledger, connect_redis
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.pricing import PriceTable
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus

MODEL = "claude-sonnet-5-5"
SETTLED_SECONDS = 3.0


def runtime_config(model: LocalModelServer, args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(
        service="bench",
        providers=[ProviderConfig(name="local", model=MODEL, base_url=model.url)],
        daily_budget_usd=args.budget,
        per_task_budget_usd=None,
        max_output_tokens=args.max_output_tokens,
        budget_check_seconds=1.0,
        worker_concurrency=args.concurrency,
        provider_max_retries=0,
        provider_timeout_seconds=30,
        requests_per_minute=600_000,  # the limiter out of the way
        tokens_per_minute=1_000_000_000,
        claim_idle_seconds=30,
        shutdown_grace_seconds=5,
    )


async def run(args: argparse.Namespace) -> None:
    server = LocalRedis(durable=False)
    server.start()
    client = connect_redis(server.url)
    processes: list[ForkedRuntime] = []
    try:
        async with LocalModelServer() as model:
            model.faults.latency_seconds = args.latency
            cfg = runtime_config(model, args)
            queue = TaskQueue.from_config(cfg, client)
            ledger = build_ledger(cfg, client)
            context = ("Background notes for the question below. " * (args.padding // 42 + 1))[: args.padding]
            ids = [(await queue.submit(f"{context}\nWhat is {n}*7?", max_steps=6)).task_id for n in range(args.tasks)]
            with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
                path = write_config(Path(tmp), cfg.model_dump(mode="json"))
                for _ in range(args.workers):
                    process = ForkedRuntime(["worker", "--metrics-port", "0"], config_path=path, redis_url=server.url)
                    await process.start()
                    processes.append(process)
                started = time.monotonic()
                first_hold: int | None = None
                quiet_since: float | None = None
                while True:
                    snap = await ledger.snapshot()
                    if first_hold is None and snap.held_tasks > 0:
                        first_hold = snap.spent
                    busy = snap.reserved > 0 or await queue.depth() > 0 or bool(model.inflight())
                    if busy:
                        quiet_since = None
                    elif quiet_since is None:
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since >= SETTLED_SECONDS:
                        break
                    await asyncio.sleep(0.01)
                elapsed = time.monotonic() - started
                for process in processes:
                    process.signal(signal.SIGTERM)
                for process in processes:
                    await process.wait(60)
            await report(args, model, queue=queue, ledger=ledger, ids=ids, first_hold=first_hold, elapsed=elapsed)
    finally:
        for process in processes:
            await process.kill()
        await client.aclose()
        server.stop()


async def report(
    args: argparse.Namespace,
    model: LocalModelServer,
    *,
    queue: TaskQueue,
    ledger: BudgetLedger,
    ids: list[str],
    first_hold: int | None,
    elapsed: float,
) -> None:
    records = [await queue.get(task_id) for task_id in ids]
    final = await ledger.snapshot()
    prices = PriceTable()
    calls = model.completed()
    billed = sum(prices.cost(MODEL, c.input_tokens, c.output_tokens) for c in calls)
    statuses = {status: sum(r.status == status for r in records) for status in TaskStatus}
    budget = args.budget * MICROS
    hold = "never" if first_hold is None else f"${first_hold / MICROS:.6f} ({first_hold / budget:.1%})"
    print(
        f"tasks {args.tasks}, workers {args.workers} x {args.concurrency}, budget ${args.budget:.2f},"
        f" max_output_tokens {args.max_output_tokens}, latency {args.latency:g} s, padding {args.padding}"
    )
    print(f"  spend at the first hold: {hold}")
    print(f"  spend at the end: ${final.spent / MICROS:.6f} ({final.spent / budget:.1%}), after {elapsed:.1f} s")
    print(f"  billed (model server usage at list price): ${billed:.6f} over {len(calls)} calls")
    recorded = sum(r.checkpoint.usage.cost_usd for r in records)
    steps = sum(r.checkpoint.step for r in records)
    print(f"  the tasks' own usage at list price: ${recorded:.6f} over {steps} calls")
    print(f"  overspend: ${max(billed - args.budget, 0):.6f}")
    print(
        f"  tasks: {statuses[TaskStatus.SUCCEEDED]} succeeded, {final.held_tasks} held,"
        f" {statuses[TaskStatus.FAILED]} failed, {statuses[TaskStatus.QUEUED]} queued"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--max-output-tokens", type=int, default=8192)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--padding", type=int, default=4000, help="characters of context before each question")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Circuit breakers per process vs shared by the fleet: what a dead provider costs, side by side in one run.

Usage (from the repository root): `PYTHONPATH=. python bench/breakers.py [--workers 4] [--tasks 40]
[--concurrency 1,2,4,8] [--threshold 3] [--trials 3] [--seconds 12] [--cooldown 2] [--calls 3000]`.

One redis-server (no persistence), two local model servers in this process: a primary answering
every request with HTTP 500 and a healthy backup (strategy `failover`). Real worker processes
(`agent-runtime worker`, forked from a preloaded fork server) share the Redis. Each figure is taken
with the runtime config's `breaker_scope` `process` (each process its own circuit: the runtime
before issue 14) and `service` (one circuit per provider in Redis for the whole fleet), alternated,
in one run.

1. Dead provider: W workers started and reading, then T single-step tasks submitted; every task
   must succeed (on the backup). Counted at the primary's own request log: every HTTP request it
   received (the SDK's retries are off, so each one is a call the breakers saw). Threshold
   `--threshold`, cool-down long enough that no probe falls inside the run. Per concurrency C:
   min / median / max over `--trials` runs, and the bound of the shared circuit,
   `threshold - 1 + W x C` (calls in flight when the count reaches the threshold still go out).
2. Probes: the same fleet (concurrency 4) fed 20 tasks a second for `--seconds` with the primary
   dead and cool-down `--cooldown`: requests to the primary after its first `2 x cooldown` (the
   opening burst is over by then), per cool-down.
3. Cost: `--calls` sequential ask + success pairs on a closed shared circuit (what every model
   call pays), and asks on an open one (a denial) → µs each, and `EVALSHA` per call from Redis's
   `INFO commandstats`; beside them the rate limiter's `acquire`, measured the same way at the same
   moment (a busy machine's absolute figures move from run to run; rows of one run compare).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config

from agent_runtime.breaker import Decision, Outcome, Policy
from agent_runtime.circuits import SharedCircuit
from agent_runtime.composition import connect_redis
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.constants import ServiceKeys
from agent_runtime.queue import TaskQueue
from agent_runtime.ratelimit import Limit, RateLimiter
from agent_runtime.tasks import TaskStatus

SCOPES = ("process", "service")
_RUNS = itertools.count(1)


def runtime_config(primary: LocalModelServer, backup: LocalModelServer, **update: object) -> RuntimeConfig:
    return RuntimeConfig(
        service="bench",
        providers=[
            ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url=primary.url),
            ProviderConfig(name="backup", model="claude-haiku-4-5", base_url=backup.url),
        ],
        provider_max_retries=0,
        provider_timeout_seconds=10,
        requests_per_minute=600_000,  # the limiter out of the way
        tokens_per_minute=1_000_000_000,
        claim_idle_seconds=30,  # no reclaim (and repeated call) on a busy machine
        shutdown_grace_seconds=5,
    ).model_copy(update=update)


@contextlib.asynccontextmanager
async def fleet(directory: Path, cfg: RuntimeConfig, redis_url: str, workers: int) -> AsyncIterator[None]:
    """`workers` long-running worker processes, all reading before the block starts; stopped after it."""
    directory = directory / f"run-{next(_RUNS)}"  # its own logs: a log file of an earlier run is no sign of life
    directory.mkdir()
    path = write_config(directory, cfg.model_dump(mode="json"))
    processes = [ForkedRuntime(["worker", "--metrics-port", "0"], config_path=path, redis_url=redis_url)
                 for _ in range(workers)]  # fmt: skip
    for process in processes:
        await process.start()
    try:
        while not all("worker_started" in p.logs() for p in processes):
            await asyncio.sleep(0.05)
        yield
    finally:
        for process in processes:
            process.signal(signal.SIGTERM)
        for process in processes:
            await process.wait(60)
            await process.kill()


async def dead_provider_run(
    directory: Path, client: redis.asyncio.Redis, redis_url: str, *, scope: str, workers: int, tasks: int,
    concurrency: int, threshold: int,
) -> tuple[int, float]:  # fmt: skip
    """Requests that reached the dead primary, and seconds to finish the tasks."""
    await client.flushdb()
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        cfg = runtime_config(
            primary, backup, breaker_scope=scope, breaker_failure_threshold=threshold,
            breaker_cooldown_seconds=600, worker_concurrency=concurrency,
        )  # fmt: skip
        queue = TaskQueue.from_config(cfg, client)
        await queue.ensure_group()
        async with fleet(directory, cfg, redis_url, workers):
            started = time.perf_counter()
            ids = [(await queue.submit(f"Hi {n}", max_steps=2)).task_id for n in range(tasks)]
            while len(backup.completed()) < tasks:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
        statuses = {(await queue.get(task_id)).status for task_id in ids}
        assert statuses == {TaskStatus.SUCCEEDED}, statuses
        assert {c.outcome for c in primary.calls} <= {"500"}
        return len(primary.calls), elapsed


async def probes_run(
    directory: Path, client: redis.asyncio.Redis, redis_url: str, *, scope: str, workers: int, seconds: float,
    cooldown: float, threshold: int,
) -> tuple[int, int]:  # fmt: skip
    """Requests to the dead primary in all, and after the first 2 x cooldown (the steady state)."""
    await client.flushdb()
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        cfg = runtime_config(
            primary, backup, breaker_scope=scope, breaker_failure_threshold=threshold,
            breaker_cooldown_seconds=cooldown, worker_concurrency=4,
        )  # fmt: skip
        queue = TaskQueue.from_config(cfg, client)
        await queue.ensure_group()
        async with fleet(directory, cfg, redis_url, workers):
            started = time.time()
            n = 0
            while time.time() - started < seconds:
                await queue.submit(f"Hello {n}", max_steps=2)
                n += 1
                await asyncio.sleep(0.05)
        steady = [c for c in primary.calls if c.started >= started + 2 * cooldown]
        return len(primary.calls), len(steady)


async def cost(client: redis.asyncio.Redis, calls: int) -> None:
    policy = Policy(failure_threshold=3, cooldown_seconds=600, probe_timeout_seconds=120)
    keys = ServiceKeys("bench", "cost")
    circuit = SharedCircuit(client, key=keys.breaker("p"), provider="p", policy=policy)
    await circuit.record(await circuit.ask(), Outcome.SUCCESS)  # load the script
    await client.config_resetstat()
    started = time.perf_counter()
    for _ in range(calls):
        permit = await circuit.ask()
        await circuit.record(permit, Outcome.SUCCESS)
    elapsed = time.perf_counter() - started
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    print(
        f"  closed circuit, ask + success: {elapsed / calls * 1e6:.0f} µs per model call, "
        f"{stats.get('calls', 0) / calls:.2f} EVALSHA per call, "
        f"{stats.get('usec_per_call', 0):.1f} µs of Redis CPU each"
    )
    for _ in range(3):
        await circuit.record(await circuit.ask(), Outcome.FAILURE)
    started = time.perf_counter()
    for _ in range(calls):
        assert (await circuit.ask()).decision == Decision.DENY
    elapsed = time.perf_counter() - started
    print(f"  open circuit, ask (denied): {elapsed / calls * 1e6:.0f} µs, 1 EVALSHA")
    # The same machine, the same moment: the limiter's acquire, which every model call pays too.
    limiter = RateLimiter(client, keys=keys, limits={"p": Limit(requests_per_minute=10**9, tokens_per_minute=10**12)})
    await limiter.acquire("p", 100)
    started = time.perf_counter()
    for _ in range(calls):
        await limiter.acquire("p", 100)
    elapsed = time.perf_counter() - started
    print(f"  beside it, the rate limiter's acquire (slot free): {elapsed / calls * 1e6:.0f} µs")


def spread(values: Sequence[float]) -> str:
    return f"{min(values):g} / {statistics.median(values):g} / {max(values):g}"


async def main_async(args: argparse.Namespace) -> None:
    server = LocalRedis(durable=False)
    server.start()
    client = connect_redis(server.url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-breakers-") as tmp:
            directory = Path(tmp)
            print(
                f"## 1. dead primary (HTTP 500), healthy backup: {args.workers} workers, {args.tasks} tasks, "
                f"threshold {args.threshold}; requests to the primary, min / median / max of {args.trials}"
            )
            for concurrency in args.concurrency:
                counts: dict[str, list[float]] = {scope: [] for scope in SCOPES}
                times: dict[str, list[float]] = {scope: [] for scope in SCOPES}
                for _ in range(args.trials):
                    for scope in SCOPES:  # alternated: a busy machine's drift hits both sides alike
                        count, elapsed = await dead_provider_run(
                            directory, client, server.url, scope=scope, workers=args.workers, tasks=args.tasks,
                            concurrency=concurrency, threshold=args.threshold,
                        )  # fmt: skip
                        counts[scope].append(count)
                        times[scope].append(elapsed)
                bound = args.threshold - 1 + args.workers * concurrency
                print(
                    f"  concurrency {concurrency}: per process {spread(counts['process'])}, "
                    f"shared {spread(counts['service'])} (shared bound {bound}); all tasks succeeded; "
                    f"median seconds for the tasks: {statistics.median(times['process']):.2f} / "
                    f"{statistics.median(times['service']):.2f}"
                )
            print(
                f"## 2. probes: primary dead, {args.seconds:g} s at 20 tasks/s, {args.workers} workers x 4, "
                f"cool-down {args.cooldown:g} s"
            )
            for scope in SCOPES:
                total, steady = await probes_run(
                    directory, client, server.url, scope=scope, workers=args.workers, seconds=args.seconds,
                    cooldown=args.cooldown, threshold=args.threshold,
                )  # fmt: skip
                per = steady / ((args.seconds - 2 * args.cooldown) / args.cooldown)
                print(f"  {scope:>7}: {total} requests in all; after the opening {steady}, {per:.2f} per cool-down")
        print(f"## 3. cost, {args.calls} sequential calls")
        await cost(client, args.calls)
    finally:
        await client.aclose()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--cooldown", type=float, default=2.0)
    parser.add_argument("--calls", type=int, default=3000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

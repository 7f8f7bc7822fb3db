"""Runtime throughput: the queue with an instant model, next to arq; and 500 tasks at 1 s model latency.

Usage: `python bench/runtime_throughput.py [--tasks N] [--concurrency C] [--slow-tasks 500] [--rounds R]
[--parts queue,agent,slow,floor] [--loop uvloop|asyncio]`.

One redis-server (no persistence) on a free loopback port serves every part, each on a flushed DB:
1. Queue, no-op task (the runner returns at once): N tasks submitted through `TaskQueue.submit` (what
   the API does), then drained by one burst worker with concurrency C → tasks/s. Then per-task queue
   overhead: tasks submitted one at a time to an idle, blocking worker; overhead = result stored
   (`finished_at`) - submitted (`created_at`), both stamped by this process → p50 / p99.
2. arq, the equivalent no-op job on the same Redis: N `enqueue_job` calls, then a burst worker with
   `max_jobs=C` (results kept, as ours are) → jobs/s, printed as a ratio to ours. Its per-job overhead
   (finish - enqueue, from arq's own result records) is printed too, with its `poll_delay`.
3. The real agent (anthropic SDK over HTTP) with an instant local model server in another process:
   tasks/s of one worker process.
4. 500 tasks, each one model call of 1 s (local model server in another process), one worker process
   with concurrency 100 and then 500: wall time against the ideal 1 s x ⌈500 / concurrency⌉.
5. The floor under part 4 (`--parts floor`): the same 500 concurrent 1 s calls with no queue, no
   Redis and no agent loop: through the runtime's Anthropic provider alone (the SDK's client as the
   worker builds it), and as bare aiohttp POSTs of the same request whose JSON replies are decoded.
   What a task adds on top of a call is part 4 minus the first; what the SDK adds on top of HTTP is
   the first minus the second.
Targets (issue 4): overhead p50 ≤ 2 ms, throughput ≥ 1.0x arq, 500 tasks ≈ 1 s x ⌈500 / C⌉; issue 14:
500 concurrent 1 s calls in ≤ 1.3 s, no-op drain ≥ 1.5x arq.

Parts 3 and 4 also print the CPU seconds of this process (the worker) per call, measured around
`worker.run()` only, and the local model server's (from /proc): on a loaded machine the wall times
say little, the CPU per call says what the worker costs. A busy machine inflates CPU time too
(shared caches, context switches: 2-4x at a load of 10-40 on 2 cores), so compare figures taken
side by side. `calibration` is the CPU time of a fixed pure-Python loop (it barely moves with the
load, unlike a task's CPU time). Load averages are printed with each figure.
The no-op drain runs `--rounds` times, ours and arq alternating; the ratio is the median of the
per-round ratios, printed with the drain's CPU per task of each (this process's CPU: the
worker's). The event loop is uvloop, as `agent-runtime worker` runs (`--loop asyncio`: the
standard one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import redis.asyncio
import uvloop
from agentops_dev.localmodel import MODEL
from agentops_dev.localredis import LocalRedis, free_port
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker as ArqWorker
from arq.worker import func
from prometheus_client import CollectorRegistry

from agent_runtime import logging as runtime_logging
from agent_runtime.agent import Outcome, SaveCheckpoint
from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.constants import ServiceKeys
from agent_runtime.metrics import Metrics
from agent_runtime.providers import build_providers
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import Checkpoint, TaskStatus
from agent_runtime.worker import Worker

ARQ_POLL_DELAY = 0.001  # arq sleeps poll_delay between polls (default 0.5 s); 1 ms is its best case here


class Noop:
    """A runner that answers at once: measures the queue, not a model."""

    async def run(
        self,
        task_id: str,
        task_input: str,
        checkpoint: Checkpoint,
        *,
        max_steps: int,
        save: SaveCheckpoint,
        fence: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> Outcome:
        return Outcome(TaskStatus.SUCCEEDED, checkpoint, result="ok")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def calibration() -> float:
    """CPU seconds of a fixed pure-Python loop: ~0.5 s on an idle core of the reference machine."""
    start = cpu_seconds()
    total = 0
    for i in range(10_000_000):
        total += i
    return cpu_seconds() - start


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def noop_worker(client: redis.asyncio.Redis, concurrency: int, *, burst: bool) -> tuple[TaskQueue, Worker]:
    queue = TaskQueue(client, keys=ServiceKeys("bench", "bench"))
    metrics = Metrics(CollectorRegistry(), service="bench", track="stable")
    worker = Worker(queue=queue, runner=Noop(), metrics=metrics, concurrency=concurrency, burst=burst, block_ms=1000)
    return queue, worker


async def ours_throughput(client: redis.asyncio.Redis, tasks: int, concurrency: int) -> dict[str, float]:
    await client.flushdb()
    queue, worker = noop_worker(client, concurrency, burst=True)
    await queue.ensure_group()
    start = time.perf_counter()
    for i in range(tasks):
        await queue.submit(f"task {i}", max_steps=1)
    submitted, cpu = time.perf_counter(), cpu_seconds()
    await worker.run()
    done, cpu = time.perf_counter(), cpu_seconds() - cpu
    assert worker.processed == tasks and await queue.depth() == 0
    return {
        "submit_per_s": tasks / (submitted - start),
        "run_per_s": tasks / (done - submitted),
        "e2e_per_s": tasks / (done - start),
        "run_cpu_ms": cpu / tasks * 1000,
    }


async def ours_overhead(client: redis.asyncio.Redis, tasks: int) -> list[float]:
    await client.flushdb()
    queue, worker = noop_worker(client, 8, burst=False)
    await queue.ensure_group()
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)  # the worker is now blocked in XREADGROUP, as an idle worker is
    ids = []
    for i in range(tasks):
        ids.append((await queue.submit(f"task {i}", max_steps=1)).task_id)
        while worker.processed <= i:
            await asyncio.sleep(0)
    worker.stop()
    await running
    overheads = []
    for task_id in ids:
        record = await queue.get(task_id)
        assert record.finished_at is not None
        overheads.append(record.finished_at - record.created_at)
    return overheads


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def arq_run(port: int, tasks: int, concurrency: int, *, poll_delay: float) -> dict[str, Any]:
    settings = RedisSettings(host="127.0.0.1", port=port)
    pool = await create_pool(settings)
    await pool.flushdb()
    start = time.perf_counter()
    jobs = [await pool.enqueue_job("noop") for _ in range(tasks)]
    submitted = time.perf_counter()
    worker = ArqWorker(
        functions=[func(noop, name="noop")],
        redis_pool=pool,
        burst=True,
        max_jobs=concurrency,
        handle_signals=False,
        poll_delay=poll_delay,
        log_results=False,
    )
    cpu = cpu_seconds()
    await worker.main()
    done, cpu = time.perf_counter(), cpu_seconds() - cpu
    assert worker.jobs_complete == tasks and all(jobs), worker.jobs_complete
    await worker.close()
    await pool.aclose()
    return {
        "submit_per_s": tasks / (submitted - start),
        "run_per_s": tasks / (done - submitted),
        "e2e_per_s": tasks / (done - start),
        "run_cpu_ms": cpu / tasks * 1000,
    }


async def arq_overhead(port: int, tasks: int, *, poll_delay: float) -> list[float]:
    """Enqueue → finish of jobs sent one at a time to a running arq worker (arq stamps in milliseconds)."""
    pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))
    await pool.flushdb()
    worker = ArqWorker(
        functions=[func(noop, name="noop")],
        redis_pool=pool,
        max_jobs=8,
        handle_signals=False,
        poll_delay=poll_delay,
        log_results=False,
    )
    running = asyncio.create_task(worker.main())
    overheads = []
    for _ in range(tasks):
        job = await pool.enqueue_job("noop")
        assert job is not None
        await job.result(poll_delay=0.0005)
        info = await job.result_info()
        assert info is not None
        overheads.append((info.finish_time - info.enqueue_time).total_seconds())
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await worker.close()
    await pool.aclose()
    return overheads


def start_model_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "agent_runtime.cli", "--log-level", "warning", "localmodel", "--port", str(port),
            "--latency", str(latency)]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()  # "local model server on ..." once it listens
    return process, f"http://127.0.0.1:{port}"


async def agent_run(
    client: redis.asyncio.Redis, base_url: str, tasks: int, concurrency: int, process_breakers: bool = False
) -> tuple[float, float]:
    """Wall and CPU seconds for one worker process to finish `tasks` one-step tasks through the real agent.

    `process_breakers` prices the shared breakers' two scripts a call (ask, record) by running the
    per-process breaker instead. The rest cannot be left out by configuration: every provider
    has rate limits (acquire and settle), every task a budget (reserve and settle), and the claim,
    the checkpoint and the finish always run.
    """
    await client.flushdb()
    config = RuntimeConfig(
        service="bench",
        providers=[ProviderConfig(name="local", model=MODEL, base_url=base_url)],
        provider_max_retries=0,
        # The shared rate limiter (issue 5) would pace this to 600 calls a minute: measure the queue and loop.
        requests_per_minute=10_000_000,
        tokens_per_minute=1_000_000_000,
        breaker_scope="process" if process_breakers else "service",
        worker_concurrency=concurrency,
    )
    parts = build_worker(config, redis_client=client, registry=CollectorRegistry(), burst=True)
    ids = [(await parts.queue.submit(f"Say hello to number {i}.", max_steps=2)).task_id for i in range(tasks)]
    start, cpu = time.perf_counter(), cpu_seconds()
    await parts.worker.run()
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    failed = [r.error for r in [await parts.queue.get(t) for t in ids] if r.status != TaskStatus.SUCCEEDED]
    assert not failed, failed[:3]
    await parts.aclose()
    return elapsed, cpu


async def queue_part(client: redis.asyncio.Redis, port: int, args: argparse.Namespace) -> None:
    # warm-up (script loading, connection pool), then the measured runs
    await ours_throughput(client, 200, args.concurrency)
    await arq_run(port, 200, args.concurrency, poll_delay=ARQ_POLL_DELAY)
    rounds: list[tuple[dict[str, float], dict[str, float]]] = []
    for _ in range(args.rounds):  # alternating, so both see the same machine state
        ours = await ours_throughput(client, args.tasks, args.concurrency)
        arq = await arq_run(port, args.tasks, args.concurrency, poll_delay=ARQ_POLL_DELAY)
        rounds.append((ours, arq))

    def median(side: int, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    def ratio(key: str) -> float:
        return statistics.median(ours[key] / arq[key] for ours, arq in rounds)

    print(f"\n1-2. no-op task, one worker, same Redis (arq poll_delay {ARQ_POLL_DELAY * 1000:g} ms, max_jobs = C), "
          f"median of {args.rounds} alternating rounds, {load()}")  # fmt: skip
    for side, name in ((0, "ours"), (1, "arq ")):
        print(f"  {name} : submit {median(side, 'submit_per_s'):7.0f}/s   drain {median(side, 'run_per_s'):7.0f}/s   "
              f"end-to-end {median(side, 'e2e_per_s'):7.0f}/s   "
              f"drain CPU {median(side, 'run_cpu_ms'):.3f} ms/task")  # fmt: skip
    drains = " ".join(f"{ours['run_per_s'] / arq['run_per_s']:.2f}" for ours, arq in rounds)
    # On a loaded machine the wall-clock ratio follows the scheduler; CPU per task does not (as much):
    # arq's drain CPU over ours is the drain ratio a core of our own would give.
    cpu_ratio = statistics.median(arq["run_cpu_ms"] / ours["run_cpu_ms"] for ours, arq in rounds)
    print(f"  ratio ours/arq: drain {ratio('run_per_s'):.2f}x   end-to-end {ratio('e2e_per_s'):.2f}x   "
          f"(targets >= 1.0x, drain >= 1.5x; drain per round: {drains})")  # fmt: skip
    print(f"  drain CPU per task, arq / ours: {cpu_ratio:.2f}x")

    overheads = await ours_overhead(client, args.overhead_tasks)
    print(f"\n  queue overhead per task (submit -> result stored, idle worker, {len(overheads)} tasks):")
    print(f"  ours : p50 {ms(statistics.median(overheads))}   p99 {ms(percentile(overheads, 0.99))}   "
          f"(target p50 <= 2 ms)")  # fmt: skip
    arq_over = await arq_overhead(port, args.overhead_tasks, poll_delay=ARQ_POLL_DELAY)
    print(f"  arq  : p50 {ms(statistics.median(arq_over))}   p99 {ms(percentile(arq_over, 0.99))}   "
          f"(enqueue -> finish as arq records it, ms resolution)")  # fmt: skip


def per_call(seconds: float, calls: int) -> str:
    return f"{seconds / calls * 1000:.2f} ms"


async def agent_part(client: redis.asyncio.Redis, args: argparse.Namespace) -> None:
    model, url = start_model_server(0.0)
    try:
        model_cpu = cpu_seconds_of(model.pid)
        elapsed, cpu = await agent_run(client, url, args.agent_tasks, args.concurrency, args.process_breakers)
        model_cpu = cpu_seconds_of(model.pid) - model_cpu
        calls = args.agent_tasks
        print(f"\n3. real agent loop, instant local model in another process: {calls} one-step tasks "
              f"in {elapsed:.2f} s = {calls / elapsed:.0f} tasks/s; CPU per call: worker "
              f"{per_call(cpu, calls)}, model server {per_call(model_cpu, calls)}; {load()}")  # fmt: skip
    finally:
        model.terminate()
        model.wait()


async def slow_part(client: redis.asyncio.Redis, args: argparse.Namespace) -> None:
    model, url = start_model_server(1.0)
    try:
        await agent_run(client, url, 50, 50)  # warm-up: imports, scripts, the model server's first requests
        print(f"\n4. {args.slow_tasks} tasks, one model call of 1 s each, one worker process")
        for concurrency in (100, 500):
            model_cpu = cpu_seconds_of(model.pid)
            elapsed, cpu = await agent_run(client, url, args.slow_tasks, concurrency, args.process_breakers)
            model_cpu = cpu_seconds_of(model.pid) - model_cpu
            ideal = 1.0 * math.ceil(args.slow_tasks / concurrency)
            print(f"  concurrency {concurrency:3d}: {elapsed:.2f} s (ideal {ideal:.0f} s, {elapsed / ideal:.2f}x); "
                  f"CPU per call: worker {per_call(cpu, args.slow_tasks)}, "
                  f"model server {per_call(model_cpu, args.slow_tasks)}; {load()}")  # fmt: skip
    finally:
        model.terminate()
        model.wait()


async def provider_calls(base_url: str, calls: int) -> tuple[float, float]:
    """Wall and CPU seconds of `calls` concurrent calls through the runtime's provider (the SDK's client)."""
    config = RuntimeConfig(
        service="bench",
        providers=[ProviderConfig(name="local", model=MODEL, base_url=base_url)],
        provider_max_retries=0,
        worker_concurrency=calls,
    )
    metrics = Metrics(CollectorRegistry(), service="bench", track="stable")
    provider = build_providers(config, metrics=metrics).providers[0]

    async def one(i: int) -> None:
        messages = [{"role": "user", "content": f"Say hello to number {i}."}]
        await provider.complete(system="You are terse.", messages=messages, tools=[], max_tokens=256, task_id=str(i))

    try:
        await asyncio.gather(*(one(i) for i in range(min(calls, 50))))  # warm-up: connections, imports
        start, cpu = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return time.perf_counter() - start, cpu_seconds() - cpu
    finally:
        await provider.aclose()


async def http_calls(base_url: str, calls: int) -> tuple[float, float]:
    """Wall and CPU seconds of `calls` concurrent bare aiohttp POSTs of the same request, replies decoded."""
    headers = {"x-api-key": "none", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=calls), headers=headers) as session:

        async def one(i: int) -> None:
            body = {"model": MODEL, "max_tokens": 256, "system": "You are terse.",
                    "messages": [{"role": "user", "content": f"Say hello to number {i}."}]}  # fmt: skip
            async with session.post(f"{base_url}/v1/messages", json=body) as response:
                response.raise_for_status()
                await response.json()

        await asyncio.gather(*(one(i) for i in range(min(calls, 50))))  # warm-up
        start, cpu = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return time.perf_counter() - start, cpu_seconds() - cpu


async def floor_part(args: argparse.Namespace) -> None:
    model, url = start_model_server(1.0)
    calls = args.slow_tasks
    try:
        print(f"\n5. the floor: {calls} concurrent calls of 1 s each, one process, no queue, no Redis, no agent loop")
        for name, run in (("runtime's provider (SDK)", provider_calls), ("bare aiohttp POST + JSON", http_calls)):
            model_cpu = cpu_seconds_of(model.pid)
            elapsed, cpu = await run(url, calls)
            model_cpu = cpu_seconds_of(model.pid) - model_cpu
            print(f"  {name}: {elapsed:.2f} s (ideal 1 s); CPU per call: caller {per_call(cpu, calls)}, "
                  f"model server {per_call(model_cpu, calls)}; {load()}")  # fmt: skip
    finally:
        model.terminate()
        model.wait()


async def main(args: argparse.Namespace) -> None:
    runtime_logging.configure("error")
    print(f"runtime_throughput: {args.tasks} tasks, concurrency {args.concurrency}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, {args.loop} event loop, {load()}")  # fmt: skip
    if args.process_breakers:
        print("call path: per-process circuit breakers (no shared-breaker scripts)")
    print(f"calibration: {calibration():.2f} CPU s for the fixed loop (~0.5 s on an idle core)")
    with LocalRedis(durable=False) as server:
        client = connect_redis(server.url)
        if "queue" in args.parts:
            await queue_part(client, server.port, args)
        if "agent" in args.parts:
            await agent_part(client, args)
        if "slow" in args.parts:
            await slow_part(client, args)
        if "floor" in args.parts:
            await floor_part(args)
        await client.aclose()
    print(f"\ncalibration: {calibration():.2f} CPU s for the fixed loop; {load()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--overhead-tasks", type=int, default=1000)
    parser.add_argument("--agent-tasks", type=int, default=1000)
    parser.add_argument("--slow-tasks", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the no-op drain, ours and arq")
    parser.add_argument("--parts", default="queue,agent,slow", help="comma-separated: queue, agent, slow, floor")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--process-breakers",
        action="store_true",
        help="per-process circuit breakers instead of shared ones, to price the shared breakers' round trips",
    )
    arguments = parser.parse_args()
    if arguments.loop == "uvloop":
        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))

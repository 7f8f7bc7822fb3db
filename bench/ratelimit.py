"""Shared rate limiter: accuracy under saturation across processes, and the cost of one acquire.

Usage: `python bench/ratelimit.py [--processes 4] [--callers 8] [--seconds 8] [--rpm 3000] [--window 2]`.

One redis-server (no persistence) on a free loopback port.
1. Accuracy: P processes, each with C concurrent callers looping `acquire` on one provider limit of
   `rpm` requests per minute (burst 0), for S seconds. Each grant's time (when `acquire` returned,
   `time.time()` in the caller) is collected; for every grant t the grants in [t, t + W) are
   counted, for windows that lie inside the saturated run. Printed: allowed per window, observed
   max / min / mean, and the share of the limit used — with the default 2 % headroom and with none.
2. Cost: sequential acquires on a limit that never binds (the fast path: one round trip), acquires
   that wait (reserve, sleep, re-check the backoff: two round trips), and `settle` (one) → µs each.
   Round trips are counted by the limiter (`Grant.round_trips`) and cross-checked against Redis's
   own `INFO commandstats` (`evalsha` calls).
3. Budget: sequential `reserve` + `settle` pairs of the budget ledger (`agent_runtime/budget.py`),
   the two calls every model call also pays, with 0 and with 200 other reservations live (the
   reserve script adds up the live ones, so its cost grows with the calls in flight) → µs each and
   `EVALSHA` per call from `INFO commandstats`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time

import redis.asyncio
from agentops_dev.localredis import LocalRedis

from agent_runtime.budget import BudgetLedger
from agent_runtime.constants import ServiceKeys
from agent_runtime.ratelimit import Limit, RateLimiter


def _caller_process(url: str, limit: Limit, run: tuple[int, float, float], out: list[float]) -> None:
    callers, seconds, start_at = run

    async def main() -> list[float]:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        limiter = RateLimiter(client, keys=ServiceKeys("bench", "bench"), limits={"p": limit})
        grants: list[float] = []

        async def loop() -> None:
            while time.time() < start_at + seconds:
                await limiter.acquire("p", 1)
                grants.append(time.time())

        await asyncio.sleep(max(start_at - time.time(), 0))
        await asyncio.gather(*(loop() for _ in range(callers)))
        await client.aclose()
        return grants

    out.extend(asyncio.run(main()))


def accuracy(
    url: str, *, processes: int, callers: int, seconds: float, rpm: int, window: float, headroom: float
) -> None:
    limit = Limit(requests_per_minute=rpm, tokens_per_minute=10**9, burst_fraction=0.0, headroom=headroom)
    with multiprocessing.Manager() as manager:
        shared = manager.list()
        start_at = time.time() + 1.0
        workers = [
            multiprocessing.Process(target=_caller_process, args=(url, limit, (callers, seconds, start_at), shared))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        grants = sorted(shared)
    grants = [t for t in grants if t <= start_at + seconds]
    allowed = rpm * window / 60
    counts = []
    end = 0
    for i, t in enumerate(grants):
        if t + window > grants[-1]:
            break
        while end < len(grants) and grants[end] < t + window:
            end += 1
        counts.append(end - i)
    print(
        f"  headroom {headroom:.0%}: {len(grants)} grants in {seconds:g} s, {processes} processes x {callers} callers; "
        f"allowed {allowed:g} per {window:g} s window; observed max {max(counts)}, min {min(counts)}, "
        f"mean {statistics.fmean(counts):.1f} over {len(counts)} windows "
        f"(max {max(counts) / allowed:.1%} of the limit, mean use {statistics.fmean(counts) / allowed:.1%})"
    )


async def cost(url: str, n: int) -> None:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    fast = RateLimiter(
        client,
        keys=ServiceKeys("bench", "bench"),
        limits={"p": Limit(requests_per_minute=10**9, tokens_per_minute=10**12)},
    )
    await fast.acquire("p", 100)  # load the scripts
    await client.config_resetstat()
    trips = 0
    started = time.perf_counter()
    for _ in range(n):
        trips += (await fast.acquire("p", 100)).round_trips
    elapsed = time.perf_counter() - started
    stats = await client.info("commandstats")
    evals = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    print(
        f"  acquire, fast path: {elapsed / n * 1e6:.0f} µs each, {trips / n:.2f} round trips "
        f"(limiter count; Redis saw {evals / n:.2f} EVALSHA per acquire, "
        f"{stats.get('cmdstat_evalsha', {}).get('usec_per_call', 0):.1f} µs of Redis CPU each)"
    )

    started = time.perf_counter()
    for _ in range(n):
        await fast.settle("p", 50)
    print(f"  settle: {(time.perf_counter() - started) / n * 1e6:.0f} µs each, 1 round trip")

    waits = RateLimiter(
        client,
        keys=ServiceKeys("bench", "bench2"),
        limits={"p": Limit(requests_per_minute=60_000, tokens_per_minute=10**12, headroom=0.0)},
    )
    m = 200
    trips = 0
    overshoot = []
    for _ in range(m):
        before = time.perf_counter()
        grant = await waits.acquire("p", 1)
        trips += grant.round_trips
        overshoot.append((time.perf_counter() - before) - grant.waited)
    print(
        f"  acquire that waits (1 ms slots): {trips / m:.2f} round trips; time beyond the wait itself "
        f"p50 {statistics.median(overshoot) * 1e6:.0f} µs"
    )
    await client.aclose()


async def budget_cost(url: str, n: int) -> None:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    for live in (0, 200):
        await client.flushdb()
        ledger = BudgetLedger(
            client, keys=ServiceKeys("bench", "budget"), daily_limit_usd=10**6, per_task_limit_usd=10.0
        )
        for k in range(live):  # calls in flight elsewhere in the fleet
            await ledger.reserve(f"other-{k}", fence=1, amount=10_000)
        await client.config_resetstat()
        reserve_s = settle_s = 0.0
        for k in range(n):
            started = time.perf_counter()
            _, held = await ledger.reserve(f"task-{k % 50}", fence=1, amount=20_000)
            reserve_s += time.perf_counter() - started
            assert held is not None
            started = time.perf_counter()
            await ledger.settle(held, 1_234)
            settle_s += time.perf_counter() - started
        stats = await client.info("commandstats")
        evalsha = stats.get("cmdstat_evalsha", {})
        print(
            f"  {live} other reservations live: reserve {reserve_s / n * 1e6:.0f} µs, "
            f"settle {settle_s / n * 1e6:.0f} µs; Redis saw {evalsha.get('calls', 0) / (2 * n):.2f} EVALSHA "
            f"per call, {evalsha.get('usec_per_call', 0):.1f} µs of Redis CPU each (reserve and settle averaged)"
        )
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--acquires", type=int, default=5000)
    parser.add_argument("--budget-only", action="store_true", help="run part 3 (the budget ledger) alone")
    args = parser.parse_args()
    with LocalRedis(durable=False) as server:
        print(f"redis-server on {server.url}")
        if args.budget_only:
            print("3. budget reserve and settle:")
            asyncio.run(budget_cost(server.url, args.acquires))
            return
        print("1. accuracy (grant times, sliding windows):")
        for headroom in (0.02, 0.0):
            asyncio.run(redis.asyncio.Redis.from_url(server.url).flushdb())
            accuracy(server.url, processes=args.processes, callers=args.callers, seconds=args.seconds,
                     rpm=args.rpm, window=args.window, headroom=headroom)  # fmt: skip
        print("2. cost:")
        asyncio.run(cost(server.url, args.acquires))
        print("3. budget reserve and settle:")
        asyncio.run(budget_cost(server.url, args.acquires))


if __name__ == "__main__":
    main()

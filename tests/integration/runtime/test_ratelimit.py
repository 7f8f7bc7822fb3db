"""The shared rate limiter: the GCRA script on a real redis-server, and four worker processes sharing it.

Covers:
- grants are spaced by the limit (a caller unwilling to wait is told how long; nothing is reserved
  for it); `burst_fraction` lets that share of the limit go at once; token costs and `settle` push
  later callers back;
- a reservation is first come, first served and is exact: concurrent callers get distinct slots;
- `backoff` holds every caller until it expires and never shortens; a caller whose slot was
  reserved before a backoff appeared still waits for the backoff after its sleep;
- four `agent-runtime worker` processes saturating one provider with a limit of 100 requests per
  5 s (1200/min): counted at the limiter's own admissions (the slots its script stored, read with
  MONITOR), every request took one slot, none reached the model server before its slot, no 5-second
  window holds more than the limit and no slot is left unused while a caller waits; all four
  processes served tasks;
- a 429 storm with `retry-after: 1` against four worker processes: every request that reaches the
  server before a backoff's end was admitted before the backoff was stored (in Redis's order), and
  every task still succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis

from agent_runtime.config import RuntimeConfig
from agent_runtime.constants import ServiceKeys
from agent_runtime.providers import limits_of
from agent_runtime.queue import TaskQueue
from agent_runtime.ratelimit import Limit, RateLimited, RateLimiter
from agent_runtime.tasks import TaskStatus
from tests.integration.runtime.conftest import Fleet


def limiter(client: redis.asyncio.Redis, **limit: float) -> RateLimiter:
    settings = {"requests_per_minute": 600, "tokens_per_minute": 10**9, "headroom": 0.0, **limit}
    return RateLimiter(client, keys=ServiceKeys("default", "svc"), limits={"p": Limit(**settings)})  # type: ignore[arg-type]


async def test_grants_are_spaced_by_the_limit(redis_client: redis.asyncio.Redis) -> None:
    rl = limiter(redis_client)  # 600/min: one grant per 100 ms
    assert (await rl.acquire("p", 1)).waited == 0
    with pytest.raises(RateLimited) as refused:
        await rl.acquire("p", 1, max_wait=0.01)
    assert 0.08 < refused.value.wait <= 0.1
    started = time.monotonic()
    grant = await rl.acquire("p", 1)  # the refusal reserved nothing: this one gets the next slot
    assert 0.05 < grant.waited <= 0.1 and grant.round_trips == 2
    assert time.monotonic() - started >= grant.waited


async def test_burst_fraction_and_tokens(redis_client: redis.asyncio.Redis) -> None:
    rl = limiter(redis_client, burst_fraction=0.01)  # 600/min, burst of 6
    for _ in range(6):
        assert (await rl.acquire("p", 1, max_wait=0)).waited == 0
    with pytest.raises(RateLimited):
        await rl.acquire("p", 1, max_wait=0)

    tokens = RateLimiter(
        redis_client,
        keys=ServiceKeys("default", "svc"),
        limits={"t": Limit(requests_per_minute=10**6, tokens_per_minute=6000, headroom=0.0)},  # 100 tokens/s
    )
    await tokens.acquire("t", 50)  # 0.5 s of tokens
    with pytest.raises(RateLimited) as refused:
        await tokens.acquire("t", 1, max_wait=0)
    assert 0.4 < refused.value.wait <= 0.5
    await tokens.settle("t", 100)  # the call used 100 more than reserved: one more second
    with pytest.raises(RateLimited) as refused:
        await tokens.acquire("t", 1, max_wait=0)
    assert 1.4 < refused.value.wait <= 1.5


async def test_concurrent_reservations_get_distinct_slots(redis_server: LocalRedis) -> None:
    clients = [redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True) for _ in range(4)]
    try:
        limiters = [limiter(c, requests_per_minute=6000) for c in clients]  # 10 ms apart
        ends: list[float] = []

        async def take(rl: RateLimiter) -> None:
            await rl.acquire("p", 1)
            ends.append(time.monotonic())

        await asyncio.gather(*(take(limiters[i % 4]) for i in range(40)))
        ends.sort()
        assert ends[-1] - ends[0] >= 0.38  # 40 slots, 10 ms apart: none shared
    finally:
        for client in clients:
            await client.aclose()


async def test_backoff_is_shared_and_never_shortened(redis_server: LocalRedis) -> None:
    one = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    two = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        a, b = limiter(one), limiter(two)
        assert 0.29 < await a.backoff("p", 0.3) <= 0.3
        assert await b.backoff("p", 0.05) > 0.25  # a shorter retry-after does not shorten it
        started = time.monotonic()
        await b.acquire("p", 1)
        assert time.monotonic() - started >= 0.25
        assert await a.backoff_left("p") == 0

        slow = limiter(one, requests_per_minute=300)  # 200 ms apart
        await slow.acquire("p", 1)
        started = time.monotonic()
        waiting = asyncio.create_task(slow.acquire("p", 1))  # reserved 200 ms ahead, then sleeps
        await asyncio.sleep(0.05)
        await b.backoff("p", 0.5)  # another replica sees a 429 meanwhile
        grant = await waiting
        assert time.monotonic() - started >= 0.5 and grant.round_trips >= 2
    finally:
        await one.aclose()
        await two.aclose()


def window_counts(starts: list[float], window: float) -> list[int]:
    """Requests in [t, t + window) for every request time t whose window ends before the last request."""
    starts = sorted(starts)
    counts = []
    end = 0
    for i, t in enumerate(starts):
        if t + window > starts[-1]:
            break
        while end < len(starts) and starts[end] < t + window:
            end += 1
        counts.append(end - i)
    return counts


@contextlib.asynccontextmanager
async def limiter_writes(redis_server: LocalRedis) -> AsyncIterator[list[tuple[str, float, float]]]:
    """Every value the limiter's scripts store while inside, in Redis's own order: (key, seconds, asked).

    Read with MONITOR, which shows the commands a Lua script runs (`TIME`, then `SET <key> <µs> PX
    <ms>`): the limiter's own admissions (the requests key holds a grant's slot + one interval) and
    backoffs (the backoff key holds its end), exact and in Redis time, however late a process acts
    on them. `asked` is when the script read the clock (MONITOR's time of its `TIME`, never earlier).
    """
    writes: list[tuple[str, float, float]] = []
    marker = f"limiter-writes-end-{id(writes)}"
    # its own client: no read timeout, since nothing may happen for a while (processes starting up)
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    async with client, client.monitor() as monitor:

        async def read() -> None:
            asked = 0.0
            async for info in monitor.listen():
                words = str(info["command"]).split()
                if words == ["TIME"] and info["client_type"] == "lua":
                    asked = float(info["time"])
                elif words[:1] == ["SET"] and ":ratelimit:" in words[1]:
                    writes.append((words[1], int(words[2]) / 1e6, asked))
                elif words == ["ECHO", marker]:
                    return

        reader = asyncio.create_task(read())
        try:
            yield writes
        finally:
            await client.echo(marker)  # everything before it has been read once the reader sees it
            await asyncio.wait_for(reader, 30)


async def test_four_workers_share_one_limit(
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    model_server: LocalModelServer,
    fleet: Fleet,
) -> None:
    window, allowed = 5.0, 100  # 1200 requests per minute
    cfg = config.model_copy(
        # a lease no busy machine outlasts: a reclaimed task's repeated call is not what this test is about
        update={
            "requests_per_minute": 1200,
            "rate_limit_burst_fraction": 0.0,
            "worker_concurrency": 8,
            "claim_idle_seconds": 30,
        }
    )
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    # all four processes up and reading before the first task: a process still starting (slow on a
    # busy machine) leaves the limit unsaturated for reasons that are not the limiter's
    await fleet.start(cfg, burst=False)
    await fleet.started()
    async with limiter_writes(redis_server) as writes:
        ids = [(await queue.submit(f"Say hello {n}", max_steps=2)).task_id for n in range(190)]
        while len(model_server.completed()) < len(ids):
            await asyncio.sleep(0.05)
    await fleet.stop()

    records = [await queue.get(task_id) for task_id in ids]
    assert all(r.status == TaskStatus.SUCCEEDED for r in records)
    consumers = {await redis_client.hget(queue.task_key(task_id), "consumer") for task_id in ids}  # type: ignore[misc]
    assert len({c.rsplit("-", 1)[0] for c in consumers if c}) == 4  # all four processes took part
    starts = [c.started for c in model_server.calls]
    assert len(starts) == len(ids)
    # Windows are counted at the limiter's own admissions (the slots its script granted), not where
    # the requests reached the model server: a CPU-starved worker (or server) sends (or records) a
    # request late, and late requests bunch into the next window however well they were spaced.
    interval = limits_of(cfg)["local"].request_interval_us() / 1e6  # burst 1: a grant stores slot + interval
    requests_key = cfg.keys().ratelimit("local", "requests")
    grants = [(value - interval, asked) for key, value, asked in writes if key == requests_key]  # (slot, asked)
    admitted = sorted(slot for slot, _ in grants)
    assert len(admitted) == len(starts)  # every request took one slot of the one shared limit
    # and none went out before its slot (late is the machine's doing, early would be the worker's)
    assert all(sent >= slot - 0.001 for sent, slot in zip(sorted(starts), admitted, strict=True))
    counts = window_counts(admitted, window)
    assert len(counts) > 50
    print(f"windows: {len(counts)}, max {max(counts)}, min {min(counts)} (limit {allowed})")
    assert max(counts) <= allowed, f"a {window:g} s window held {max(counts)} requests (limit {allowed})"
    # Saturation, from the limiter's side (how many requests a busy machine's workers can make is a
    # throughput figure for bench/): no slot is left unused while a caller waits. Each grant starts
    # right where the previous one ended, or, the limiter idle, at once when asked for.
    for (slot, asked), (previous, _) in zip(grants[1:], grants, strict=False):
        assert slot <= max(previous + interval, asked) + 1e-5, (slot, previous + interval, asked)


async def test_429_storm_backs_off_every_replica(
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    model_server: LocalModelServer,
    fleet: Fleet,
) -> None:
    # a lease no busy machine outlasts: a reclaimed task's repeated call is not what this test is about
    cfg = config.model_copy(update={"provider_max_retries": 6, "worker_concurrency": 4, "claim_idle_seconds": 30})
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    await fleet.start(cfg, burst=False)
    await fleet.started()
    async with limiter_writes(redis_server) as writes:  # from before the first request: every admission seen
        warm_up = [(await queue.submit(f"Warm up {n}", max_steps=2)).task_id for n in range(8)]
        while len(model_server.completed()) < len(warm_up):
            await asyncio.sleep(0.05)
        warm_calls = list(model_server.calls)
        model_server.calls.clear()
        model_server.faults.retry_after = 1.0
        model_server.faults.script = ["429"] * 10
        model_server.faults.latency_seconds = 0.02
        ids = [(await queue.submit(f"Say hello {n}", max_steps=2)).task_id for n in range(40)]
        while len(model_server.completed()) < len(ids):
            await asyncio.sleep(0.05)
    await fleet.stop()

    statuses = [(await queue.get(t)).status for t in ids]
    assert statuses == [TaskStatus.SUCCEEDED] * len(ids)
    storm = [c for c in model_server.calls if c.outcome == "429"]
    assert len(storm) == 10
    # Every request that reached the server before a backoff's end was admitted before the backoff was
    # stored (already on its way, however late a busy replica sends it); one admitted after it waits
    # for its end. Counted in Redis's order of admissions and backoffs, not with a wall-clock allowance.
    keys = cfg.keys()
    admitted, backoffs = 0, 0
    for key, value, _ in writes:
        if key == keys.ratelimit("local", "requests"):
            admitted += 1
        elif key == keys.ratelimit("local", "backoff"):  # stored only when it extends: `value` is its end
            backoffs += 1
            reached = sum(c.started < value for c in [*warm_calls, *model_server.calls])
            assert reached <= admitted, f"{reached} requests before the end of a backoff, {admitted} admitted before it"
    assert backoffs >= 1

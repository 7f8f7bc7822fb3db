"""Circuit breakers shared by a fleet: four real worker processes, one redis-server, two local model servers.

Covers:
- a primary that answers every request with HTTP 500 and a healthy backup, 40 tasks: every task
  succeeds on the backup; the primary receives at least `failure_threshold` and at most
  `failure_threshold - 1 + 4 x concurrency` requests (the calls in flight when the fleet's count
  reached the threshold go out regardless), which is under 12 and under what four per-process
  breakers would pay (4 x threshold); every process's `llm_circuit_state` reads open, even one
  that saw fewer than `failure_threshold` failures of its own (which only a shared circuit can
  explain); the processes' `llm_provider_calls_total{outcome="unavailable"}` add up to the
  requests the server received (the SDK retries nothing behind the breaker's back);
- a circuit opened before the fleet starts, a primary that keeps failing, then recovers: every
  request the primary receives is a probe until one succeeds; no two overlap; each comes at least
  a cool-down after the previous one was answered (so one probe per cool-down across the fleet,
  judged at the server's own clock); after the successful probe the circuit is closed for every
  process (each one's gauge reads closed and each sends its calls to the primary again), and the
  circuit's key is gone from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import httpx
import redis.asyncio
from agentops_dev.localmodel import CallRecord, LocalModelServer
from agentops_dev.waiting import eventually
from prometheus_client.parser import text_string_to_metric_families

from agent_runtime.breaker import BreakerState, Policy
from agent_runtime.circuits import circuit_script, run_op
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus
from tests.integration.runtime.conftest import Fleet

WORKERS = 4


def two(primary: LocalModelServer, backup: LocalModelServer) -> list[ProviderConfig]:
    return [
        ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url=primary.url),
        ProviderConfig(name="backup", model="claude-haiku-4-5", base_url=backup.url),
    ]


async def scrape(url: str) -> dict[tuple[str, str, str], float]:
    """One process's provider samples: (series, provider, outcome or '') → value."""
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(url)).text
    samples: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "provider" in sample.labels:
                key = (sample.name, sample.labels["provider"], sample.labels.get("outcome", ""))
                samples[key] = sample.value
    return samples


async def all_final(queue: TaskQueue, ids: list[str]) -> bool:
    records = [await queue.get(task_id) for task_id in ids]
    return all(r.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED) for r in records)


async def test_a_dead_provider_costs_the_fleet_one_threshold(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, fleet: Fleet
) -> None:
    threshold, concurrency = 3, 2
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        cfg = config.model_copy(
            update={
                "providers": two(primary, backup),
                "breaker_failure_threshold": threshold,
                "breaker_cooldown_seconds": 600,  # no probe while the test runs
                "worker_concurrency": concurrency,
                # a lease no busy machine outlasts: a reclaimed task's repeated call is not under test here
                "claim_idle_seconds": 30,
            }
        )
        queue = TaskQueue.from_config(cfg, redis_client)
        await queue.ensure_group()
        await fleet.start(cfg, burst=False, count=WORKERS, metrics=True)
        await fleet.started()  # every process reading before the first task
        ids = [(await queue.submit(f"Hi {n}", max_steps=2)).task_id for n in range(40)]
        await eventually(lambda: all_final(queue, ids), timeout=120)
        scrapes = [await scrape(url) for url in fleet.metrics_urls]
        await fleet.stop()

    records = [await queue.get(task_id) for task_id in ids]
    assert [r.status for r in records] == [TaskStatus.SUCCEEDED] * len(ids)
    assert {c.task_id for c in backup.completed()} == set(ids)  # each one served by the backup
    assert {c.outcome for c in primary.calls} == {"500"}
    bound = threshold - 1 + WORKERS * concurrency
    print(f"requests to the dead primary: {len(primary.calls)} (threshold {threshold}, bound {bound})")
    assert threshold <= len(primary.calls) <= bound
    assert bound <= 12 and bound < WORKERS * threshold  # what four per-process breakers pay when all four call
    # Every process sees the circuit open, including those whose own failures were fewer than the
    # threshold: with at most `bound` < 4 x threshold failures in all, at least one process had fewer.
    own_failures = [s.get(("llm_provider_calls_total", "primary", "unavailable"), 0) for s in scrapes]
    assert min(own_failures) < threshold
    assert [s[("llm_circuit_state", "primary", "")] for s in scrapes] == [BreakerState.OPEN] * WORKERS
    # Every request the server received was a call the breakers counted: no SDK retry behind their back.
    assert sum(own_failures) == len(primary.calls)
    state = await redis_client.hget(cfg.keys().breaker("primary"), "state")  # type: ignore[misc]
    assert state == str(int(BreakerState.OPEN))


@contextlib.asynccontextmanager
async def feeding(queue: TaskQueue, submitted: list[str], every: float = 0.05) -> AsyncIterator[None]:
    """Submit a task every `every` seconds while the block runs, so every process keeps calling."""

    async def feed() -> None:
        n = 0
        while True:
            submitted.append((await queue.submit(f"Hello {n}", max_steps=2)).task_id)
            n += 1
            await asyncio.sleep(every)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_recovering_provider_gets_one_probe_per_cooldown_then_closes_for_everyone(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, fleet: Fleet
) -> None:
    cooldown = 1.0
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        cfg = config.model_copy(
            update={
                "providers": two(primary, backup),
                "breaker_failure_threshold": 2,
                "breaker_cooldown_seconds": cooldown,
                "worker_concurrency": 2,
                "claim_idle_seconds": 30,
            }
        )
        key = cfg.keys().breaker("primary")
        # Open the circuit before any worker runs, as two failed calls report it (the same script):
        # from then on every request the primary receives is a probe, until one succeeds.
        policy = Policy(failure_threshold=2, cooldown_seconds=cooldown, probe_timeout_seconds=10)
        script = circuit_script(redis_client)
        opened = time.time()  # before Redis opens it: the first probe may come a cool-down after that
        for token in ("a", "b"):
            await run_op(script, key, "failure", policy=policy, token=token)
        assert await redis_client.hget(key, "state") == str(int(BreakerState.OPEN))  # type: ignore[misc]

        queue = TaskQueue.from_config(cfg, redis_client)
        await queue.ensure_group()
        await fleet.start(cfg, burst=False, count=WORKERS, metrics=True)
        await fleet.started()
        submitted: list[str] = []
        async with feeding(queue, submitted):
            await eventually(lambda: len(primary.calls) >= 3, timeout=60)  # three failed probes at least
            primary.faults.error_ratio = 0.0  # the provider recovers: the next probe succeeds
            await eventually(primary.completed, timeout=60)

            async def closed_for_everyone() -> bool:
                scrapes = [await scrape(url) for url in fleet.metrics_urls]
                return all(
                    s[("llm_circuit_state", "primary", "")] == BreakerState.CLOSED
                    and s.get(("llm_provider_calls_total", "primary", "ok"), 0) >= 1
                    for s in scrapes
                )

            await eventually(closed_for_everyone, timeout=60)
        await fleet.stop()

    calls = sorted(primary.calls, key=lambda c: c.started)
    first_ok = next(i for i, c in enumerate(calls) if c.outcome == "ok")
    probes = calls[: first_ok + 1]
    print("probes:", [(c.outcome, round(c.started - opened, 3)) for c in probes])
    assert len(probes) >= 4 and all(c.outcome == "500" for c in probes[:-1])
    assert probes[0].started - opened >= cooldown - 0.005  # clocks: the server's and Redis's, both wall time
    for previous, probe in itertools.pairwise(probes):
        # the previous probe's failure re-opened the circuit after the server answered it
        assert probe.started - _finished(previous) >= cooldown - 0.005, (previous, probe)
    answered = _finished(probes[-1])
    assert all(c.started >= answered for c in calls[first_ok + 1 :])  # nothing overlapped the good probe
    assert len(calls) >= len(probes) + WORKERS - 1  # then the primary took every process's calls again
    assert not await redis_client.exists(key)  # closed with no failures: no key
    records = [await queue.get(task_id) for task_id in submitted]
    assert TaskStatus.FAILED not in {r.status for r in records}  # the backup served what the primary could not


def _finished(call: CallRecord) -> float:
    assert call.finished is not None
    return call.finished

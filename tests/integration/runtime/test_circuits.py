"""The shared circuit's Lua script and its fallback, on a real redis-server (and the local model servers).

Covers:
- the script agrees with the pure `breaker.decide` / `breaker.record` / `breaker.view`: 80 seeded
  random sequences of asks, successes, failures, releases and peeks by a few callers, on a fixed
  clock passed to the script, compared after every step (decision, the stored hash, the state and
  wait it answers);
- the key is `agent:{<namespace>/<service>}:breaker:<provider>`, absent while closed with no
  failures (a success deletes it), and carries a TTL while it holds state;
- a probe answered with a 429 hands its turn back (the shared backoff holds the primary meanwhile):
  the next call probes at once, succeeds, and the circuit is closed (its key gone);
- a worker stops even when the circuits' periodic refresh swallows its cancellation (redis-py's
  asyncio client can, when the cancel lands inside a command: redis/redis-py#2028);
- with Redis stopped, a `SharedCircuit` falls back to this process's breaker: calls go on, the
  dead primary gets exactly `failure_threshold` calls before the process's circuit opens, the
  fallback is logged once per provider however many script calls fail, and the gauge shows the
  process's own state; Redis back, the next refresh reads the shared state again (logged once).
"""

from __future__ import annotations

import asyncio
import random
import time

import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from agent_runtime.breaker import BreakerState, Circuit, Decision, Outcome, Policy, decide, record, view
from agent_runtime.circuits import ProviderCircuit, SharedCircuit, circuit_script, run_op
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.constants import ServiceKeys
from agent_runtime.metrics import Metrics
from agent_runtime.providers import ProviderSet, build_providers
from agent_runtime.worker import Worker
from tests.integration.runtime.conftest import MakeWorker

LABELS = {"service": "svc", "track": "stable"}
_OPS = ["ask", "ask", "ask", "success", "failure", "failure", "failure", "release", "peek"]


async def stored(client: redis.asyncio.Redis, key: str) -> Circuit:
    """The circuit as the script left it in Redis (times back in seconds)."""
    fields = await client.hgetall(key)  # type: ignore[misc]
    if not fields:
        return Circuit()
    return Circuit(
        state=BreakerState(int(fields["state"])),
        failures=int(fields["failures"]),
        opened_at=int(fields["opened_at"]) / 1_000_000,
        probe=fields["probe"],
        probe_started=int(fields["probe_started"]) / 1_000_000,
    )


async def test_script_agrees_with_the_pure_decision(redis_client: redis.asyncio.Redis) -> None:
    script = circuit_script(redis_client)
    rng = random.Random(14)
    probes = opened = 0
    for case in range(80):
        policy = Policy(
            failure_threshold=rng.randint(1, 4),
            cooldown_seconds=rng.choice([0, 1, 3]),
            probe_timeout_seconds=rng.choice([1, 2, 5]),
        )
        key = ServiceKeys("test", "agree").breaker(f"p{case}")
        circuit, now, issued = Circuit(), 0, ["stale"]
        for step in range(40):
            now += rng.choice([0, 0, 1, 2])  # whole seconds: the same instants in µs and in seconds
            op = rng.choice(_OPS)
            if op == "ask":
                token = f"t{step}"
                issued.append(token)
            else:
                token = rng.choice(issued[-3:])
            reply = await run_op(script, key, op, policy=policy, token=token, now_us=now * 1_000_000)
            if op == "ask":
                decision, circuit = decide(policy, circuit, now, token)
                assert reply.decision == decision, (case, step)
                probes += decision == Decision.PROBE
            else:
                assert reply.decision is None
                if op != "peek":
                    before = circuit.state
                    circuit = record(policy, circuit, Outcome(op), now, token)
                    opened += before != BreakerState.OPEN and circuit.state == BreakerState.OPEN
            assert await stored(redis_client, key) == circuit, (case, step, op)
            seen = view(policy, circuit, now)
            assert (reply.state, reply.failures) == (circuit.state, circuit.failures), (case, step)
            assert reply.wait_seconds == seen.wait(now), (case, step)
    assert probes > 50 and opened > 50  # the sequences went through every transition, many times


async def test_key_and_ttl(redis_client: redis.asyncio.Redis) -> None:
    key = RuntimeConfig(service="svc", namespace="team-a").keys().breaker("primary")
    assert key == "agent:{team-a/svc}:breaker:primary"
    script = circuit_script(redis_client)
    policy = Policy(failure_threshold=2, cooldown_seconds=30, probe_timeout_seconds=120)
    await run_op(script, key, "success", policy=policy, token="a")
    assert not await redis_client.exists(key)
    reply = await run_op(script, key, "failure", policy=policy, token="a")
    assert reply.state == BreakerState.CLOSED and reply.failures == 1
    assert 86_000_000 < await redis_client.pttl(key) <= 86_400_000  # a day: longer than 2 * (30 + 120) s
    reply = await run_op(script, key, "failure", policy=policy, token="b")
    assert reply.state == BreakerState.OPEN and 29 < reply.wait_seconds <= 30  # on Redis's own clock
    assert (await run_op(script, key, "ask", policy=policy, token="c")).decision == Decision.DENY
    await run_op(script, key, "success", policy=policy, token="late")  # the provider answered after all
    assert not await redis_client.exists(key)


def two(primary: LocalModelServer, backup: LocalModelServer) -> list[ProviderConfig]:
    return [
        ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url=primary.url),
        ProviderConfig(name="backup", model="claude-haiku-4-5", base_url=backup.url),
    ]


async def test_a_rate_limited_probe_hands_its_turn_back(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis
) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        cfg = config.model_copy(
            update={"providers": two(primary, backup), "breaker_failure_threshold": 1, "breaker_cooldown_seconds": 0.2}
        )
        providers = build_providers(cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"),
                                    redis_client=redis_client)  # fmt: skip
        circuit = providers.circuits["primary"]

        async def call(n: int) -> str:
            reply = await providers.complete(system="s", messages=[{"role": "user", "content": f"Hi {n}"}],
                                             tools=[], max_tokens=50, task_id=f"t{n}")  # fmt: skip
            return reply.provider

        try:
            primary.faults.script = ["500"]
            assert await call(0) == "backup"  # the primary's circuit opens
            assert circuit.view().state == BreakerState.OPEN
            await eventually(lambda: circuit.view().available(time.monotonic()), timeout=10)  # cool-down over
            primary.faults.script = ["429"]
            primary.faults.retry_after = 0.05
            assert await call(1) == "backup"  # the probe got a 429: no verdict on the primary's health
            assert circuit.view().state == BreakerState.HALF_OPEN and circuit.view().available(time.monotonic())
            assert await call(2) == "primary"  # the next caller probes (after the 429's backoff) and closes it
            assert [c.outcome for c in primary.calls] == ["500", "429", "ok"]
            assert not await redis_client.exists(cfg.keys().breaker("primary"))
        finally:
            await providers.aclose()


class SwallowsCancellation:
    """A refresh that swallows the cancellation landing in it, as redis-py sometimes does inside a command."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.swallowed = 0

    async def refresh(self) -> None:
        if self.swallowed:
            return  # once is enough: a loop that goes round again now spins instead of hanging the test
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.swallowed += 1


async def test_a_worker_stops_though_a_refresh_swallows_its_cancellation(make_worker: MakeWorker) -> None:
    parts = make_worker()
    refresh = SwallowsCancellation()
    worker = Worker(
        queue=parts.queue, runner=parts.worker.runner, metrics=parts.metrics, depth_interval_seconds=0.01,
        circuits=refresh,
    )  # fmt: skip
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(refresh.entered.wait(), 30)  # the periodic refresh is under way
    worker.stop()
    done, _ = await asyncio.wait({running}, timeout=30)
    if not done:  # before the fix: its loop went round again and `run()` never returned
        running.cancel()  # a second cancellation, not swallowed this time
        await asyncio.wait({running}, timeout=30)
    assert done and refresh.swallowed == 1


async def test_falls_back_to_the_process_breaker_while_redis_is_away(
    config: RuntimeConfig, redis_server: LocalRedis, redis_client: redis.asyncio.Redis
) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        cfg = config.model_copy(update={"providers": two(primary, backup)})
        policy = Policy(failure_threshold=2, cooldown_seconds=60, probe_timeout_seconds=10)
        registry = CollectorRegistry()
        metrics = Metrics(registry, service="svc", track="stable")
        endpoints = build_providers(cfg, metrics=metrics)  # the providers alone: no limiter, no cache
        # retry_seconds 0: Redis is tried again on every call, and the fallback is still logged once
        shared = {
            name: SharedCircuit(
                redis_client, key=cfg.keys().breaker(name), provider=name, policy=policy, retry_seconds=0
            )
            for name in ("primary", "backup")
        }
        circuits: dict[str, ProviderCircuit] = dict(shared)
        providers = ProviderSet(endpoints.providers, strategy="failover", metrics=metrics, circuits=circuits)

        async def call(n: int) -> str:
            reply = await providers.complete(system="s", messages=[{"role": "user", "content": f"Hi {n}"}],
                                             tools=[], max_tokens=50, task_id=f"t{n}")  # fmt: skip
            return reply.provider

        try:
            with capture_logs() as logs:
                redis_server.stop()
                served = [await call(n) for n in range(5)]
                assert served == ["backup"] * 5
                assert [c.outcome for c in primary.calls] == ["500", "500"]  # this process's threshold, then open
                assert not shared["primary"].shared and not shared["backup"].shared
                gauge = registry.get_sample_value("llm_circuit_state", {**LABELS, "provider": "primary"})
                assert gauge == 2  # the process's own circuit, open
                redis_server.start()
                await providers.refresh()  # what the worker does periodically and on every scrape
                assert shared["primary"].shared and shared["backup"].shared
            lost = [e for e in logs if e["event"] == "circuit_shared_state_unavailable"]
            assert sorted(e["provider"] for e in lost) == ["backup", "primary"]  # once each
            assert lost[0]["fallback"] == "per-process breaker"
            back = [e for e in logs if e["event"] == "circuit_shared_state_back"]
            assert sorted(e["provider"] for e in back) == ["backup", "primary"]
            # Redis kept nothing of the outage: the shared circuit is closed, and it decides again.
            assert registry.get_sample_value("llm_circuit_state", {**LABELS, "provider": "primary"}) == 0
            assert await call(5) == "backup" and len(primary.calls) == 3
            assert (await stored(redis_client, cfg.keys().breaker("primary"))).failures == 1
        finally:
            await providers.aclose()

"""Provider failover, circuit breakers, retries, strategies and the openai-compatible kind (real servers).

Covers, with the local model server's fault injection and a real redis-server (which holds the
circuits: `circuits.SharedCircuit`; the fleet-wide behaviour is in test_shared_breakers.py):
- a primary answering 500 → the same task (first delivery) fails over to the backup; after
  `breaker_failure_threshold` failures the primary's circuit opens and it gets no more calls; after
  the cool-down exactly one probe goes to it; the probe's success closes the circuit
  (`llm_circuit_state` 0 → 2 → 1 → 0 along the way);
- every provider down → the task fails fast (well under a second, first delivery) with
  `all providers unavailable`, `llm_provider_healthy` is 0 for each, and the next task fails
  without any model call;
- retries of one provider: exponential backoff with full jitter (each delay within its cap);
- `round_robin` alternates; `weighted` follows the weights;
- the `openai-compatible` kind speaks `POST /v1/chat/completions` for real: a tool-using task (and a
  tool error) round-trips through the dialect; its 429 `retry-after` is honoured; an anthropic primary
  failing over to an openai-compatible backup; a config without baseURL is refused.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime import errors
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.metrics import Metrics
from agent_runtime.providers import build_providers
from agent_runtime.tasks import TaskRecord, TaskStatus
from tests.integration.runtime.conftest import MakeWorker

LABELS = {"service": "svc", "track": "stable"}


def two(primary: LocalModelServer, backup: LocalModelServer, *, backup_kind: str = "anthropic") -> list[ProviderConfig]:
    backup_url = backup.url + "/v1" if backup_kind == "openai-compatible" else backup.url
    return [
        ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url=primary.url),
        ProviderConfig(name="backup", kind=backup_kind, model="claude-haiku-4-5", base_url=backup_url),
    ]


async def run(parts: object, *texts: str) -> list[TaskRecord]:
    ids = [(await parts.queue.submit(text, max_steps=6)).task_id for text in texts]  # type: ignore[attr-defined]
    await asyncio.wait_for(parts.worker.run(), 20)  # type: ignore[attr-defined]
    return [await parts.queue.get(task_id) for task_id in ids]  # type: ignore[attr-defined]


def circuit(registry: CollectorRegistry, provider: str) -> float | None:
    return registry.get_sample_value("llm_circuit_state", {**LABELS, "provider": provider})


async def test_failover_breaker_opens_half_opens_closes(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        cfg = config.model_copy(
            update={"providers": two(primary, backup), "breaker_failure_threshold": 2, "breaker_cooldown_seconds": 0.4}
        )
        registry = CollectorRegistry()
        parts = make_worker(cfg=cfg, registry=registry, concurrency=1)
        first, second, third = await run(parts, "Hi one", "Hi two", "Hi three")
        assert [r.status for r in (first, second, third)] == [TaskStatus.SUCCEEDED] * 3
        assert first.deliveries == 1 and first.last_error is None  # failed over within the same delivery
        assert [c.outcome for c in primary.calls] == ["500", "500"]  # then the circuit opened
        assert len(backup.calls) == 3
        assert circuit(registry, "primary") == 2 and circuit(registry, "backup") == 0
        fallbacks = {**LABELS, "provider": "backup"}  # two failed over, the third skipped the open circuit
        assert registry.get_sample_value("agent_provider_fallbacks_total", fallbacks) == 3
        assert third.degradation == "fallback_only"

        await asyncio.sleep(0.45)
        assert parts.metrics.exposition() and circuit(registry, "primary") == 1  # cool-down over: half-open
        primary.faults.error_ratio = 0.0
        (fourth,) = await run(parts, "Hi four")
        assert fourth.status == TaskStatus.SUCCEEDED and len(primary.calls) == 3  # the single probe
        assert circuit(registry, "primary") == 0  # closed again
        assert registry.get_sample_value("llm_provider_healthy", {**LABELS, "provider": "primary"}) == 1


async def test_half_open_lets_one_probe_through(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.script = ["500"]
        cfg = config.model_copy(
            update={"providers": two(primary, backup), "breaker_failure_threshold": 1, "breaker_cooldown_seconds": 0.2}
        )
        parts = make_worker(cfg=cfg, concurrency=8)
        await run(parts, "Hi")  # opens the primary's circuit
        await asyncio.sleep(0.25)
        primary.faults.latency_seconds = 0.3  # the probe is slow: the other calls meanwhile go to the backup
        records = await run(parts, *(f"Hi {n}" for n in range(6)))
        assert all(r.status == TaskStatus.SUCCEEDED for r in records)
        assert len(primary.calls) == 2  # the failure, then exactly one probe
        assert len(backup.calls) == 1 + 5


async def test_all_providers_down_fails_fast(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = backup.faults.error_ratio = 1.0
        backup.faults.error_status = 503
        cfg = config.model_copy(
            update={"providers": two(primary, backup), "breaker_failure_threshold": 1, "breaker_cooldown_seconds": 60}
        )
        registry = CollectorRegistry()
        parts = make_worker(cfg=cfg, registry=registry, concurrency=1)
        started = time.monotonic()
        first, second = await run(parts, "Hi", "Hi again")
        assert time.monotonic() - started < 1.0
        for record in (first, second):
            assert record.status == TaskStatus.FAILED and record.deliveries == 1
            assert record.error is not None and record.error.startswith(
                "all providers unavailable: circuit open for primary (next probe in 60 s), backup (next probe in 60 s)"
            )
        assert first.error is not None and first.error.endswith("answered HTTP 503: injected fault: HTTP 503")
        assert len(primary.calls) == len(backup.calls) == 1  # the second task called nobody
        for name in ("primary", "backup"):
            assert registry.get_sample_value("llm_provider_healthy", {**LABELS, "provider": name}) == 0
            assert circuit(registry, name) == 2
        assert registry.get_sample_value("agent_degradation_level", LABELS) == 3


async def test_retries_back_off_exponentially_with_jitter(
    model_server: LocalModelServer, config: RuntimeConfig
) -> None:
    model_server.faults.script = ["500", "529", "500"]
    cfg = config.model_copy(update={"provider_max_retries": 3, "retry_base_seconds": 0.1, "retry_max_seconds": 0.3})
    providers = build_providers(cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"))
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(seconds)

    providers._sleep = sleep
    providers._rng = random.Random(7)
    try:
        reply = await providers.complete(system="s", messages=[{"role": "user", "content": "Hi"}], tools=[],
                                         max_tokens=50, task_id="t")  # fmt: skip
    finally:
        await providers.aclose()
    assert reply.text().startswith("You asked: Hi")
    assert [c.outcome for c in model_server.calls] == ["500", "529", "500", "ok"]
    assert len(delays) == 3
    for delay, cap in zip(delays, (0.1, 0.2, 0.3), strict=True):  # base * 2^n, capped at retry_max
        assert 0 <= delay <= cap
    assert len(set(delays)) == 3  # jittered


async def test_strategies(config: RuntimeConfig) -> None:
    async with LocalModelServer() as a, LocalModelServer() as b:
        for strategy, weights, calls in (("round_robin", (1, 1), 10), ("weighted", (3, 1), 200)):
            a.calls.clear()
            b.calls.clear()
            providers_cfg = [
                ProviderConfig(name="a", model="claude-sonnet-5-5", base_url=a.url, weight=weights[0]),
                ProviderConfig(name="b", model="claude-sonnet-5-5", base_url=b.url, weight=weights[1]),
            ]
            cfg = config.model_copy(update={"providers": providers_cfg, "strategy": strategy})
            providers = build_providers(cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"))
            providers._rng = random.Random(1)
            try:
                for n in range(calls):
                    await providers.complete(system="s", messages=[{"role": "user", "content": f"Hi {n}"}], tools=[],
                                             max_tokens=50, task_id="t")  # fmt: skip
            finally:
                await providers.aclose()
            if strategy == "round_robin":
                assert len(a.calls) == len(b.calls) == 5
            else:
                assert 130 <= len(a.calls) <= 170 and len(a.calls) + len(b.calls) == 200


async def test_openai_compatible_provider(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as server:
        provider = ProviderConfig(
            name="gw", kind="openai-compatible", model="llama-3.1-70b", base_url=server.url + "/v1"
        )
        cfg = config.model_copy(update={"providers": [provider], "provider_max_retries": 1})
        server.faults.script = ["ok", "429", "ok", "ok"]
        server.faults.retry_after = 0.3
        sums, tool_error = await run(make_worker(cfg=cfg, concurrency=1), "What is 2+3 and 4*5?", "What is 1/0?")
        assert sums.status == TaskStatus.SUCCEEDED and sums.result == "The answer: 2+3 = 5; 4*5 = 20."
        assert tool_error.result == "The answer: could not compute 1/0 (division by zero)."
        assert {c.dialect for c in server.calls} == {"openai"}
        assert [c.step for c in server.calls[:4]] == [0, 1, 1, 2]
        rejected, retried = server.calls[1], server.calls[2]
        assert rejected.outcome == "429" and rejected.finished is not None
        assert retried.started - rejected.finished >= 0.29  # its retry-after, through the shared backoff
        assert sums.checkpoint.usage.input_tokens == sum(c.input_tokens for c in server.calls[:4])


async def test_anthropic_fails_over_to_openai_compatible(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        primary.faults.error_ratio = 1.0
        primary.faults.error_status = 529
        cfg = config.model_copy(update={"providers": two(primary, backup, backup_kind="openai-compatible")})
        (record,) = await run(make_worker(cfg=cfg), "What is 6*7?")
        assert record.status == TaskStatus.SUCCEEDED and record.result == "The answer: 6*7 = 42."
        assert [c.dialect for c in backup.calls] == ["openai", "openai"]


def test_openai_compatible_needs_a_base_url(config: RuntimeConfig) -> None:
    cfg = config.model_copy(update={"providers": [ProviderConfig(name="gw", kind="openai-compatible", model="m")]})
    with pytest.raises(errors.ConfigError, match=r"providers\[gw\]\.baseURL: an openai-compatible provider needs one"):
        environ = {"AGENT_PROVIDER_GW_API_KEY": "k"}
        build_providers(cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"), environ=environ)
    cfg = config.model_copy(
        update={"providers": [ProviderConfig(name="x", kind="grpc", model="m", base_url="http://x")]}
    )
    with pytest.raises(errors.ConfigError, match="not one of anthropic, openai-compatible"):
        build_providers(cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"), environ={})


def test_every_provider_outcome_is_exported_from_the_start(config: RuntimeConfig) -> None:
    """Each provider's call counters exist at 0 before any call, so a window's increase() sees the first failure."""
    cfg = config.model_copy(
        update={
            "providers": [
                ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url="http://127.0.0.1:9"),
                ProviderConfig(name="backup", model="claude-haiku-4-5", base_url="http://127.0.0.1:9"),
            ]
        }
    )
    registry = CollectorRegistry()
    build_providers(cfg, metrics=Metrics(registry, service="svc", track="stable"), environ={})
    for provider in ("primary", "backup"):
        for outcome in ("ok", "unavailable", "rate_limited", "error"):
            labels = {**LABELS, "provider": provider, "outcome": outcome}
            assert registry.get_sample_value("llm_provider_calls_total", labels) == 0.0, labels

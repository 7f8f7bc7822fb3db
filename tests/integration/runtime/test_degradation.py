"""Graceful degradation: the pure level function and the agent running at each level (real model server).

Covers: `level_of` for every shape of circuit states (all closed → full; a fallback open → reduced
tools; primary open → fallback only; nothing can take a call → static; no providers → static); a
task at `full` is offered every tool; with the backup's circuit open the task runs at
`reduced_tools`, is offered only `degraded_tools`, and records the level on its result; with the
primary open it runs `fallback_only` on the backup; with every circuit open it fails at once with
`all providers unavailable`, the static message as its result and `static` recorded, having called
no model; `agent_degradation_level` follows.
"""

from __future__ import annotations

import asyncio

from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime.breaker import BreakerState, Outcome
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.degradation import STATIC_MESSAGE, Level, level_of
from agent_runtime.tasks import TaskRecord, TaskStatus
from tests.integration.runtime.conftest import MakeWorker

C, H, X = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN  # X: open
LABELS = {"service": "svc", "track": "stable"}


def test_level_of() -> None:
    assert level_of([C]) == Level.FULL
    assert level_of([C, C, C]) == Level.FULL
    assert level_of([C, X]) == Level.REDUCED_TOOLS
    assert level_of([C, H]) == Level.REDUCED_TOOLS
    assert level_of([H]) == Level.REDUCED_TOOLS  # the primary is being probed
    assert level_of([X, C]) == Level.FALLBACK_ONLY
    assert level_of([X, H, X]) == Level.FALLBACK_ONLY
    assert level_of([X]) == Level.STATIC
    assert level_of([X, X, X]) == Level.STATIC
    assert level_of([]) == Level.STATIC
    assert [level.label for level in Level] == ["full", "reduced_tools", "fallback_only", "static"]


async def _report(parts: object, provider: str, outcome: Outcome) -> None:
    """One call's outcome, as the call path reports it (here to the service's circuit in Redis)."""
    circuit = parts.providers.circuits[provider]  # type: ignore[attr-defined]
    await circuit.record(await circuit.ask(), outcome)


async def _run(parts: object, text: str) -> TaskRecord:
    made = await parts.queue.submit(text, max_steps=6)  # type: ignore[attr-defined]
    await asyncio.wait_for(parts.worker.run(), 20)  # type: ignore[attr-defined]
    return await parts.queue.get(made.task_id)  # type: ignore[attr-defined,no-any-return]


async def test_levels_through_the_agent(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as primary, LocalModelServer() as backup:
        cfg = config.model_copy(
            update={
                "providers": [
                    ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url=primary.url),
                    ProviderConfig(name="backup", model="claude-haiku-4-5", base_url=backup.url),
                ],
                "breaker_failure_threshold": 1,
                "breaker_cooldown_seconds": 60,
                "degraded_tools": ["calculator"],
            }
        )
        registry = CollectorRegistry()
        parts = make_worker(cfg=cfg, registry=registry)

        record = await _run(parts, "What is 2+3?")
        assert record.status == TaskStatus.SUCCEEDED and record.degradation == "full"
        assert primary.calls[0].tools == ["calculator", "current_time", "word_count"]

        await _report(parts, "backup", Outcome.FAILURE)  # the backup's circuit opens
        record = await _run(parts, "What is 4+5?")
        assert record.status == TaskStatus.SUCCEEDED and record.degradation == "reduced_tools"
        assert record.view().degradation == "reduced_tools"
        assert [c.tools for c in primary.calls[-2:]] == [["calculator"], ["calculator"]]
        assert registry.get_sample_value("agent_degradation_level", LABELS) == 1

        await _report(parts, "primary", Outcome.FAILURE)
        await _report(parts, "backup", Outcome.SUCCESS)
        calls_before = len(primary.calls)
        record = await _run(parts, "Hello")
        assert record.status == TaskStatus.SUCCEEDED and record.degradation == "fallback_only"
        assert len(primary.calls) == calls_before and backup.calls[-1].tools == ["calculator"]
        assert registry.get_sample_value("agent_degradation_level", LABELS) == 2

        await _report(parts, "backup", Outcome.FAILURE)
        calls = len(primary.calls) + len(backup.calls)
        record = await _run(parts, "Hello again")
        assert record.status == TaskStatus.FAILED and record.degradation == "static"
        assert record.error is not None and record.error.startswith("all providers unavailable: circuit open for")
        assert record.result == STATIC_MESSAGE
        assert len(primary.calls) + len(backup.calls) == calls  # no model was called
        assert registry.get_sample_value("agent_degradation_level", LABELS) == 3
        assert registry.get_sample_value("llm_circuit_state", {**LABELS, "provider": "primary"}) == 2

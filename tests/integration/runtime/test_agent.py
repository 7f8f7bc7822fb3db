"""The agent loop and worker against faults injected by the local model server (real anthropic client).

Covers: a malformed provider reply fails the task with a clear error (never stuck in running);
429 with retry-after is retried by the SDK no sooner than asked, and the task succeeds; a 500 leaves
the task queued with its last error, it is reclaimed after the idle timeout and succeeds on the next
delivery; a provider that keeps failing sends the task to the dead-letter stream with the last error;
failover to a second provider (counted, and the first marked unhealthy); a tool error goes back to
the model as an error tool_result; user tools loaded by import path; resume from a checkpoint
re-sends no completed step.
"""

from __future__ import annotations

import asyncio
import sys
import types

import pytest
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime import errors
from agent_runtime.agent import Agent
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.metrics import Metrics
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import build_providers
from agent_runtime.tasks import Checkpoint, TaskRecord, TaskStatus
from agent_runtime.tools import Tool, ToolRegistry, builtin_registry, load_registry
from tests.integration.runtime.conftest import MakeWorker


async def run_one(make_worker: MakeWorker, text: str, **worker: object) -> TaskRecord:
    parts = make_worker(**worker)
    made = await parts.queue.submit(text, max_steps=6)
    await asyncio.wait_for(parts.worker.run(), 20)
    return await parts.queue.get(made.task_id)


async def test_malformed_reply_fails_clearly(make_worker: MakeWorker, model_server: LocalModelServer) -> None:
    model_server.faults.script = ["ok", "malformed"]
    record = await run_one(make_worker, "What is 3*3?")
    assert record.status == TaskStatus.FAILED
    assert record.error is not None and record.error.startswith("provider 'local' sent a malformed reply")
    assert record.checkpoint.step == 1  # the first step's transcript is kept
    assert len(model_server.calls) == 2  # not retried: a protocol violation is final


async def test_rate_limit_retry_after_is_honoured(
    make_worker: MakeWorker, model_server: LocalModelServer, config: RuntimeConfig
) -> None:
    model_server.faults.script = ["429"]
    model_server.faults.retry_after = 0.4
    record = await run_one(make_worker, "Hello there", cfg=config.model_copy(update={"provider_max_retries": 1}))
    assert record.status == TaskStatus.SUCCEEDED
    first, second = model_server.calls
    assert first.outcome == "429" and second.outcome == "ok"
    assert first.finished is not None and second.started - first.finished >= 0.35


async def test_server_error_is_retried_on_a_later_delivery(
    make_worker: MakeWorker, model_server: LocalModelServer
) -> None:
    model_server.faults.script = ["500"]
    record = await run_one(make_worker, "What is 8-3?")
    assert record.status == TaskStatus.SUCCEEDED
    assert record.deliveries == 2
    assert record.last_error == "provider 'local' answered HTTP 500: injected fault: HTTP 500"
    assert [c.outcome for c in model_server.calls] == ["500", "ok", "ok"]


async def test_persistent_failure_goes_to_dead_letter(make_worker: MakeWorker, model_server: LocalModelServer) -> None:
    model_server.faults.error_ratio = 1.0
    model_server.faults.error_status = 529
    parts = make_worker()
    made = await parts.queue.submit("Hi", max_steps=6)
    await asyncio.wait_for(parts.worker.run(), 20)
    record = await parts.queue.get(made.task_id)
    assert record.status == TaskStatus.FAILED
    message = "provider 'local' answered HTTP 529: injected fault: HTTP 529"
    assert record.error == f"gave up after 3 deliveries; last error: {message}"
    assert [d["task_id"] for d in await parts.queue.dead_letters()] == [made.task_id]
    assert len(model_server.calls) == 3


async def test_failover_to_second_provider(make_worker: MakeWorker, config: RuntimeConfig) -> None:
    async with LocalModelServer() as down, LocalModelServer() as up:
        down.faults.error_ratio = 1.0
        providers = [
            ProviderConfig(name="primary", model="claude-sonnet-5-5", base_url=down.url),
            ProviderConfig(name="backup", model="claude-haiku-4-5", base_url=up.url),
        ]
        registry = CollectorRegistry()
        record = await run_one(
            make_worker, "Hi", cfg=config.model_copy(update={"providers": providers}), registry=registry
        )
        assert record.status == TaskStatus.SUCCEEDED
        assert len(down.calls) == 1 and len(up.calls) == 1
        labels = {"service": "svc", "track": "stable"}
        assert registry.get_sample_value("agent_provider_fallbacks_total", {**labels, "provider": "backup"}) == 1
        assert registry.get_sample_value("llm_provider_healthy", {**labels, "provider": "primary"}) == 0
        assert registry.get_sample_value("llm_provider_healthy", {**labels, "provider": "backup"}) == 1
        cost = (up.calls[0].input_tokens * 1.0 + up.calls[0].output_tokens * 5.0) / 1e6  # haiku 4.5 prices
        assert record.checkpoint.usage.cost_usd == pytest.approx(cost)


async def test_tool_error_goes_back_to_the_model(make_worker: MakeWorker, model_server: LocalModelServer) -> None:
    registry = CollectorRegistry()
    record = await run_one(make_worker, "What is 1/0?", registry=registry)
    assert record.status == TaskStatus.SUCCEEDED
    assert record.result == "The answer: could not compute 1/0 (division by zero)."
    labels = {"service": "svc", "track": "stable", "tool_name": "calculator"}
    assert registry.get_sample_value("agent_tool_calls_total", {**labels, "status": "error"}) == 1


def test_user_tools_by_import_path() -> None:
    module = types.ModuleType("tests_runtime_user_tools")
    module.TOOLS = [Tool("shout", "Upper-case a text.", {"type": "object"}, lambda i: str(i["text"]).upper())]  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        registry = load_registry([module.__name__])
        assert registry.names() == ["calculator", "current_time", "shout", "word_count"]
        assert asyncio.run(registry.call("shout", {"text": "hi"})) == "HI"
    finally:
        del sys.modules[module.__name__]
    with pytest.raises(errors.ConfigError, match=r"cannot import 'no\.such\.module'"):
        load_registry(["no.such.module"])
    with pytest.raises(errors.ConfigError, match="two tools are named 'calculator'"):
        ToolRegistry([*builtin_registry()._tools.values(), builtin_registry()._tools["calculator"]])


async def test_resume_from_checkpoint_sends_no_completed_step(
    model_server: LocalModelServer, config: RuntimeConfig
) -> None:
    """Stop after the first tool step, then resume from the saved checkpoint: step 0 is not sent again."""
    metrics = Metrics(CollectorRegistry(), service="svc", track="stable")
    providers = build_providers(config, metrics=metrics)
    agent = Agent(
        providers=providers, tools=builtin_registry(), prices=PriceTable(), metrics=metrics,
        system_prompt="s", max_output_tokens=100,
    )  # fmt: skip
    saved: list[Checkpoint] = []

    class Crash(Exception):
        pass

    async def save_then_crash(checkpoint: Checkpoint) -> None:
        saved.append(checkpoint)
        if len(saved) == 2:  # the first model reply and its tool result are stored
            raise Crash

    with pytest.raises(Crash):
        await agent.run("t1", "What is 2+2 and 3+3?", Checkpoint(), max_steps=6, save=save_then_crash)
    assert [c.step for c in model_server.calls] == [0]

    async def save(checkpoint: Checkpoint) -> None:
        saved.append(checkpoint)

    outcome = await agent.run("t1", "ignored on resume", saved[-1], max_steps=6, save=save)
    assert outcome.result == "The answer: 2+2 = 4; 3+3 = 6."
    assert [c.step for c in model_server.calls] == [0, 1, 2]
    assert outcome.checkpoint.usage.input_tokens == sum(c.input_tokens for c in model_server.calls)
    await providers.aclose()

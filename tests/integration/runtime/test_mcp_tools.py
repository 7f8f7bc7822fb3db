"""MCP tools end to end: real MCP servers, the runtime's worker, a real redis-server and the local model.

Covers, against `mcp-server-time` from PyPI (run as its own stdio process, and its server object over
the SDK's streamable HTTP) and the development server `agentops_dev.mcpservers faults` (the SDK's
`MCPServer`, with tools that misbehave on purpose):
- the task's answer holds what the tool returned, over stdio and over HTTP, each call counted by
  `agent_tool_calls_total{tool_name,status}`; input that does not match the tool's schema is refused
  before anything is sent;
- a tool left out by `allowTools` is never offered to the model (the model server's own log of each
  request's tools) and the model says so;
- a slow tool times out with the limit named in the task's answer; after `failureThreshold`
  timeouts the server's breaker opens and its next call fails at once;
- a server killed during a call: with `sideEffects: none` the call is sent again to the new process
  and succeeds; with `external` it is not sent again, the answer says the outcome is unknown, and the
  same worker goes on to run the next task with the server back;
- a worker SIGKILLed during an `external` call: the task resumes on another worker, which reuses the
  stored result of the earlier call and does not send the interrupted one again (the server's ledger);
- a server down at start: the worker starts, /ready stays 200 and names the server under `degraded`,
  `agent_tool_server_up` reads 0 and tasks still run; once the server comes up its tools are offered;
- `notifications/tools/list_changed`: a tool added by the server is offered on the next step;
- a Python tool module (`python_tools`): its allowlist, input schema and result cap;
- degraded mode keeps `<server>__*` tools listed in `degraded_tools`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime.agent import kept_when_degraded
from agent_runtime.config import McpServerConfig, PythonToolsConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskRecord, TaskStatus
from tests.integration.runtime.conftest import MakeWorker

STDIO_TIME = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]


class McpProcess:
    """An MCP server over streamable HTTP, as its own process (`agentops_dev.mcpservers`)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def start(self) -> str:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentops_dev.mcpservers", *self.args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line.startswith(b"listening "), line
        self.url = line.decode().split()[1]
        return self.url

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def mcp_processes() -> AsyncIterator[Callable[..., Awaitable[McpProcess]]]:
    started: list[McpProcess] = []

    async def start(*args: str) -> McpProcess:
        process = McpProcess(*args)
        started.append(process)
        await process.start()
        return process

    yield start
    for process in started:
        await process.stop()


def with_servers(config: RuntimeConfig, *servers: McpServerConfig, **update: object) -> RuntimeConfig:
    return config.model_copy(update={"mcp_servers": list(servers), "max_input_chars": 20_000, **update})


async def run_task(
    make_worker: MakeWorker, cfg: RuntimeConfig, redis_client: redis.asyncio.Redis, text: str
) -> TaskRecord:
    """Submit one task, drain the queue with a burst worker, return the stored record."""
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    made = await queue.submit(text, max_steps=6)
    parts = make_worker(cfg=cfg)
    await parts.worker.run()
    return await queue.get(made.task_id)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"service": "svc", "track": "stable", **labels})


async def test_answer_holds_the_result_of_mcp_tools_over_stdio_and_http(
    config: RuntimeConfig,
    redis_client: redis.asyncio.Redis,
    make_worker: MakeWorker,
    model_server: LocalModelServer,
    mcp_processes: Callable[..., Awaitable[McpProcess]],
) -> None:
    http_time = await mcp_processes("time-http")
    cfg = with_servers(
        config,
        McpServerConfig(name="clock", command=STDIO_TIME),
        McpServerConfig(name="time", url=http_time.url, side_effects="none"),
    )
    text = (
        'call clock__get_current_time {"timezone": "Asia/Tokyo"} then '
        'call time__convert_time {"source_timezone": "Europe/Paris", "time": "12:30", "target_timezone": "Asia/Tokyo"}'
        ' then call clock__get_current_time {"tz": 5}'
    )
    registry = CollectorRegistry()
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    made = await queue.submit(text, max_steps=6)
    parts = make_worker(cfg=cfg, registry=registry)
    await parts.worker.run()
    record = await queue.get(made.task_id)

    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result is not None
    assert '"timezone": "Asia/Tokyo"' in record.result  # mcp-server-time's own answer, over stdio
    assert '"datetime": "' in record.result
    assert '"time_difference": "+8.0h"' in record.result  # its conversion, over streamable HTTP
    assert "clock__get_current_time failed: clock__get_current_time: invalid input" in record.result
    offered = set(model_server.calls[0].tools)
    assert {"clock__get_current_time", "clock__convert_time", "time__convert_time", "calculator"} <= offered
    assert sample(registry, "agent_tool_calls_total", tool_name="clock__get_current_time", status="ok") == 1
    assert sample(registry, "agent_tool_calls_total", tool_name="clock__get_current_time", status="error") == 1
    assert sample(registry, "agent_tool_calls_total", tool_name="time__convert_time", status="ok") == 1
    assert sample(registry, "agent_tool_call_seconds_count", tool_name="time__convert_time") == 1
    assert sample(registry, "agent_tool_server_up", server="time") == 1


async def test_a_tool_left_out_by_allow_tools_is_never_offered(
    config: RuntimeConfig,
    redis_client: redis.asyncio.Redis,
    make_worker: MakeWorker,
    model_server: LocalModelServer,
) -> None:
    cfg = with_servers(
        config,
        McpServerConfig(name="clock", command=STDIO_TIME, allow_tools=["get_current_time"]),
        builtin_tools=[],
    )
    text = (
        'call clock__convert_time {"source_timezone": "UTC", "time": "10:00", "target_timezone": "Asia/Tokyo"} '
        'and call clock__get_current_time {"timezone": "UTC"}'
    )
    record = await run_task(make_worker, cfg, redis_client, text)

    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result is not None
    assert "clock__convert_time was not offered" in record.result
    assert '"timezone": "UTC"' in record.result
    assert model_server.calls, "the model was called"
    for call in model_server.calls:
        assert call.tools == ["clock__get_current_time"]


async def test_a_slow_tool_times_out_with_the_limit_in_the_answer(
    tmp_path: Path,
    config: RuntimeConfig,
    redis_client: redis.asyncio.Redis,
    make_worker: MakeWorker,
) -> None:
    command = [sys.executable, "-m", "agentops_dev.mcpservers", "faults", "--transport", "stdio"]
    cfg = with_servers(config, McpServerConfig(name="faults", command=command, timeout_seconds=0.5))
    registry = CollectorRegistry()
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    made = await queue.submit('call faults__slow {"seconds": 60}', max_steps=6)
    parts = make_worker(cfg=cfg, registry=registry)
    await parts.worker.run()
    record = await queue.get(made.task_id)

    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result == "The answer: faults__slow failed: faults__slow timed out after 0.5 s (timeoutSeconds)."
    assert sample(registry, "agent_tool_calls_total", tool_name="faults__slow", status="timeout") == 1


async def test_a_servers_breaker_opens_after_repeated_timeouts(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, make_worker: MakeWorker
) -> None:
    command = [sys.executable, "-m", "agentops_dev.mcpservers", "faults", "--transport", "stdio"]
    cfg = with_servers(
        config,
        McpServerConfig(name="faults", command=command, timeout_seconds=0.3),
        breaker_failure_threshold=2,
        breaker_cooldown_seconds=600,
    )
    registry = CollectorRegistry()
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    text = " ".join(f'call faults__slow {{"seconds": {s}}}' for s in (30, 31)) + ' call faults__echo {"text": "hi"}'
    made = await queue.submit(text, max_steps=6)
    parts = make_worker(cfg=cfg, registry=registry)
    await parts.worker.run()
    record = await queue.get(made.task_id)

    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result is not None
    assert record.result.count("timed out after 0.3 s") == 2
    assert "faults__echo failed: faults__echo: MCP server 'faults' failed repeatedly; its circuit is open" in (
        record.result
    )
    assert sample(registry, "agent_tool_circuit_state", server="faults") == 2


def ledger_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_a_server_killed_mid_call_is_called_again_only_without_side_effects(
    tmp_path: Path,
    config: RuntimeConfig,
    redis_client: redis.asyncio.Redis,
    make_worker: MakeWorker,
) -> None:
    ledger = tmp_path / "ledger"
    command = [sys.executable, "-m", "agentops_dev.mcpservers", "faults", "--transport", "stdio", "--log", str(ledger)]
    # The timeout bounds the wait for the new process too: room for a slow start on a loaded machine.
    safe = with_servers(
        config, McpServerConfig(name="faults", command=command, side_effects="none", timeout_seconds=120)
    )
    record = await run_task(make_worker, safe, redis_client, 'call faults__die {"note": "a"}')
    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result == "The answer: faults__die returned survived a."
    assert ledger_lines(ledger) == ["die a", "die a"]  # the first process died during the call

    (tmp_path / "ledger.died").unlink()
    ledger.unlink()
    external = with_servers(
        config, McpServerConfig(name="faults", command=command, side_effects="external"), worker_concurrency=1
    )
    queue = TaskQueue.from_config(external, redis_client)
    await queue.ensure_group()
    first = await queue.submit('call faults__die {"note": "b"}', max_steps=6)
    parts = make_worker(cfg=external)
    await parts.worker.run()

    died = await queue.get(first.task_id)
    assert died.status == TaskStatus.SUCCEEDED, died.error
    assert died.result is not None
    assert "its outcome is unknown and it was not repeated (sideEffects: external)" in died.result
    assert ledger_lines(ledger) == ["die b"]
    # The same worker (its MCP session task respawns the server) runs the next task with the server back.
    await eventually(lambda: parts.tool_servers.servers[0].up, timeout=60)
    second = await queue.submit('call faults__echo {"text": "still here"}', max_steps=6)
    await parts.worker.run()
    after = await queue.get(second.task_id)
    assert after.status == TaskStatus.SUCCEEDED, after.error
    assert after.result == "The answer: faults__echo returned still here."
    assert parts.worker.processed == 2


@pytest.mark.slow
async def test_a_sigkilled_worker_resumes_without_sending_an_external_call_twice(
    *,
    tmp_path: Path,
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    make_worker: MakeWorker,
    mcp_processes: Callable[..., Awaitable[McpProcess]],
) -> None:
    ledger = tmp_path / "ledger"
    server = await mcp_processes("faults", "--transport", "http", "--log", str(ledger))
    cfg = with_servers(
        config, McpServerConfig(name="faults", url=server.url, timeout_seconds=120), claim_idle_seconds=0.5
    )
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    text = 'call faults__record {"note": "first"} then call faults__record {"note": "second", "hold_seconds": 100}'
    made = await queue.submit(text, max_steps=6)
    worker = ForkedRuntime(
        ["worker", "--metrics-port", "0"], config_path=write_config(tmp_path, cfg.model_dump(mode="json")),
        redis_url=redis_server.url,
    )  # fmt: skip
    await worker.start()
    try:
        await eventually(lambda: ledger_lines(ledger) == ["record first", "record second"], timeout=60)
        stored = await queue.get(made.task_id)
        assert stored.checkpoint.tools_started, "the external call was checkpointed before it was sent"
        worker.signal(signal.SIGKILL)
        await worker.wait(30)
    finally:
        await worker.kill()

    parts = make_worker(cfg=cfg)
    await parts.worker.run()  # reclaims the task once its entry has been idle for claim_idle_seconds
    record = await queue.get(made.task_id)
    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result is not None
    assert "faults__record returned recorded first" in record.result
    assert "faults__record failed: faults__record: this call was sent before the worker" in record.result
    assert ledger_lines(ledger) == ["record first", "record second"]  # neither call sent again


@pytest.mark.slow
async def test_a_server_down_at_start_degrades_without_stopping_the_worker(
    tmp_path: Path,
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    mcp_processes: Callable[..., Awaitable[McpProcess]],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    cfg = with_servers(config, McpServerConfig(name="time", url=url), tool_reconnect_seconds=0.5)
    metrics_port = free_port()
    worker = ForkedRuntime(
        ["worker", "--host", "127.0.0.1", "--metrics-port", str(metrics_port)],
        config_path=write_config(tmp_path, cfg.model_dump(mode="json")), redis_url=redis_server.url,
    )  # fmt: skip
    await worker.start()
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            await eventually(lambda: "worker_started" in worker.logs(), timeout=60)
            ready = await client.get("/ready")
            assert ready.status_code == 200
            assert "MCP server time unreachable" in ready.json()["degraded"]["time"]
            scraped = (await client.get("/metrics")).text
            assert 'agent_tool_server_up{server="time",service="svc",track="stable"} 0.0' in scraped

            queue = TaskQueue.from_config(cfg, redis_client)
            made = await queue.submit("compute 6*7", max_steps=6)

            async def finished() -> bool:
                return (await queue.get(made.task_id)).status == TaskStatus.SUCCEEDED

            await eventually(finished, timeout=60)
            assert (await queue.get(made.task_id)).result == "The answer: 6*7 = 42."

            await mcp_processes("time-http", "--port", str(port))

            async def up() -> bool:
                body: dict[str, object] = (await client.get("/ready")).json()
                return body == {"ready": True}

            await eventually(up, timeout=60)
            later = await queue.submit('call time__get_current_time {"timezone": "Europe/Berlin"}', max_steps=6)

            async def answered() -> bool:
                return (await queue.get(later.task_id)).status == TaskStatus.SUCCEEDED

            await eventually(answered, timeout=60)
            result = (await queue.get(later.task_id)).result or ""
            assert '"timezone": "Europe/Berlin"' in result
        assert worker.alive(), "the worker kept running"
    finally:
        worker.signal(signal.SIGTERM)
        await worker.wait(30)
        await worker.kill()


async def test_a_tool_added_by_the_server_is_offered_after_list_changed(
    config: RuntimeConfig,
    redis_client: redis.asyncio.Redis,
    make_worker: MakeWorker,
    model_server: LocalModelServer,
    mcp_processes: Callable[..., Awaitable[McpProcess]],
) -> None:
    server = await mcp_processes("faults", "--transport", "http")
    cfg = with_servers(config, McpServerConfig(name="faults", url=server.url))
    text = 'call faults__grow {"name": "fresh"} then call faults__fresh {}'
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    made = await queue.submit(text, max_steps=6)
    parts = make_worker(cfg=cfg)
    await parts.worker.run()
    record = await queue.get(made.task_id)

    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert "faults__fresh" not in model_server.calls[0].tools
    # The list is read again when the server announces the change; the model's next step sees it
    # only if the notification arrived first, which the server sends before answering `grow`.
    assert "faults__fresh" in model_server.calls[-1].tools
    assert record.result == "The answer: faults__grow returned added fresh; faults__fresh returned fresh here."


async def test_a_python_tool_module_with_its_policy(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, make_worker: MakeWorker, model_server: LocalModelServer
) -> None:
    module = PythonToolsConfig(module="tests.support.sample_tools", allow_tools=["shout"], max_result_bytes=300)
    cfg = config.model_copy(update={"python_tools": [module], "builtin_tools": [], "max_input_chars": 20_000})
    text = 'call shout {"text": "hey", "times": 200} call shout {"text": "hey", "times": 0} call secret {}'
    record = await run_task(make_worker, cfg, redis_client, text)

    assert record.status == TaskStatus.SUCCEEDED, record.error
    assert record.result == (
        "The answer: shout returned " + "HEY" * 100 + "\n[result truncated: 600 bytes, limit 300]; "
        "shout failed: shout: invalid input at times: 0 is less than the minimum of 1; secret was not offered."
    )
    assert all(call.tools == ["shout"] for call in model_server.calls)


def test_degraded_tools_keep_a_servers_tools_by_wildcard() -> None:
    kept = ["calculator", "time__*"]
    assert kept_when_degraded("time__get_current_time", kept)
    assert kept_when_degraded("calculator", kept)
    assert not kept_when_degraded("timer__x", kept)
    assert not kept_when_degraded("clock__get_current_time", kept)
    assert not kept_when_degraded("word_count", kept)


def test_tool_requests_of_the_local_model() -> None:
    from agentops_dev.localmodel import tool_requests

    assert tool_requests('call a__b {"x": {"y": [1]}} and call c {} and call d {bad') == [
        ("a__b", {"x": {"y": [1]}}),
        ("c", {}),
    ]
    assert json.dumps(tool_requests("no calls")) == "[]"

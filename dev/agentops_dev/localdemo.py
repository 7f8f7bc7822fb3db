"""The runtime demo, offline: redis-server, the local model server, the API and a worker, on loopback.

`run_runtime_demo(out)` starts them all (Redis in a temporary directory on a free port; the API under
uvicorn and the worker with its probe server, both in this process), submits a task that needs the
calculator tool over real HTTP with the bearer token, polls it to completion and writes the answer,
the usage and a few `/metrics` lines to `out`; then a task that calls a tool of an MCP server, the
reference `mcp-server-time` from PyPI, which the worker starts and speaks to over stdio. Everything it
started is stopped before it returns, also on error. `agentctl demo` and `agent-runtime demo` call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import httpx
import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from agent_runtime import constants
from agent_runtime import logging as runtime_logging
from agent_runtime.api import create_app
from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.config import McpServerConfig, ProviderConfig, RuntimeConfig
from agent_runtime.tasks import TERMINAL
from agent_runtime.worker import serve_probes
from agentops_dev.localmodel import MODEL, Faults, LocalModelServer
from agentops_dev.localredis import LocalRedis, free_port

__all__ = ["DEMO_PROMPT", "MCP_PROMPT", "run_runtime_demo"]

DEMO_PROMPT = "A crate holds 12*7+3 apples and a truck carries 2**10 crates. Work out both figures."
MCP_PROMPT = 'What time is it in Tokyo? call time__get_current_time {"timezone": "Asia/Tokyo"}'
MCP_TIME_COMMAND = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
_SHOWN_SERIES = (
    constants.SERIES_REQUESTS,
    constants.SERIES_COST,
    constants.METRIC_TOOL_CALLS,
    "agent_steps_count_sum",
    "agent_latency_seconds_count",
    constants.METRIC_QUEUE_DEPTH,
    constants.METRIC_PROVIDER_HEALTHY,
)


async def run_runtime_demo(
    out: TextIO, *, log_level: str = "warning", log_stream: TextIO | None = None, timeout: float = 60.0
) -> None:
    """Run the whole runtime locally, one task through it, and report to `out` (logs to `log_stream`, else stderr)."""
    saved = structlog.get_config()
    runtime_logging.configure(log_level, log_stream)
    try:
        await _demo(out, timeout)
    finally:
        structlog.configure(**saved)  # leave the caller's logging as it was


async def _demo(out: TextIO, timeout: float) -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis_server = LocalRedis(durable=False)
        await asyncio.to_thread(redis_server.start)
        stack.callback(redis_server.close)
        model = LocalModelServer(faults=Faults(latency_seconds=0.05))
        await model.start()
        stack.push_async_callback(model.stop)
        out.write(f"redis-server      {redis_server.url}\nlocal model       {model.url} ({MODEL})\n")

        config = RuntimeConfig(
            service="demo",
            providers=[ProviderConfig(name="local", model=MODEL, base_url=model.url)],
            max_steps_per_task=8,
            worker_concurrency=4,
            shutdown_grace_seconds=5,
            mcp_servers=[McpServerConfig(name="time", command=MCP_TIME_COMMAND, side_effects="none")],
        )
        token = secrets.token_urlsafe(24)
        api_url = await stack.enter_async_context(_api(config, redis_server.url, token))
        metrics_url = await stack.enter_async_context(_worker(config, redis_server.url))
        out.write(f"task API          {api_url}\nworker metrics    {metrics_url}{constants.METRICS_PATH}\n\n")

        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as client:
            submitted = (await client.post(constants.TASKS_PATH, json={"input": DEMO_PROMPT})).raise_for_status()
            task = submitted.json()
            out.write(f"POST {constants.TASKS_PATH} -> {submitted.status_code} task {task['task_id']}\n")
            out.write(f"  input: {DEMO_PROMPT}\n")
            view = await _poll(client, task["status_url"], timeout)
            _report(out, view)
            out.write("\nMCP server 'time' (mcp-server-time over stdio, started by the worker)\n")
            submitted = (await client.post(constants.TASKS_PATH, json={"input": MCP_PROMPT})).raise_for_status()
            task = submitted.json()
            out.write(f"POST {constants.TASKS_PATH} -> {submitted.status_code} task {task['task_id']}\n")
            out.write(f"  input: {MCP_PROMPT}\n")
            _report(out, await _poll(client, task["status_url"], timeout))
            for url in (metrics_url, api_url):
                scrape = await client.get(url + constants.METRICS_PATH)
                _metrics_lines(out, url, scrape.text)


@contextlib.asynccontextmanager
async def _api(config: RuntimeConfig, redis_url: str, token: str) -> AsyncIterator[str]:
    redis_client = connect_redis(redis_url)
    port = free_port()
    app = create_app(config, redis=redis_client, registry=CollectorRegistry(), auth_token=token)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises the start-up error
                raise RuntimeError("the API server stopped during start-up")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        await redis_client.aclose()


@contextlib.asynccontextmanager
async def _worker(config: RuntimeConfig, redis_url: str) -> AsyncIterator[str]:
    redis_client = connect_redis(redis_url)
    parts = build_worker(config, redis_client=redis_client, registry=CollectorRegistry())
    port = free_port()
    probes = await serve_probes(parts.queue, parts.metrics, parts.worker, host="127.0.0.1", port=port)
    running = asyncio.create_task(parts.worker.run())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        parts.worker.stop()
        await running
        await probes.cleanup()
        await parts.aclose()
        await redis_client.aclose()


async def _poll(client: httpx.AsyncClient, url: str, timeout: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view: dict[str, Any] = (await client.get(url)).raise_for_status().json()
        if view["status"] in TERMINAL:
            return view
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"task {view['task_id']} still {view['status']} after {timeout:g} s")
        await asyncio.sleep(0.05)


def _report(out: TextIO, view: dict[str, Any]) -> None:
    usage = view["usage"]
    progress = view["progress"]
    out.write(f"GET  {constants.TASKS_PATH}/{view['task_id']} -> {view['status']}\n")
    out.write(f"  answer: {view['result'] if view['status'] == 'succeeded' else view['error']}\n")
    out.write(f"  steps:  {progress['step']} of at most {progress['max_steps']}\n")
    out.write(
        f"  usage:  {usage['input_tokens']} input tokens, {usage['output_tokens']} output tokens, "
        f"${usage['cost_usd']:.6f}\n"
    )


def _metrics_lines(out: TextIO, url: str, text: str) -> None:
    out.write(f"\n{url}{constants.METRICS_PATH} (excerpt)\n")
    for line in text.splitlines():
        if line.startswith(_SHOWN_SERIES) and (
            line.startswith(constants.METRIC_QUEUE_DEPTH) or not line.endswith(" 0.0")
        ):
            out.write(f"  {line}\n")

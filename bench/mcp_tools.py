"""Per-call overhead of an MCP tool against a built-in tool, through the runtime's tool registry.

Each call goes through `ToolRegistry.call` exactly as the agent loop makes it (schema validation,
timeout, size cap, metrics). Tools compared:
- `word_count`, a built-in (a Python function in the worker);
- `faults__echo` over streamable HTTP (`agentops_dev.mcpservers faults --transport http`, the SDK's
  `MCPServer`, its own process on loopback): the transport's cost with a tool that does nothing;
- `time__get_current_time` over streamable HTTP (`mcp-server-time`'s server object);
- `clock__get_current_time` over stdio (`python -m mcp_server_time`, started by the runtime).

Calls run one at a time (the latency one task sees), after a warm-up; the worker's CPU per call is
measured around the timed loop (the servers' own CPU is not included).

    python bench/mcp_tools.py [--calls 500] [--warmup 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from prometheus_client import CollectorRegistry

from agent_runtime.config import McpServerConfig
from agent_runtime.mcptools import McpServer
from agent_runtime.metrics import Metrics
from agent_runtime.tools import ToolRegistry, builtin_registry


async def start_http(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentops_dev.mcpservers", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    return process, line.decode().split()[1]


async def measure(
    registry: ToolRegistry, name: str, tool_input: dict[str, Any], calls: int, warmup: int
) -> dict[str, float]:
    for _ in range(warmup):
        await registry.call(name, tool_input)
    samples = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await registry.call(name, tool_input)
        samples.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    samples.sort()
    return {
        "mean_ms": statistics.fmean(samples) * 1000,
        "p50_ms": samples[len(samples) // 2] * 1000,
        "p95_ms": samples[int(len(samples) * 0.95)] * 1000,
        "cpu_ms": cpu / calls * 1000,
    }


async def main(calls: int, warmup: int) -> None:
    faults, faults_url = await start_http("faults", "--transport", "http")
    timeserver, time_url = await start_http("time-http")
    servers = [
        McpServer(McpServerConfig(name="faults", url=faults_url, side_effects="none")),
        McpServer(McpServerConfig(name="time", url=time_url, side_effects="none")),
        McpServer(
            McpServerConfig(
                name="clock", command=[sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"],
                side_effects="none",
            )
        ),
    ]  # fmt: skip
    try:
        await asyncio.gather(*(s.start(30) for s in servers))
        assert all(s.up for s in servers), [s.reason for s in servers]
        registry = builtin_registry()
        registry.sources = list(servers)
        registry.metrics = Metrics(CollectorRegistry(), service="bench", track="stable")
        cases = [
            ("built-in word_count", "word_count", {"text": "one two three"}),
            ("MCP echo, streamable HTTP", "faults__echo", {"text": "one two three"}),
            ("MCP time, streamable HTTP", "time__get_current_time", {"timezone": "UTC"}),
            ("MCP time, stdio", "clock__get_current_time", {"timezone": "UTC"}),
        ]
        print(f"{calls} calls each, one at a time, after {warmup} warm-up calls")
        print("| tool | mean | p50 | p95 | worker CPU per call |")
        print("|---|---|---|---|---|")
        for label, name, tool_input in cases:
            figures = await measure(registry, name, tool_input, calls, warmup)
            print(
                f"| {label} | {figures['mean_ms']:.3f} ms | {figures['p50_ms']:.3f} ms | {figures['p95_ms']:.3f} ms"
                f" | {figures['cpu_ms']:.3f} ms |"
            )
    finally:
        for server in servers:
            await server.aclose()
        for process in (faults, timeserver):
            process.kill()
            await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.warmup))

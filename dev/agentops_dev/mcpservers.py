"""MCP servers for tests, the demo and the benchmark, run as their own processes.

- `time-http`: the reference server `mcp-server-time` (from PyPI), its own server object
  (`mcp_server_time.server.create_server`) served over the SDK's streamable HTTP transport; the
  package itself only speaks stdio (`python -m mcp_server_time`, which the tests run as is).
- `faults`: a server written with the SDK's `MCPServer`, with tools that misbehave on purpose:
  `slow` (sleeps), `record` (appends a line to a log file, then optionally waits: an "external"
  side effect a test can count), `die` (the first call kills the server's process mid-call; the
  next process answers), `echo`, `grow` (adds a tool and sends `notifications/tools/list_changed`).
  Over stdio or streamable HTTP.

`python -m agentops_dev.mcpservers time-http --port 0` prints `listening <url>` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

__all__ = ["faults_server", "main"]


def faults_server(log_path: str | None) -> MCPServer:
    """The misbehaving server; `log_path` records each call of `record` and `die`."""
    server = MCPServer("agentops-faults", version="1")

    def log(line: str) -> None:
        if log_path:
            with Path(log_path).open("a") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    @server.tool(description="Wait the given number of seconds, then say so.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds:g} s"

    @server.tool(description="Record a note in the ledger (a side effect), optionally holding afterwards.")
    async def record(note: str, hold_seconds: float = 0.0) -> str:
        log(f"record {note}")
        if hold_seconds:
            await asyncio.sleep(hold_seconds)
        return f"recorded {note}"

    @server.tool(description="The first call kills this server mid-call; later calls (a new process) answer.")
    async def die(note: str) -> str:
        marker = Path(f"{log_path}.died") if log_path else None
        log(f"die {note}")
        if marker is not None and not marker.exists():
            marker.write_text("1")
            os._exit(3)
        return f"survived {note}"

    @server.tool(description="Repeat the text.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Add a tool named `name` (it answers `<name> here`) and announce the new list.")
    async def grow(name: str, ctx: Context) -> str:
        def added() -> str:
            return f"{name} here"

        server.add_tool(added, name=name, description=f"A tool added at run time: {name}.")
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    return server


def _time_server() -> MCPServer:
    from mcp_server_time.server import create_server  # noqa: PLC0415 - the dev extra's package

    server: MCPServer = create_server("UTC")
    return server


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _serve_http(server: MCPServer, host: str, port: int) -> None:
    app: Any = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    http = uvicorn.Server(config)
    task = asyncio.create_task(http.serve())
    while not http.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.02)
    sys.stdout.write(f"listening http://{host}:{port}/mcp\n")
    sys.stdout.flush()
    await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentops_dev.mcpservers", description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["time-http", "faults"])
    parser.add_argument("--transport", choices=["stdio", "http"], default="http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", default=None, help="faults: the ledger file of record and die")
    args = parser.parse_args(argv)
    server = _time_server() if args.server == "time-http" else faults_server(args.log)
    if args.transport == "stdio":
        server.run("stdio")
        return 0
    port = args.port or _free_port(args.host)
    asyncio.run(_serve_http(server, args.host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

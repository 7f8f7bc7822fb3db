"""MCP servers as tool sources: one long-lived session per server, over stdio or streamable HTTP.

Each `McpServer` keeps a background task that opens the transport (the official SDK's
`stdio_client` or `streamable_http_client`), initializes the session, lists the tools, and then
holds the session until it breaks; then it reconnects, backing off up to
`RuntimeConfig.tool_reconnect_seconds`. A server that is down at start does not stop the worker:
its tools are simply not offered, `agent_tool_server_up{server}` reads 0 and the worker's /ready
names it under `degraded` until it comes up. When the server says its list changed
(`notifications/tools/list_changed`) the list is read again.

Names: a tool reaches the model as `<server>__<tool>` (`exposed_name`). Server names are DNS
labels (no `_`), so two servers can never produce the same name; a tool name the Messages API
would refuse (characters outside `[a-zA-Z0-9_-]`, longer than 64 with the prefix) is cleaned and
suffixed with a digest of the original, so it stays stable and distinct. `allowTools` filters by
the server's own names before anything is offered; at most `MAX_TOOLS` of a server are offered
(a server may list thousands: the tool list is also a metric label), none whose schema and
description pass `MAX_TOOL_SCHEMA_BYTES` (they ride along with every model call).

Calls: a per-server circuit breaker (`breaker.Breaker`, in this process) counts transport
failures and timeouts; while open, calls fail at once. A connection lost during a call leaves its
outcome unknown: with `sideEffects: none` the call is sent again once the server is back (within
the timeout); with `external` it is not (`ToolInterrupted`), and the model is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agent_runtime import breaker
from agent_runtime.config import McpServerConfig
from agent_runtime.logging import get_logger
from agent_runtime.metrics import Metrics
from agent_runtime.tools import Policy, Tool, ToolError, ToolInterrupted

__all__ = ["MAX_TOOLS", "McpServer", "ToolServers", "exposed_name", "render_result"]

log = get_logger(__name__)

MAX_TOOLS: Final = 128
# Every tool's schema goes with every model call: a server listing huge schemas would make each call
# (and its bill) huge. A tool whose schema and description pass this is not offered.
MAX_TOOL_SCHEMA_BYTES: Final = 16_384
MAX_NAME: Final = 64  # the Messages API's tool-name limit
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_CONNECT_TIMEOUT_SECONDS: Final = 30.0  # a stdio server is a process start and its imports
_FIRST_BACKOFF_SECONDS: Final = 0.05
_RECONNECT_WAIT_SECONDS: Final = 5.0


def exposed_name(server: str, tool: str) -> str:
    """`<server>__<tool>`, cleaned to the Messages API's alphabet and length; stable and distinct. Pure."""
    clean = _NOT_NAME.sub("_", tool)
    name = f"{server}__{clean}"
    if clean == tool and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    room = MAX_NAME - len(server) - 2 - len(digest) - 1
    return f"{server}__{clean[:room]}_{digest}"


def render_result(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model: its text blocks; structured content when there is no text."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    if not any(isinstance(b, mcp_types.TextContent) for b in result.content) and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True))
    return "\n".join(parts)


class McpServer:
    """One MCP server's session, its tools as `Tool`s, and its breaker."""

    def __init__(
        self,
        config: McpServerConfig,
        *,
        metrics: Metrics | None = None,
        environ: Mapping[str, str] | None = None,
        reconnect_max_seconds: float = 5.0,
        breaker_policy: breaker.Policy | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.metrics = metrics
        self.policy = Policy.of(config)
        self.reconnect_max_seconds = reconnect_max_seconds
        self.breaker = breaker.Breaker(breaker_policy or breaker.Policy())
        env = os.environ if environ is None else environ
        # Header values come from the environment (Secret keys), read once: never from the config file.
        self._headers = {header: env.get(var, "") for header, var in config.headers.items()}
        self.reason = "not connected yet"
        self._tools: list[Tool] = []
        self._session: ClientSession | None = None
        self._connected = asyncio.Event()
        self._tried = asyncio.Event()  # the first connection attempt ended (either way)
        self._broken = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._relist: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.tool_server(self.name, up=False)
            metrics.tool_circuit_state(self.name, int(breaker.BreakerState.CLOSED))

    @property
    def up(self) -> bool:
        return self._connected.is_set()

    def tools(self) -> Sequence[Tool]:
        return self._tools if self.up else ()

    async def start(self, wait_seconds: float = _CONNECT_TIMEOUT_SECONDS) -> None:
        """Start the session task; wait (at most `wait_seconds`) for the first attempt to end."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mcp-{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), wait_seconds)

    async def settle(self) -> None:
        """Wait for a re-read of the tool list that a `list_changed` notification started (bounded)."""
        relist = self._relist
        if relist is not None and not relist.done():
            await asyncio.wait({relist}, timeout=_CONNECT_TIMEOUT_SECONDS)

    async def wait_up(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), seconds)
        return self.up

    async def aclose(self) -> None:
        self._closing = True
        self._broken.set()
        if self._relist is not None:
            self._relist.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    # --- the session ---

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.config.url is not None:
            timeout = httpx2.Timeout(_CONNECT_TIMEOUT_SECONDS, read=max(self.policy.timeout_seconds or 0, 300.0))
            async with (
                httpx2.AsyncClient(headers=self._headers, timeout=timeout) as client,
                streamable_http_client(self.config.url, http_client=client) as (read, write),
            ):
                yield read, write
            return
        assert self.config.command
        params = StdioServerParameters(command=self.config.command[0], args=list(self.config.command[1:]))
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                yield read, write

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF_SECONDS
        while not self._closing:
            try:
                async with (
                    self._transport() as (read, write),
                    ClientSession(read, write, message_handler=self._on_message) as session,
                ):
                    async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
                        await session.initialize()
                        await self._list(session)
                    self._session = session
                    self._set_up(True, "")
                    self._tried.set()
                    backoff = _FIRST_BACKOFF_SECONDS
                    await self._broken.wait()
            except Exception as exc:
                self._set_up(False, _describe(exc))
            finally:
                self._session = None
                self._broken.clear()
                if self.up:
                    self._set_up(False, "connection closed")
                self._tried.set()
            if self._closing:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._broken.wait(), backoff)
            backoff = min(backoff * 2, self.reconnect_max_seconds)

    def _set_up(self, up: bool, reason: str) -> None:
        was = self.up
        if up:
            self._connected.set()
            self.reason = ""
        else:
            self._connected.clear()
            self.reason = reason or self.reason
        if self.metrics is not None:
            self.metrics.tool_server(self.name, up=up)
        if up != was or (not up and not self._tried.is_set()):
            log.info("mcp_server_up" if up else "mcp_server_down", server=self.name, reason=None if up else reason)

    async def _list(self, session: ClientSession) -> None:
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        while len(listed) < MAX_TOOLS * 4:  # pages of a server that never stops paging end here
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            result = await session.list_tools(params=params)
            listed.extend(result.tools)
            cursor = result.next_cursor
            if not cursor:
                break
        allow = None if self.config.allow_tools is None else set(self.config.allow_tools)
        tools: dict[str, Tool] = {}
        for item in sorted(listed, key=lambda t: t.name):
            if allow is not None and item.name not in allow:
                continue
            name = exposed_name(self.name, item.name)
            if name in tools:
                continue
            size = len(json.dumps(item.input_schema, default=str)) + len(item.description or "")
            if size > MAX_TOOL_SCHEMA_BYTES:
                log.warning("mcp_tool_too_large", server=self.name, tool=name, bytes=size)
                continue
            if len(tools) >= MAX_TOOLS:
                log.warning("mcp_tools_capped", server=self.name, offered=MAX_TOOLS, listed=len(listed))
                break
            tools[name] = Tool(
                name=name,
                description=item.description or item.title or item.name,
                input_schema=item.input_schema if isinstance(item.input_schema, dict) else {"type": "object"},
                func=self._caller(item.name, name),
                policy=self.policy,
                source=f"mcp:{self.name}",
            )
        self._tools = list(tools.values())
        log.info("mcp_tools_listed", server=self.name, tools=sorted(tools))

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            session = self._session
            if session is not None and (self._relist is None or self._relist.done()):
                self._relist = asyncio.create_task(self._relist_now(session))
        elif isinstance(message, Exception):
            log.info("mcp_transport_error", server=self.name, error=_describe(message))

    async def _relist_now(self, session: ClientSession) -> None:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
                await self._list(session)
        except Exception as exc:
            log.warning("mcp_relist_failed", server=self.name, error=_describe(exc))

    # --- calls ---

    def _caller(self, tool: str, exposed: str) -> Any:
        async def call(arguments: dict[str, Any]) -> str:
            return await self.call(tool, exposed, arguments)

        return call

    async def call(self, tool: str, exposed: str, arguments: dict[str, Any]) -> str:
        """Call `tool`; the registry around it applies the timeout. Retries only a side-effect-free call."""
        attempts = 2 if self.policy.side_effects == "none" else 1
        for attempt in range(attempts):
            try:
                return await self._call_once(tool, exposed, arguments)
            except ToolInterrupted:
                if attempt + 1 >= attempts:
                    raise
                log.info("mcp_call_retried", server=self.name, tool=exposed)
                # The registry's timeout bounds this wait too.
                await self._connected.wait()
        raise AssertionError("unreachable")

    async def _call_once(self, tool: str, exposed: str, arguments: dict[str, Any]) -> str:
        if not self.up:
            # Reconnecting (a lost connection, a restarted server): wait a little, within the timeout.
            await self.wait_up(_RECONNECT_WAIT_SECONDS)
        session = self._session
        if session is None or not self.up:
            raise ToolError(f"{exposed}: MCP server {self.name!r} is not reachable ({self.reason})")
        token = uuid.uuid4().hex
        decision = self.breaker.ask(time.monotonic(), token)
        self._export_circuit()
        if decision == breaker.Decision.DENY:
            raise ToolError(f"{exposed}: MCP server {self.name!r} failed repeatedly; its circuit is open, try later")
        outcome = breaker.Outcome.FAILURE
        try:
            result = await session.call_tool(tool, arguments)
            outcome = breaker.Outcome.SUCCESS
        except MCPError as exc:
            if exc.error.code == mcp_types.CONNECTION_CLOSED:
                self._lost(session)
                raise self._interrupted(exposed, exc) from exc
            outcome = breaker.Outcome.SUCCESS  # the server answered: it is up, it refused the call
            raise ToolError(f"{exposed}: {exc.error.message[:1000]}") from exc
        except (TimeoutError, asyncio.CancelledError):
            raise
        except Exception as exc:  # transport failures: the connection is gone
            self._lost(session)
            raise self._interrupted(exposed, exc) from exc
        finally:
            self.breaker.record(outcome, time.monotonic(), token)
            self._export_circuit()
        text = render_result(result)
        if result.is_error:
            raise ToolError(f"{exposed}: {text[:4000]}")
        return text

    def _lost(self, session: ClientSession) -> None:
        """Stop using `session` at once (a retry waits for the next one); the session task reconnects."""
        if self._session is session:
            self._session = None
            self._set_up(False, "connection lost during a call")
        self._broken.set()

    def _interrupted(self, exposed: str, exc: BaseException) -> ToolInterrupted:
        if self.policy.side_effects == "external":
            return ToolInterrupted(
                f"{exposed}: the connection to MCP server {self.name!r} was lost during the call"
                f" ({_describe(exc)}); its outcome is unknown and it was not repeated (sideEffects: external)"
            )
        return ToolInterrupted(f"{exposed}: the connection to MCP server {self.name!r} was lost ({_describe(exc)})")

    def _export_circuit(self) -> None:
        if self.metrics is not None:
            state = self.breaker.view(time.monotonic()).observed(time.monotonic())
            self.metrics.tool_circuit_state(self.name, int(state))


class ToolServers:
    """Every MCP server of a service: started together, asked together for their state."""

    def __init__(self, servers: Sequence[McpServer]) -> None:
        self.servers = list(servers)

    async def start(self, wait_seconds: float = _CONNECT_TIMEOUT_SECONDS) -> None:
        await asyncio.gather(*(s.start(wait_seconds) for s in self.servers))

    def degraded(self) -> dict[str, str]:
        """Servers whose tools are not offered now, with the reason."""
        return {s.name: s.reason for s in self.servers if not s.up}

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.servers))


def _describe(exc: BaseException) -> str:
    """One line for an exception, the first leaf of an exception group (anyio wraps transport errors)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]

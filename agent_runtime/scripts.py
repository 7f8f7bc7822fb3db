"""Running the runtime's Lua scripts: one pipeline per turn of the event loop, and a flushed script cache is no error.

**Batching.** Every script call made on one client in the same turn of the event loop goes to
Redis in one pipeline (not a transaction: other clients' commands may run between two of its
scripts, as between two separate calls). A worker that starts 50 tasks at once sends their 50
claims as one write and reads the 50 replies from one connection, instead of 50 round trips on 50
pooled connections; the same holds for 500 tasks asking the rate limiter, the budget and the
breaker together. The per-call cost of redis-py and of the event loop's turns was most of the
worker's CPU per task (bench/RESULTS.md, "one pipeline per turn"). What a caller sees does not
change:
- each call gets its own reply, or its own error (a `ResponseError` of its script, a refusal such as
  READONLY or OOM);
- an error of the connection fails every call of that batch, as it would fail each alone: the
  scripts may or may not have run, as with a single call whose reply was lost;
- a caller cancelled before its batch leaves is not sent;
- a call made alone in its turn is sent alone, as before, after at most one turn of the loop.
redis-py has no automatic pipelining (redis/redis-py#3767), hence this small piece.

**A flushed script cache** (`SCRIPT FLUSH`, a restarted or failed-over server). redis-py's script
objects send EVALSHA and, on NOSCRIPT, load the script and retry once. A flush that lands between
that load and that retry (a busy server, another client flushing again) escapes as
`NoScriptError`, which would interrupt a running task and repeat its last model call. So a call
made alone is retried a few times through that path; the calls of a batch that meet NOSCRIPT load
their scripts once and go again as a batch, as many times. A flush is invisible; only a server that
keeps dropping scripts still fails, as a transient `StoreUnavailable` (see `errors.redis_refusal`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

__all__ = ["ATTEMPTS", "run_script"]

ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class _Call:
    script: AsyncScript
    keys: list[str]
    args: list[str | int | float]
    reply: asyncio.Future[Any]


class _Batcher:
    """The script calls of one client not yet sent: they leave together at the next turn of the loop."""

    def __init__(self) -> None:
        # No reference to the client: the batchers are kept by a weak mapping keyed by it, and a
        # value holding its key would keep every client ever made alive.
        self._waiting: list[_Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sending: set[asyncio.Task[None]] = set()  # strong references: a bare task may be collected

    def add(self, call: _Call) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # calls left by a loop that stopped before its turn came have no caller
            self._waiting, self._loop = [], loop
        self._waiting.append(call)
        if len(self._waiting) == 1:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        calls = [call for call in self._waiting if not call.reply.done()]  # done: its caller was cancelled
        self._waiting = []
        if not calls:
            return
        task = asyncio.ensure_future(self._send(calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            if len(calls) == 1:
                await _answer(calls[0], _run_alone(calls[0]))
                return
            for attempt in range(1, ATTEMPTS + 1):
                calls = await self._round(calls, last=attempt == ATTEMPTS)
                if not calls:
                    return
        finally:
            for call in calls:  # this task was cancelled (the loop is closing): no caller waits for ever
                if not call.reply.done():
                    call.reply.cancel()

    async def _round(self, calls: list[_Call], *, last: bool) -> list[_Call]:
        """Send the calls in one pipeline and answer them; return those to send again after NOSCRIPT."""
        client = calls[0].script.registered_client  # the calls of one batcher share it
        try:
            pipe = client.pipeline(transaction=False)
            for call in calls:
                # the command itself: redis-py refuses `pipe.evalsha` on a Cluster, not EVALSHA
                pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for call in calls:
                _settle(call, exc)
            return []
        unloaded: list[_Call] = []
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError) and not last:
                unloaded.append(call)
            else:
                _settle(call, reply)
        try:  # a new server or a flushed cache: load each script once, then those calls go again
            for script in {id(call.script): call.script for call in unloaded}.values():
                script.sha = await client.script_load(script.script)
        except Exception as exc:
            for call in unloaded:
                _settle(call, exc)
            return []
        return [call for call in unloaded if not call.reply.done()]


def _settle(call: _Call, reply: Any) -> None:
    """Answer a caller that still waits: an exception is raised to it, anything else returned."""
    if call.reply.done():
        return
    if isinstance(reply, Exception):
        call.reply.set_exception(reply)
    else:
        call.reply.set_result(reply)


async def _answer(call: _Call, work: Awaitable[Any]) -> None:
    try:
        reply = await work
    except Exception as exc:
        reply = exc
    _settle(call, reply)


async def _run_alone(call: _Call) -> Any:
    """One call on its own, loading the script again after each NOSCRIPT, up to `ATTEMPTS` times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await call.script(keys=call.keys, args=call.args)
        except redis.exceptions.NoScriptError:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


_batchers: weakref.WeakKeyDictionary[redis.asyncio.Redis, _Batcher] = weakref.WeakKeyDictionary()


async def run_script(script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | float] = ()) -> Any:
    """Run a registered script in the next pipeline of its client; reload it after NOSCRIPT."""
    client = script.registered_client
    batcher = _batchers.get(client)
    if batcher is None:
        batcher = _batchers[client] = _Batcher()
    reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    batcher.add(_Call(script, list(keys), list(args), reply))
    return await reply

"""Running the runtime's Lua scripts so that a flushed script cache (`SCRIPT FLUSH`) is never an error.

redis-py's script objects send EVALSHA and, on NOSCRIPT, load the script and retry once. A flush
that lands between that load and that retry (a busy server, another client flushing again)
escapes as `NoScriptError`, which would interrupt a running task and repeat its last model
call. Retrying the whole call a few times makes a flush invisible; only a server that keeps
dropping scripts still fails, as a transient `StoreUnavailable` (see `errors.redis_refusal`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.exceptions
from redis.commands.core import AsyncScript

__all__ = ["ATTEMPTS", "run_script"]

ATTEMPTS = 4


async def run_script(script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | float] = ()) -> Any:
    """Run a registered script, loading it again after each NOSCRIPT, up to `ATTEMPTS` times."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await script(keys=list(keys), args=list(args))
        except redis.exceptions.NoScriptError:
            if attempt == ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises

"""Waiting for a condition: `eventually(check)` polls until `check()` is truthy.

The demo, the dev stack and the tests wait this way for the event they look for, never for a fixed
time. `check` may be a plain function or a coroutine function (e.g. one asking the API over HTTP).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ["eventually"]


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `check` (awaiting its result if awaitable) until truthy; after `timeout`, `TimeoutError`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)

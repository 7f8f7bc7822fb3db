"""A real redis-server for tests: started on a free loopback port in a temporary directory, stopped after.

The process management lives in `agentops_dev.localredis` (the demo and the benchmark start Redis the
same way); this module gives tests a context manager that always cleans up, plus a blocking wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agentops_dev.localredis import LocalRedis, free_port

__all__ = ["LocalRedis", "free_port", "running_redis"]


@contextlib.contextmanager
def running_redis(directory: Path, *, durable: bool = True) -> Iterator[LocalRedis]:
    """A started redis-server whose data lives in `directory`; killed and waited for on exit."""
    server = LocalRedis(directory=directory, durable=durable)
    server.start()
    try:
        yield server
    finally:
        server.kill()

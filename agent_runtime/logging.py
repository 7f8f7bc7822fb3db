"""Structured logs: structlog rendering one JSON object per line, bound to the task or request id.

`configure()` runs once at process start (the CLI); library code only calls `get_logger()` and
binds ids with `structlog.contextvars.bound_contextvars(task_id=...)`, so every line written while
a task runs carries its id without passing loggers around.
"""

from __future__ import annotations

import logging as std_logging
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure", "get_logger"]


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Render JSON lines to `stream` (stderr by default) at `level` and above."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(std_logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,  # tests reconfigure; a log line costs microseconds either way
    )


def get_logger(name: str, **bound: Any) -> Any:
    """A logger for one module; `bound` values appear on every line it writes."""
    return structlog.get_logger(module=name, **bound)  # a lazy proxy: `configure()` may run after import

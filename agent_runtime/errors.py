"""The runtime's error vocabulary, and the mapping of Redis errors and HTTP answers into it.

Callers catch these classes, never `redis.exceptions.*` or an SDK's: the mappings decide what is
transient (retry or reclaim later) and what is final (fail the task with a message a person can act
on). Each provider dialect maps its own client's exceptions next to that client
(`providers.provider_error` for the `anthropic` SDK, `openai_compat.provider_error` for httpx),
through `from_http_status` here. This module imports no provider client: the operator uses it (Redis
URLs, the runtime's config) and would otherwise load the whole `anthropic` SDK, 46 MB of its
memory at start-up (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.exceptions

from agent_runtime.tasks import Waiting

__all__ = [
    "AgentRuntimeError",
    "AllProvidersUnavailable",
    "BudgetExhausted",
    "BudgetHeld",
    "ConfigError",
    "IdempotencyConflict",
    "InvalidTask",
    "OwnershipLost",
    "ProviderError",
    "ProviderResponseError",
    "ProviderUnavailable",
    "QueueFull",
    "StoreUnavailable",
    "TaskFailed",
    "TaskNotFound",
    "TaskStateConflict",
    "from_http_status",
    "from_redis",
    "provider_call_failed",
    "provider_malformed_reply",
    "provider_unreachable",
    "redis_refusal",
    "retry_after_seconds",
]


class AgentRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ConfigError(AgentRuntimeError):
    """The runtime configuration cannot be served (names the field to fix)."""


class StoreUnavailable(AgentRuntimeError):
    """Redis, which holds the queue and the task records, is not answering or refuses the command for now."""


class InvalidTask(AgentRuntimeError):
    """The submission cannot be accepted (names the field to fix)."""


class InvalidReportRange(AgentRuntimeError):
    """A cost report asked for a period that does not parse, is empty, or lies past the retention (422)."""


class IdempotencyConflict(AgentRuntimeError):
    """An idempotency key was reused with a different input or priority (its first request is kept)."""


class QueueFull(AgentRuntimeError):
    """The service's queue holds `max_queued_tasks` (the message names the figure and the limit)."""


class TaskNotFound(AgentRuntimeError):
    """No task with this id (never existed, or its record expired)."""


class TaskStateConflict(AgentRuntimeError):
    """The task is in a state that does not allow the operation (e.g. cancelling a finished task)."""


class OwnershipLost(AgentRuntimeError):
    """Another delivery of the task took over (or it was cancelled): this worker must stop writing to it."""


class TaskFailed(AgentRuntimeError):
    """The task cannot complete; the message is stored as the task's error."""


class ProviderError(AgentRuntimeError):
    """A model call failed."""


class ProviderUnavailable(ProviderError):
    """The provider is down, overloaded, timing out or rate limiting: try later or elsewhere."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when there was one
        self.retry_after = retry_after  # seconds the provider asked for (429/529 `retry-after`)

    @property
    def rate_limited(self) -> bool:
        return self.status == 429


class AllProvidersUnavailable(ProviderError):
    """Every provider's circuit is open: the task fails at once instead of waiting for a recovery."""


class BudgetExhausted(AgentRuntimeError):
    """A spending limit is reached (the message names the figure and the limit)."""


class BudgetHeld(BudgetExhausted):
    """The task's next call does not fit the day's budget and the spec says hold: the worker puts it aside."""

    def __init__(self, message: str, *, waiting: Waiting) -> None:
        super().__init__(message)
        self.waiting = waiting


class ProviderResponseError(ProviderError):
    """The provider answered with something that is not a valid Messages API reply: retrying will not help."""


# Error codes with which a healthy Redis refuses a command for a while, and what each means: a
# replica (READONLY), full memory (OOM), a dataset still loading (LOADING), a replica cut off from
# its master (MASTERDOWN), a script running past the busy threshold (BUSY), the script cache
# flushed (NOSCRIPT; the script objects reload and retry, so this surfaces only in a race), a
# blocking read cut short because the server turned replica (UNBLOCKED), and the Cluster's
# failover codes. The command can succeed later unchanged: nothing to fix in it.
_REFUSALS: dict[str, str] = {
    "READONLY": "Redis refuses writes (READONLY: it is a replica)",
    "OOM": "Redis is out of memory (OOM: maxmemory reached with noeviction)",
    "LOADING": "Redis is loading its dataset (LOADING)",
    "MASTERDOWN": "Redis lost its master (MASTERDOWN)",
    "BUSY": "Redis is busy running a script (BUSY)",
    "NOSCRIPT": "Redis flushed its script cache (NOSCRIPT)",
    "UNBLOCKED": "Redis ended a blocking read as it turned replica (UNBLOCKED)",
    "TRYAGAIN": "Redis asks to try again (TRYAGAIN)",
    "CLUSTERDOWN": "Redis Cluster is down (CLUSTERDOWN)",
    "NOREPLICAS": "Redis has too few replicas to accept writes (NOREPLICAS)",
}
# redis-py strips the code from the message of the errors it has a class for; put it back.
_CODE_OF_CLASS: tuple[tuple[type[redis.exceptions.RedisError], str], ...] = (
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
)


def redis_refusal(exc: redis.exceptions.RedisError) -> str | None:
    """Why Redis refused a command for now (see `_REFUSALS`), or None if the error is not one of those. Pure.

    Redis 7 answers a refusal inside a Lua script with the refused command's own code; Redis 6
    wraps it (`ERR Error running script ...: @user_script:1: -OOM command not allowed ...`), so
    the code is also looked for after a script error's prefix.
    """
    for kind, code in _CODE_OF_CLASS:
        if isinstance(exc, kind):
            return _REFUSALS[code]
    if not isinstance(exc, redis.exceptions.ResponseError):
        return None
    message = str(exc)
    words = message.split(maxsplit=1)
    if words and words[0] in _REFUSALS:  # exact: BUSYGROUP and NOGROUP are not refusals
        return _REFUSALS[words[0]]
    if "script" in message.lower():
        for code, reason in _REFUSALS.items():
            if f": -{code} " in message:
                return reason
    return None


def from_redis(exc: redis.exceptions.RedisError) -> AgentRuntimeError:
    """Map a redis-py error: unreachable or refusing for now is `StoreUnavailable`; anything else is a bug."""
    refusal = redis_refusal(exc)
    if refusal is not None:
        return StoreUnavailable(f"task store unavailable: {refusal}: {exc}")
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return StoreUnavailable(f"task store unavailable: Redis is not answering ({type(exc).__name__}: {exc})")
    return AgentRuntimeError(f"Redis error: {type(exc).__name__}: {exc}")


def from_http_status(provider: str, status: int, message: str, headers: Mapping[str, str]) -> ProviderError:
    """Map an HTTP error answer of any provider dialect: 429 and 5xx are transient, other 4xx final."""
    if status == 429 or status >= 500:
        return ProviderUnavailable(
            f"provider {provider!r} answered HTTP {status}: {message}",
            status=status,
            retry_after=retry_after_seconds(headers),
        )
    return ProviderResponseError(f"provider {provider!r} rejected the request (HTTP {status}): {message}")


def provider_unreachable(provider: str, exc: Exception) -> ProviderUnavailable:
    """A client's connect, read, write or pool error or timeout: transient."""
    return ProviderUnavailable(f"provider {provider!r} unreachable: {type(exc).__name__}: {exc}")


def provider_malformed_reply(provider: str, exc: Exception) -> ProviderResponseError:
    """A reply that does not parse as the dialect's answer: final (retrying elsewhere will not fix it)."""
    return ProviderResponseError(f"provider {provider!r} sent a malformed reply: {type(exc).__name__}: {exc}")


def provider_call_failed(provider: str, exc: Exception) -> ProviderResponseError:
    """Any other failure of a client call: final."""
    return ProviderResponseError(f"provider {provider!r} call failed: {type(exc).__name__}: {exc}")


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The delay a 429/5xx asks for: `retry-after-ms`, else `retry-after` in seconds (dates are ignored)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue
        if 0 <= value <= 3600:
            return value
    return None

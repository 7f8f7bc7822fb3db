"""The runtime's error vocabulary, and the one place that maps Redis and Anthropic SDK errors into it.

Callers catch these classes, never `redis.exceptions.*` or `anthropic.*`: the mapping below decides
what is transient (retry or reclaim later) and what is final (fail the task with a message a person
can act on).
"""

from __future__ import annotations

import json

import anthropic
import redis.exceptions

__all__ = [
    "AgentRuntimeError",
    "ConfigError",
    "InvalidTask",
    "OwnershipLost",
    "ProviderError",
    "ProviderResponseError",
    "ProviderUnavailable",
    "StoreUnavailable",
    "TaskFailed",
    "TaskNotFound",
    "TaskStateConflict",
    "from_provider",
    "from_redis",
]


class AgentRuntimeError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ConfigError(AgentRuntimeError):
    """The runtime configuration cannot be served (names the field to fix)."""


class StoreUnavailable(AgentRuntimeError):
    """Redis, which holds the queue and the task records, is not answering."""


class InvalidTask(AgentRuntimeError):
    """The submission cannot be accepted (names the field to fix)."""


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
    """The provider is down, overloaded or rate limiting after the SDK's own retries: try later or elsewhere."""


class ProviderResponseError(ProviderError):
    """The provider answered with something that is not a valid Messages API reply: retrying will not help."""


def from_redis(exc: redis.exceptions.RedisError) -> AgentRuntimeError:
    """Map a redis-py error: connection trouble is `StoreUnavailable`, anything else is a bug worth surfacing."""
    if isinstance(
        exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | redis.exceptions.BusyLoadingError
    ):
        return StoreUnavailable(f"task store unavailable: Redis is not answering ({type(exc).__name__}: {exc})")
    return AgentRuntimeError(f"Redis error: {type(exc).__name__}: {exc}")


def from_provider(provider: str, exc: Exception) -> ProviderError:
    """Map an error raised by an `anthropic` client call (SDK errors, and JSON errors on malformed bodies)."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status == 429 or status >= 500:
            return ProviderUnavailable(f"provider {provider!r} answered HTTP {status}: {_api_message(exc)}")
        return ProviderResponseError(f"provider {provider!r} rejected the request (HTTP {status}): {_api_message(exc)}")
    if isinstance(exc, anthropic.APIConnectionError):  # includes APITimeoutError
        return ProviderUnavailable(f"provider {provider!r} unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, anthropic.APIResponseValidationError | json.JSONDecodeError | ValueError | TypeError):
        return ProviderResponseError(f"provider {provider!r} sent a malformed reply: {type(exc).__name__}: {exc}")
    return ProviderResponseError(f"provider {provider!r} call failed: {type(exc).__name__}: {exc}")


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc.message)

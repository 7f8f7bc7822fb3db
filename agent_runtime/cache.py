"""The response cache: exact-match model replies in Redis, shared by every replica.

The key is a SHA-256 of the canonical JSON of everything that determines a reply — model, system
prompt, messages, tools and parameters (`max_tokens`) — so two requests share an entry only when
they are identical. Only successful replies are stored (a provider error never reaches `put`), each
for `ttl_seconds`. A hit is served without any provider call, rate-limit slot or charge.

The cache is an optimisation: a Redis error while reading or writing it counts as a miss (logged),
never as a failed model call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from agent_runtime import constants
from agent_runtime.logging import get_logger
from agent_runtime.metrics import Metrics
from agent_runtime.replies import ModelReply

__all__ = ["ResponseCache", "request_digest"]

log = get_logger(__name__)


def request_digest(
    *,
    model: str,
    system: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    parameters: Mapping[str, Any],
) -> str:
    """The cache key of a model request. Pure."""
    canonical = json.dumps(
        {"model": model, "system": system, "messages": messages, "tools": tools, "parameters": parameters},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    """Replies of one service, by request digest."""

    def __init__(
        self, redis_client: redis.asyncio.Redis, *, keys: constants.ServiceKeys, ttl_seconds: int, metrics: Metrics
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.metrics = metrics

    async def get(self, digest: str) -> ModelReply | None:
        try:
            raw = await self.redis.get(self.keys.cache(digest))
        except redis.exceptions.RedisError as exc:
            log.warning("cache_read_failed", error=f"{type(exc).__name__}: {exc}")
            raw = None
        if raw is None:
            self.metrics.cache_lookup(hit=False)
            return None
        self.metrics.cache_lookup(hit=True)
        return ModelReply.from_dict(json.loads(raw)).from_cache()

    async def put(self, digest: str, reply: ModelReply) -> None:
        if reply.cached:
            return
        try:
            await self.redis.set(self.keys.cache(digest), json.dumps(reply.to_dict()), ex=self.ttl_seconds)
        except redis.exceptions.RedisError as exc:
            log.warning("cache_write_failed", error=f"{type(exc).__name__}: {exc}")

"""Rate limits per provider, shared by every replica through Redis: GCRA in one atomic Lua script.

Each provider has two generic cell-rate algorithms (requests and tokens per minute) and a backoff
key. One script, run with Redis's own clock (`TIME`, so replicas need no synchronised clocks),
computes the earliest moment a call may start — after both theoretical arrival times (minus the
burst tolerance) and after any provider-imposed backoff — and *reserves* it by advancing both
arrival times. The caller sleeps until its slot and sends. Reserving instead of deny-and-retry
wastes no slot to wake-up races, so a saturated fleet uses the whole limit; it also makes waiting
callers fair (first come, first served across replicas).

- **Accuracy.** With `burst` 1 the grants are evenly spaced, so any window of W seconds holds at
  most `limit * W / 60` of them. Calls reach the provider a few milliseconds after their grant and
  that jitter could push one extra call into a window the provider counts; `headroom` (2 % by
  default) spaces grants slightly wider to absorb it. A larger `burst_fraction` lets that share of a
  minute's limit go at once after an idle spell (what providers' own token buckets allow).
- **Tokens** are reserved from an estimate of the input before the call and settled after it with
  the tokens actually used (`settle`): a call that used more pushes later callers back.
- **`retry-after`.** A provider's 429 sets the shared backoff key (`backoff`); every replica's next
  reservation starts after it, and a caller whose slot was reserved before the backoff appeared
  checks it after sleeping and reserves again, so no call goes out before the backoff expires.
- **Cost.** One round trip per call that does not wait, two when it waits (reserve, then re-check
  the backoff), one to settle tokens. See `bench/ratelimit.py`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions

from agent_runtime import constants, errors
from agent_runtime.scripts import run_script

__all__ = ["Grant", "Limit", "RateLimited", "RateLimiter", "estimate_tokens"]

T = TypeVar("T")

# KEYS: requests TAT, tokens TAT, backoff-until   (all in microseconds of Redis time)
# ARGV: request interval, request tolerance, token interval, token tolerance, tokens, max wait   (µs)
# Returns {granted 0|1, wait µs}
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local req_t, req_tol = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok_t, tok_tol = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, max_wait = tonumber(ARGV[5]), tonumber(ARGV[6])
local tat_r = tonumber(redis.call('GET', KEYS[1]) or now)
local tat_t = tonumber(redis.call('GET', KEYS[2]) or now)
local backoff = tonumber(redis.call('GET', KEYS[3]) or 0)
local start = math.max(now, tat_r - req_tol, tat_t - tok_tol, backoff)
local wait = start - now
if wait > max_wait then return {0, string.format('%.0f', wait)} end
local new_r = math.max(tat_r, start) + req_t
local new_t = math.max(tat_t, start) + tok_t * tokens
redis.call('SET', KEYS[1], string.format('%.0f', new_r), 'PX', math.ceil((new_r - now) / 1000) + 1000)
redis.call('SET', KEYS[2], string.format('%.0f', new_t), 'PX', math.ceil((new_t - now) / 1000) + 1000)
return {1, string.format('%.0f', wait)}
"""

# KEYS: tokens TAT   ARGV: token interval (µs), extra tokens
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local new = math.max(tat, now) + tonumber(ARGV[1]) * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
return 1
"""

# KEYS: backoff-until   ARGV: seconds   (only ever extends; returns the µs left)
_BACKOFF = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1]) * 1000000
local current = tonumber(redis.call('GET', KEYS[1]) or 0)
if current >= untl then return string.format('%.0f', current - now) end
redis.call('SET', KEYS[1], string.format('%.0f', untl), 'PX', math.ceil((untl - now) / 1000) + 1)
return string.format('%.0f', untl - now)
"""

# KEYS: backoff-until   Returns the µs left (0 when none)
_BACKOFF_LEFT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = tonumber(redis.call('GET', KEYS[1]) or 0)
return string.format('%.0f', math.max(untl - now, 0))
"""

_MICROS = 1_000_000


@dataclass(frozen=True)
class Limit:
    """One provider's limits: requests and tokens per minute, burst share and headroom."""

    requests_per_minute: int
    tokens_per_minute: int
    burst_fraction: float = 0.0  # share of a minute's limit that may go at once after an idle spell
    headroom: float = 0.02  # grants are spaced this much wider than the limit strictly needs

    def request_interval_us(self) -> float:
        return 60 * _MICROS / self.requests_per_minute * (1 + self.headroom)

    def token_interval_us(self) -> float:
        return 60 * _MICROS / self.tokens_per_minute * (1 + self.headroom)

    def request_tolerance_us(self) -> float:
        burst = max(1, math.floor(self.requests_per_minute * self.burst_fraction))
        return (burst - 1) * self.request_interval_us()

    def token_tolerance_us(self) -> float:
        return math.floor(self.tokens_per_minute * self.burst_fraction) * self.token_interval_us()


@dataclass(frozen=True)
class Grant:
    """A call may go now; `waited` seconds were spent waiting for the slot (and backoff)."""

    waited: float
    round_trips: int


class RateLimited(Exception):
    """The next slot is further away than the caller is willing to wait (nothing was reserved)."""

    def __init__(self, provider: str, wait: float) -> None:
        super().__init__(f"provider {provider!r} is rate limited for {wait:.2f} s")
        self.provider = provider
        self.wait = wait


class RateLimiter:
    """The shared limits of one service's providers."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        *,
        keys: constants.ServiceKeys,
        limits: Mapping[str, Limit],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.limits = dict(limits)
        self._sleep = sleep
        self._reserve = redis_client.register_script(_RESERVE)
        self._settle = redis_client.register_script(_SETTLE)
        self._backoff = redis_client.register_script(_BACKOFF)
        self._backoff_left = redis_client.register_script(_BACKOFF_LEFT)

    def _keys(self, provider: str) -> list[str]:
        return [
            self.keys.ratelimit(provider, "requests"),
            self.keys.ratelimit(provider, "tokens"),
            self.keys.ratelimit(provider, "backoff"),
        ]

    async def acquire(self, provider: str, tokens: int, *, max_wait: float = math.inf) -> Grant:
        """Wait for (and take) a slot for one call of about `tokens` input tokens; `RateLimited` if too far."""
        limit = self.limits[provider]
        keys = self._keys(provider)
        waited = 0.0
        trips = 0
        while True:
            budget_us = (max_wait - waited) * _MICROS if math.isfinite(max_wait) else 1e18
            args: list[str | int] = [
                f"{limit.request_interval_us():.3f}",
                f"{limit.request_tolerance_us():.3f}",
                f"{limit.token_interval_us():.6f}",
                f"{limit.token_tolerance_us():.3f}",
                max(int(tokens), 0),
                f"{max(budget_us, 0):.0f}",
            ]
            granted, wait_us = await _run(run_script(self._reserve, keys, args))
            trips += 1
            wait = int(wait_us) / _MICROS
            if not int(granted):
                raise RateLimited(provider, waited + wait)
            if wait <= 0:
                return Grant(waited=waited, round_trips=trips)
            await self._sleep(wait)
            waited += wait
            # A 429 seen by another replica while we slept moves our start past its backoff.
            left = int(await _run(run_script(self._backoff_left, [keys[2]]))) / _MICROS
            trips += 1
            if left <= 0:
                return Grant(waited=waited, round_trips=trips)
            await self._sleep(left)
            waited += left

    async def settle(self, provider: str, extra_tokens: int) -> None:
        """Charge the tokens a call used beyond its estimate."""
        if extra_tokens <= 0:
            return
        limit = self.limits[provider]
        args: list[str | int] = [f"{limit.token_interval_us():.6f}", extra_tokens]
        await _run(run_script(self._settle, [self._keys(provider)[1]], args))

    async def backoff(self, provider: str, seconds: float) -> float:
        """Make every replica hold calls to `provider` for `seconds` (never shortens one already set)."""
        left = await _run(run_script(self._backoff, [self._keys(provider)[2]], [f"{max(seconds, 0.0):.6f}"]))
        return int(left) / _MICROS

    async def backoff_left(self, provider: str) -> float:
        """Seconds until the provider's shared backoff ends (0 when none)."""
        return int(await _run(run_script(self._backoff_left, [self._keys(provider)[2]]))) / _MICROS


async def _run(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except redis.exceptions.RedisError as exc:
        raise errors.from_redis(exc) from exc


def estimate_tokens(payload: Any) -> int:
    """About four characters per token: what the limiter reserves before a call (settled afterwards)."""
    return max(1, math.ceil(len(str(payload)) / 4))

"""Budgets: the per-task limit (pure) and the daily one shared by every replica through Redis.

- **Per task.** After each step the agent compares the task's spend with `per_task_budget_usd`
  (`per_task_exceeded`); past it the task stops as failed with `per_task_message`, its transcript
  kept (the step that crossed the limit is billed and stored: a call cannot be un-made).
- **Daily.** Every billed step adds its cost to the service's spend of the UTC day (one Redis
  `INCRBYFLOAT` on `ServiceKeys.spend(day)`, kept two days). While that spend is at or
  over `daily_budget_usd`, the API answers new submissions 429 `budget exhausted until 00:00 UTC`
  with the figure and a `retry-after` of the seconds left in the day. Tasks already accepted run
  to completion (they were promised), so the day can end slightly over the budget.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import redis.asyncio
import redis.exceptions

from agent_runtime import constants, errors
from agent_runtime.scripts import run_script

__all__ = [
    "DailyBudget",
    "daily_message",
    "day_of",
    "per_task_exceeded",
    "per_task_message",
    "seconds_until_midnight",
    "usd",
]

_KEEP_SECONDS = 2 * 86_400
# KEYS: spend   ARGV: usd, keep seconds. A script rather than MULTI: a Cluster client has no transactions.
_ADD = """
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return total
"""


def day_of(timestamp: float) -> str:
    """The UTC day (`YYYY-MM-DD`) of a Unix timestamp. Pure."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")


def seconds_until_midnight(timestamp: float) -> int:
    """Whole seconds (at least 1) until the next 00:00 UTC. Pure."""
    now = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds() + 0.999))


def usd(amount: float) -> str:
    """Dollars with cents, or with four decimals below one dollar (small budgets stay readable). Pure."""
    return f"${amount:.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


def daily_message(spent: float, limit: float) -> str:
    """What a refused submission is told. Pure."""
    return f"budget exhausted until 00:00 UTC: spent {usd(spent)} of the {usd(limit)} daily budget (budget.dailyUSD)"


def per_task_exceeded(spent: float, limit: float | None) -> bool:
    return limit is not None and spent >= limit


def per_task_message(spent: float, limit: float, steps: int) -> str:
    return (
        f"per-task budget exhausted: spent {usd(spent)} of {usd(limit)} (budget.perTaskUSD) after {steps} steps; "
        "the transcript so far is kept"
    )


class DailyBudget:
    """The service's spend of the current UTC day, in Redis."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        *,
        keys: constants.ServiceKeys,
        limit_usd: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.limit_usd = limit_usd
        self._clock = clock
        self._add = redis_client.register_script(_ADD)

    def _key(self) -> str:
        return self.keys.spend(day_of(self._clock()))

    async def record(self, usd: float) -> float:
        """Add one step's cost to today's spend; return the new total."""
        if usd <= 0:
            return await self.spent()
        key = self._key()
        try:
            total = await run_script(self._add, [key], [repr(usd), _KEEP_SECONDS])
        except redis.exceptions.RedisError as exc:
            raise errors.from_redis(exc) from exc
        return float(total)

    async def spent(self) -> float:
        try:
            raw = await self.redis.get(self._key())
        except redis.exceptions.RedisError as exc:
            raise errors.from_redis(exc) from exc
        return float(raw or 0.0)

    async def check(self) -> None:
        """Raise `BudgetExhausted` (with the figure) when today's spend has reached the daily budget."""
        if self.limit_usd is None:
            return
        spent = await self.spent()
        if spent >= self.limit_usd:
            raise errors.BudgetExhausted(daily_message(spent, self.limit_usd))

    def retry_after(self) -> int:
        return seconds_until_midnight(self._clock())

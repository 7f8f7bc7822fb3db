"""Budgets as hard caps on money: every model call reserves its worst case first, then settles to what it cost.

The daily budget (`daily_budget_usd`, the UTC day, shared by every replica) and the per-task one
(`per_task_budget_usd`) are both enforced *before* a call, never after it:

1. **Reserve.** Before each model call the agent computes the call's worst case (`worst_case`):
   an upper bound of its input tokens (`input_token_bound`: the request's UTF-8 bytes, since a
   byte-level BPE token covers at least one byte, plus an allowance for the API's own framing)
   plus `max_output_tokens`, at the price of the most expensive configured model (failover may
   send the call to any of them). One Lua script, on the service's keys only, adds up what the
   day and the task have spent and hold reserved, and records the reservation only if both caps
   still hold with it (`decide` is the same rule in Python, tested against the script).
2. **Call, then settle.** After the reply the reservation is replaced by the call's real cost (its
   usage at the replying model's price); a call that failed or was never sent settles at 0.
3. **A call whose reservation does not fit is not made.** Per task: the task ends failed, before
   the call that could cross `perTaskUSD`, its transcript kept. Daily: `budget_on_exhausted`
   decides — `hold` puts the task aside (`queue.TaskQueue.hold`; visible as `budget_exhausted`
   with the figures and when money comes back, 00:00 UTC) until the next day or a raised budget
   (`release_count` says how many to send back); `fail` ends it failed with the figure.

Money is counted in whole micro-dollars (integers, so replicas never disagree through float
drift), rounding every cost *up*: what Redis records is never less than what was spent, so the
day's real spend is at most its recorded spend, which the script keeps at most the budget.

A crashed worker's reservations come back: each carries an expiry (`hold_ttl_seconds`, longer
than a task may run) and is dropped once past it; sooner, when the task's next delivery reserves
(a reservation of an older delivery — a lower fence — of the same task is released then, since
that delivery no longer owns the task). A settle always counts the real cost, even when its
reservation was already released. One case stays uncounted: a worker killed after the provider
billed a call but before the settle (the provider's bill for a call whose reply nobody read is
unknown to us): at most one call per killed worker slot, documented in docs/budgets.md.

Keys (`constants.ServiceKeys`, one hash tag per service, so the scripts are Cluster-safe):
`budget:spent:<day>` and `budget:task:<id>` (micro-USD spent), `budget:holds` (reservation id →
`day|task|fence|micros`), `budget:expiry` (reservation id → expiry, Redis time in µs) and
`budget:held` (tasks put aside, by the time they were).
"""

from __future__ import annotations

import datetime
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import redis.asyncio
import redis.exceptions

from agent_runtime import constants, costs, errors
from agent_runtime.config import PriceConfig
from agent_runtime.logging import get_logger
from agent_runtime.scripts import run_script

if TYPE_CHECKING:
    from agent_runtime.metrics import Metrics
    from agent_runtime.queue import TaskQueue

__all__ = [
    "MICROS",
    "BudgetLedger",
    "BudgetWatch",
    "Reservation",
    "Scope",
    "Shrink",
    "Snapshot",
    "Verdict",
    "daily_message",
    "day_of",
    "decide",
    "export",
    "held_message",
    "input_token_bound",
    "micros",
    "next_midnight",
    "per_task_exceeded",
    "per_task_message",
    "per_task_stop_message",
    "releasable",
    "release_count",
    "seconds_until_midnight",
    "smallest_call",
    "usd",
    "worst_case",
]

log = get_logger(__name__)

MICROS = 1_000_000
_KEEP_DAY_SECONDS = 2 * 86_400
# The Messages API wraps a request in tokens of its own: a system prompt describing the tools
# (Anthropic documents 313-346 tokens for tool use) and a few per message. The bound adds this.
FRAMING_TOKENS = 512
PER_MESSAGE_TOKENS = 8
HELD_LOOKED_AT = 64  # held tasks whose needs one release pass reads (bounded work per pass)
_PURGE_BATCH = 256  # expired reservations dropped per script run (bounded work per call)


class Scope(StrEnum):
    """Which cap a reservation did not fit."""

    FITS = "fits"
    PER_TASK = "per_task"
    DAILY = "daily"
    NEVER = "never"  # one call's worst case is more than the whole daily budget: waiting cannot help
    WAIT = "wait"  # not now, but calls in flight hold reservations that may come back: try again soon


# --- pure helpers -------------------------------------------------------------------------------


def day_of(timestamp: float) -> str:
    """The UTC day (`YYYY-MM-DD`) of a Unix timestamp. Pure."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d")


def next_midnight(timestamp: float) -> float:
    """The Unix time of the next 00:00 UTC, when the day's budget comes back. Pure."""
    now = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp()


def seconds_until_midnight(timestamp: float) -> int:
    """Whole seconds (at least 1) until the next 00:00 UTC. Pure."""
    return max(1, int(next_midnight(timestamp) - timestamp + 0.999))


def micros(amount_usd: float) -> int:
    """USD as whole micro-dollars, rounded up (never under-counts a cost). Pure.

    Rounded to a nanodollar first, so that binary noise (0.1 + 0.2) does not add a micro-dollar.
    """
    return max(0, math.ceil(round(amount_usd * MICROS, 3)))


def usd(amount: float) -> str:
    """Dollars with cents, or with four decimals below one dollar (small budgets stay readable). Pure."""
    return f"${amount:.2f}" if abs(amount) >= 1 else f"${amount:.4f}"


def _usd_micros(amount: int) -> str:
    return usd(amount / MICROS)


def input_token_bound(system: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> int:
    """An upper bound of a request's input tokens, without asking the provider. Pure.

    A byte-level BPE token covers at least one byte, so the UTF-8 bytes of the request's text (its
    JSON, which only adds bytes) bound its tokens; the API's framing is added on top. Typically
    about four times the real count: a reservation is generous on input, exact once settled.
    """
    payload = json.dumps([system, list(messages), list(tools)], separators=(",", ":"), ensure_ascii=False)
    return len(payload.encode()) + FRAMING_TOKENS + PER_MESSAGE_TOKENS * len(messages)


def worst_case(prices: Iterable[PriceConfig], input_tokens: int, max_output_tokens: int) -> int:
    """A call's worst-case cost in micro-dollars: the bound of its input plus all its output, at the
    most expensive of the prices it may be billed at (any provider failover may reach). Pure."""
    costs = [(input_tokens * p.input_per_mtok + max_output_tokens * p.output_per_mtok) / 1_000_000 for p in prices]
    return micros(max(costs, default=0.0))


@dataclass(frozen=True)
class Verdict:
    """What `decide` (and the reserve script) concluded, with the figures behind it (micro-USD)."""

    scope: Scope
    amount: int
    day_spent: int = 0
    day_reserved: int = 0
    task_spent: int = 0
    task_reserved: int = 0
    output_tokens: int | None = None  # the call's max_tokens when it fits with a `Shrink` (capped or not)
    least: int | None = None  # the smallest reservation the call could go with (a `Shrink`'s minimum)

    @property
    def fits(self) -> bool:
        return self.scope == Scope.FITS


@dataclass(frozen=True)
class Shrink:
    """How a call's reservation may shrink to fit what the day has left: by capping its output. Pure data.

    `input_micros`: the input bound at the dearest input price (µUSD, fractional); `output_micros`:
    one output token at the dearest output price (µUSD); the call may produce from `min_output`
    up to `max_output` tokens.
    """

    input_micros: float
    output_micros: float
    max_output: int
    min_output: int

    def amount(self, output_tokens: int) -> int:
        """The reservation of a call capped at `output_tokens` (rounded up, never under its cost)."""
        # as the reserve script rounds: up, ignoring binary noise below a nanodollar
        return max(0, math.ceil(self.input_micros + output_tokens * self.output_micros - 0.0005))

    def fitting(self, room: int) -> int | None:
        """The most output tokens (at least `min_output`) whose reservation fits `room`; None if none does."""
        if self.output_micros <= 0:
            out = self.max_output
        else:
            out = min(self.max_output, math.floor((room - self.input_micros) / self.output_micros))
        while out >= self.min_output and self.amount(out) > room:  # the rounding up may cost a token
            out -= 1
        return out if out >= self.min_output else None


def decide(
    *,
    amount: int,
    day_spent: int,
    day_reserved: int,
    day_limit: int | None,
    task_spent: int,
    task_reserved: int,
    task_limit: int | None,
    shrink: Shrink | None = None,
) -> Verdict:
    """May a call reserving `amount` go? The rule of the reserve script, in Python (micro-USD). Pure.

    The per-task cap is looked at first: it ends the task whatever the day holds. Then the day:
    the full worst case if it fits; else, with `shrink`, the call with its output capped to what
    the day has left (`output_tokens` of the verdict), down to `shrink.min_output`. A call whose
    smallest reservation alone is over the whole daily budget can never fit (`NEVER`), so holding
    it would hold it forever. One that does not fit now while other calls hold reservations
    (`day_reserved` > 0) may fit once they settle below their worst case (`WAIT`).
    """
    figures = (day_spent, day_reserved, task_spent, task_reserved)
    if task_limit is not None and task_spent + task_reserved + amount > task_limit:
        return Verdict(Scope.PER_TASK, amount, *figures)
    if day_limit is None or day_spent + day_reserved + amount <= day_limit:
        return Verdict(Scope.FITS, amount, *figures, output_tokens=shrink.max_output if shrink else None)
    smallest = amount if shrink is None else shrink.amount(shrink.min_output)
    if smallest > day_limit:
        return Verdict(Scope.NEVER, amount, *figures)
    if shrink is not None:
        out = shrink.fitting(day_limit - day_spent - day_reserved)
        if out is not None:
            return Verdict(Scope.FITS, shrink.amount(out), *figures, output_tokens=out)
        if day_reserved > 0:
            return Verdict(Scope.WAIT, amount, *figures)
    return Verdict(Scope.DAILY, amount, *figures)


def release_count(*, room: int | None, smallest_call: int, held: int, most: int) -> int:
    """How many held tasks to send back to the queue now. Pure.

    `room` is what the day has left (None: no daily budget any more); `smallest_call` a lower bound
    of any call's worst case (all of `max_output_tokens` at the dearest output price). Only as many
    tasks as the room could start go back, at most `most` at a time: the others would be held again.
    """
    if held <= 0:
        return 0
    if room is None:
        return min(held, most)
    if room <= 0 or room < smallest_call:
        return 0
    return min(held, most, room // max(smallest_call, 1))


def releasable(*, room: int | None, needs: Sequence[tuple[str, int]], most: int) -> list[str]:
    """Which held tasks to send back now: in the order they were held, each whose next call's least
    reservation fits what is left once those before it took theirs; at most `most`. Pure.

    `room` None: no daily budget any more, every task goes (up to `most`).
    """
    chosen: list[str] = []
    left = room
    for task_id, need in needs:
        if len(chosen) >= most:
            break
        if left is None:
            chosen.append(task_id)
        elif need <= left:
            chosen.append(task_id)
            left -= need
    return chosen


def daily_message(spent: float, limit: float) -> str:
    """What a refused submission is told. Pure."""
    return f"budget exhausted until 00:00 UTC: spent {usd(spent)} of the {usd(limit)} daily budget (budget.dailyUSD)"


def held_message(verdict: Verdict, limit: int, until: float) -> str:
    """Why a held task waits, with the figures and when money comes back. Pure."""
    when = datetime.datetime.fromtimestamp(until, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"budget exhausted: the next model call could cost up to {_usd_micros(verdict.amount)}; "
        f"spent {_usd_micros(verdict.day_spent)} and {_usd_micros(verdict.day_reserved)} reserved "
        f"of the {_usd_micros(limit)} daily budget (budget.dailyUSD); waiting until {when} "
        "or until the budget is raised"
    )


def daily_stop_message(verdict: Verdict, limit: int) -> str:
    """Why a task failed on the daily budget (`onExhausted: fail`, or a call bigger than the budget). Pure."""
    if verdict.scope == Scope.NEVER:
        return (
            f"daily budget too small: one model call could cost up to {_usd_micros(verdict.amount)}, more than the "
            f"whole {_usd_micros(limit)} daily budget (budget.dailyUSD); the transcript so far is kept"
        )
    return (
        f"budget exhausted until 00:00 UTC: the next model call could cost up to {_usd_micros(verdict.amount)}; "
        f"spent {_usd_micros(verdict.day_spent)} and {_usd_micros(verdict.day_reserved)} reserved of the "
        f"{_usd_micros(limit)} daily budget (budget.dailyUSD); the transcript so far is kept"
    )


def per_task_exceeded(spent: float, limit: float | None) -> bool:
    return limit is not None and spent >= limit


def per_task_message(spent: float, limit: float, steps: int) -> str:
    return (
        f"per-task budget exhausted: spent {usd(spent)} of {usd(limit)} (budget.perTaskUSD) after {steps} steps; "
        "the transcript so far is kept"
    )


def per_task_stop_message(verdict: Verdict, limit: int, steps: int) -> str:
    """Why a task stopped before a call that could cross its budget. Pure."""
    spent = verdict.task_spent + verdict.task_reserved
    return (
        f"per-task budget exhausted: spent {_usd_micros(spent)} of {_usd_micros(limit)} (budget.perTaskUSD) "
        f"after {steps} steps; the next model call could cost up to {_usd_micros(verdict.amount)}, "
        "so it was not made; the transcript so far is kept"
    )


# --- Redis --------------------------------------------------------------------------------------

# Shared by the scripts: drop expired reservations (their holder died), at most a batch per run.
_PURGE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, {_PURGE_BATCH})
for _, id in ipairs(dead) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
"""

# KEYS: holds, expiry, day spent, task spent, legacy day spend (USD float, before reservations)
# ARGV: id, amount, day limit (-1: none), task limit (-1: none), ttl µs, day, task, fence, task floor
#       [, shrink: input µUSD, µUSD per output token, max output, min output]
# Returns {scope, day spent, day reserved, task spent, task reserved, amount reserved, output tokens}
# (`decide` is the same rule in Python)
_RESERVE = (
    _PURGE
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then
  local legacy = redis.call('GET', KEYS[5])
  if legacy then
    redis.call('SET', KEYS[3], string.format('%.0f', math.ceil(tonumber(legacy) * 1000000)), 'EX', 172800)
  end
end
local amount = tonumber(ARGV[2])
local day_limit, task_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local day, task, fence = ARGV[6], ARGV[7], tonumber(ARGV[8])
local day_reserved, task_reserved = 0, 0
local holds = redis.call('HGETALL', KEYS[1])
for i = 1, #holds, 2 do
  local d, k, f, m = string.match(holds[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if k == task and tonumber(f) < fence then
    -- an older delivery of this task: it lost the task (crashed or was reclaimed), its hold comes back
    redis.call('HDEL', KEYS[1], holds[i])
    redis.call('ZREM', KEYS[2], holds[i])
  else
    if d == day then day_reserved = day_reserved + tonumber(m) end
    if k == task then task_reserved = task_reserved + tonumber(m) end
  end
end
local day_spent = tonumber(redis.call('GET', KEYS[3]) or '0')
local task_spent = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), tonumber(ARGV[9]))
-- budget.Shrink, when given (ARGV[10..13]): the call's output may be capped to fit what is left
local shrink = ARGV[10] ~= nil
local input_m, out_m, max_out, min_out = tonumber(ARGV[10] or '0'), tonumber(ARGV[11] or '0'),
  tonumber(ARGV[12] or '0'), tonumber(ARGV[13] or '0')
local function cost(out) return math.max(0, math.ceil(input_m + out * out_m - 0.0005)) end
local scope, granted, out = 'fits', amount, max_out
if task_limit >= 0 and task_spent + task_reserved + amount > task_limit then scope = 'per_task'
elseif day_limit >= 0 and day_spent + day_reserved + amount > day_limit then
  local smallest = amount
  if shrink then smallest = cost(min_out) end
  if smallest > day_limit then scope = 'never'
  else
    scope = 'daily'
    if shrink then
      local room = day_limit - day_spent - day_reserved
      if out_m > 0 then out = math.min(max_out, math.floor((room - input_m) / out_m)) end
      while out >= min_out and cost(out) > room do out = out - 1 end
      if out >= min_out then scope, granted = 'fits', cost(out)
      elseif day_reserved > 0 then scope = 'wait' end
    end
  end
end
if scope == 'fits' then
  redis.call('HSET', KEYS[1], ARGV[1], day .. '|' .. task .. '|' .. ARGV[8] .. '|' .. string.format('%.0f', granted))
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
end
local function n(x) return string.format('%.0f', x) end
return {scope, n(day_spent), n(day_reserved), n(task_spent), n(task_reserved), n(granted), n(out)}
"""
)

# KEYS: holds, expiry, day spent (of the reservation's day), task spent[, the hour's cost figures]
# ARGV: id, cost µUSD, day ttl s, task ttl s[, the call's report figures: see costs.AGGREGATE_LUA]
# (counts the cost even if the hold was released; a call that was answered is added to its hour's
# report in the same script, so the report and the day's spend cannot disagree)
_SETTLE = (
    """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local cost = tonumber(ARGV[2])
if cost > 0 then
  redis.call('INCRBY', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  redis.call('INCRBY', KEYS[4], ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
"""
    + costs.AGGREGATE_LUA
    + """
return redis.call('GET', KEYS[3]) or '0'
"""
)

# KEYS: holds, expiry, day spent, held tasks, legacy day spend   ARGV: day
# Returns {day spent, day reserved, held tasks} (expired reservations are dropped first)
_SNAPSHOT = (
    _PURGE
    + """
local spent = tonumber(redis.call('GET', KEYS[3]) or '-1')
if spent < 0 then
  local legacy = redis.call('GET', KEYS[5])
  spent = legacy and math.ceil(tonumber(legacy) * 1000000) or 0
end
local reserved = 0
local holds = redis.call('HVALS', KEYS[1])
for _, v in ipairs(holds) do
  local d, m = string.match(v, '^([^|]*)|[^|]*|[^|]*|([^|]*)$')
  if d == ARGV[1] then reserved = reserved + tonumber(m) end
end
return {string.format('%.0f', spent), string.format('%.0f', reserved), redis.call('ZCARD', KEYS[4])}
"""
)


@dataclass(frozen=True)
class Reservation:
    """One call's reservation: settle it (or release it with cost 0) exactly once."""

    id: str
    day: str
    task_id: str
    amount: int  # micro-USD
    hour: str = ""  # the UTC hour it was made in (`costs.hour_of`), where the call's cost is reported


@dataclass(frozen=True)
class Snapshot:
    """The day's money as Redis holds it (micro-USD), for the API, the metrics and the hold release."""

    day: str
    spent: int
    reserved: int
    held_tasks: int
    limit: int | None

    @property
    def remaining(self) -> int | None:
        """What is neither spent nor reserved (None without a daily budget; never below 0)."""
        return None if self.limit is None else max(self.limit - self.spent - self.reserved, 0)

    @property
    def exhausted(self) -> bool:
        """Submissions are refused: the spend reached the budget, or tasks already wait for money."""
        return self.limit is not None and (self.spent >= self.limit or self.held_tasks > 0)


class BudgetLedger:
    """The service's budgets in Redis: reserve before a call, settle after it, and read the day's figures."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        *,
        keys: constants.ServiceKeys,
        daily_limit_usd: float | None,
        per_task_limit_usd: float | None,
        hold_ttl_seconds: float = 3600.0,
        task_ttl_seconds: int = 7 * 86_400,
        report_retention_days: int = 35,
        report_max_users: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.daily_limit = None if daily_limit_usd is None else micros(daily_limit_usd)
        self.per_task_limit = None if per_task_limit_usd is None else micros(per_task_limit_usd)
        self.daily_limit_usd = daily_limit_usd
        self.hold_ttl_seconds = hold_ttl_seconds
        self.task_ttl_seconds = task_ttl_seconds
        self.report_ttl_seconds = report_retention_days * 86_400 + 86_400
        self.report_max_users = report_max_users
        self._clock = clock
        self._reserve = redis_client.register_script(_RESERVE)
        self._settle = redis_client.register_script(_SETTLE)
        self._snapshot = redis_client.register_script(_SNAPSHOT)

    def today(self) -> str:
        return day_of(self._clock())

    def now(self) -> float:
        return self._clock()

    async def reserve(
        self, task_id: str, *, fence: int, amount: int, task_floor: int = 0, shrink: Shrink | None = None
    ) -> tuple[Verdict, Reservation | None]:
        """Reserve `amount` µUSD for one call of `task_id`; the reservation only when both caps hold with it.

        `task_floor` is the task's spend as its checkpoint knows it (tasks begun before this ledger).
        With `shrink`, a call that does not fit the day whole is reserved with its output capped to
        what is left (the verdict's `output_tokens`, its `amount` what was reserved), and one that
        does not fit while other calls hold reservations is told to `WAIT`.
        """
        now = self._clock()
        day, hour = day_of(now), costs.hour_of(now)
        reservation_id = uuid.uuid4().hex
        keys = [
            self.keys.budget_holds(),
            self.keys.budget_expiry(),
            self.keys.budget_spent(day),
            self.keys.budget_task(task_id),
            self.keys.spend(day),
        ]
        args: list[str | int] = [
            reservation_id,
            amount,
            -1 if self.daily_limit is None else self.daily_limit,
            -1 if self.per_task_limit is None else self.per_task_limit,
            int(self.hold_ttl_seconds * MICROS),
            day,
            task_id,
            fence,
            task_floor,
        ]
        if shrink is not None:
            args += [repr(shrink.input_micros), repr(shrink.output_micros), shrink.max_output, shrink.min_output]
        reply = await _run(run_script(self._reserve, keys, args))
        scope, day_spent, day_reserved, task_spent, task_reserved, granted, out = reply
        fits = scope == Scope.FITS.value
        verdict = Verdict(
            Scope(scope),
            int(granted) if fits else amount,
            int(day_spent),
            int(day_reserved),
            int(task_spent),
            int(task_reserved),
            output_tokens=int(out) if fits and shrink is not None else None,
        )
        amount = verdict.amount
        if not verdict.fits:
            return verdict, None
        return verdict, Reservation(id=reservation_id, day=day, task_id=task_id, amount=amount, hour=hour)

    async def settle(self, reservation: Reservation, cost: int, charge: costs.Charge | None = None) -> int:
        """Replace the reservation by the call's real cost (µUSD; 0: no call was billed); the day's spend after.

        With a `charge` (the call was answered) the call is added to its hour's cost report as well.
        """
        keys = [
            self.keys.budget_holds(),
            self.keys.budget_expiry(),
            self.keys.budget_spent(reservation.day),
            self.keys.budget_task(reservation.task_id),
        ]
        args: list[str | int] = [reservation.id, max(cost, 0), _KEEP_DAY_SECONDS, self.task_ttl_seconds]
        if charge is not None:
            # the reservation's hour, so that the hour lies in the day whose spend the call joins
            keys.append(self.keys.costs_hour(reservation.hour))
            args += [
                self.report_ttl_seconds,
                charge.model,
                charge.user,
                charge.intent,
                max(charge.input_tokens, 0),
                max(charge.output_tokens, 0),
                self.report_max_users,
            ]
        return int(await _run(run_script(self._settle, keys, args)))

    async def snapshot(self) -> Snapshot:
        day = self.today()
        keys = [
            self.keys.budget_holds(),
            self.keys.budget_expiry(),
            self.keys.budget_spent(day),
            self.keys.budget_held(),
            self.keys.spend(day),
        ]
        spent, reserved, held = await _run(run_script(self._snapshot, keys, [day]))
        return Snapshot(day=day, spent=int(spent), reserved=int(reserved), held_tasks=int(held), limit=self.daily_limit)

    async def check(self) -> None:
        """Raise `BudgetExhausted` (with the figure) when today's budget is spent or tasks wait for money."""
        if self.daily_limit_usd is None:
            return
        snap = await self.snapshot()
        if snap.exhausted:
            raise errors.BudgetExhausted(daily_message(snap.spent / MICROS, self.daily_limit_usd))

    def retry_after(self) -> int:
        return seconds_until_midnight(self._clock())


async def _run(awaitable: Awaitable[Any]) -> Any:
    try:
        return await awaitable
    except redis.exceptions.RedisError as exc:
        raise errors.from_redis(exc) from exc


class BudgetWatch:
    """A worker's periodic budget chores: export the day's figures, and send held tasks back when money is back."""

    def __init__(
        self,
        ledger: BudgetLedger,
        queue: TaskQueue,
        metrics: Metrics,
        *,
        smallest_call: int,
        interval_seconds: float = 5.0,
        most: int = 8,
    ) -> None:
        self.ledger = ledger
        self.queue = queue
        self.metrics = metrics
        self.smallest_call = smallest_call
        self.interval_seconds = interval_seconds
        self.most = most

    async def money_back(self) -> None:
        """A call settled below its reservation: send held tasks back at once if the day now has room.

        One `ZCARD` when nothing is held (the common case); a failure is only logged: the periodic
        pass (`interval_seconds`) looks again.
        """
        if self.ledger.daily_limit is None:
            return
        try:
            if await self.queue.held_count() == 0:
                return
            released = await self.release_held(most=self.most)
        except errors.StoreUnavailable:
            return
        if released:
            log.info("held_tasks_released", count=released, on="settle")

    async def refresh_metrics(self) -> Snapshot:
        snap = await self.ledger.snapshot()
        export(self.metrics, snap)
        return snap

    async def release_held(self, *, most: int) -> int:
        """Send back the held tasks whose next call fits what the day has left now (`releasable`); how many went.

        A task's need is the least its next call may reserve (`Waiting.least_usd`, else its worst
        case, else `smallest_call`); up to `HELD_LOOKED_AT` tasks, longest held first, are looked at.
        """
        snap = await self.refresh_metrics()
        if snap.held_tasks == 0 or (snap.remaining is not None and snap.remaining < self.smallest_call):
            return 0
        needs = await self.queue.held_needs(max(most, HELD_LOOKED_AT), default=self.smallest_call)
        chosen = releasable(room=snap.remaining, needs=needs, most=most)
        if not chosen:
            return 0
        return await self.queue.release_held(chosen)


def smallest_call(prices: Iterable[PriceConfig], max_output_tokens: int) -> int:
    """A lower bound of any call's reservation: `max_output_tokens` (pass the smallest output a call may be
    capped to) at the dearest output price (µUSD). Pure."""
    return micros(max((p.output_per_mtok for p in prices), default=0.0) * max_output_tokens / 1_000_000)


def export(metrics: Metrics, snap: Snapshot) -> None:
    """Set the budget gauges from a snapshot."""
    remaining = snap.remaining
    metrics.budget(
        spent_usd=snap.spent / MICROS,
        reserved_usd=snap.reserved / MICROS,
        remaining_usd=None if remaining is None else remaining / MICROS,
        held=snap.held_tasks,
    )

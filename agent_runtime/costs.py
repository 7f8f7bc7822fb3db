"""Cost reports: what the service spent, by UTC hour, model, user and intent, and its dearest tasks.

Every settled model call is added, in the same Lua script that adds it to the day's budget spend
(`budget.py`'s settle), to the hash of its UTC hour (`ServiceKeys.costs_hour`) and of its day
(`costs_day`, which also keeps each hour's cost and requests; a report reads whole days from it): cost in
micro-dollars, requests (model calls), input and output tokens, each also by model, by user
(`metadata.user`) and by intent. The report's total therefore equals the budget's spend over the
same hours to the micro-dollar, and a task's cost (the sum of its calls' settled micro-dollars,
`Checkpoint.cost_micros`) is counted once, in the hours its calls were made — a task that is held,
cancelled or never finishes still shows in what it spent.

When a task finishes, it enters the day's ranking of dearest tasks (`costs_top`, a sorted set kept
to `TOP_KEPT` entries, with their model and tokens in `costs_top_info`).

Bounds (tenants write `metadata.user`): a user label is at most `MAX_USER_CHARS` printable
characters, else `other`; an hour's hash names at most `RuntimeConfig.report_max_users` users,
the rest count as `other`; intents are the metric's bounded labels; models come from the spec.
Everything expires `report_retention_days` after its hour (or day).

Field names in an hour's hash: `cost`, `requests`, `input`, `output`, `users`, and
`<kind>|<name>|<figure>` with kind `m` (model), `u` (user) or `i` (intent): the name is whatever
lies between the first and the last `|`, so a `|` inside a user name cannot be mistaken.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio
import redis.exceptions

from agent_runtime import constants, errors
from agent_runtime.scripts import run_script

__all__ = [
    "AGGREGATE_LUA",
    "MAX_TOP",
    "MAX_USER_CHARS",
    "OTHER",
    "TOP_KEPT",
    "UNKNOWN",
    "Charge",
    "CostReports",
    "Range",
    "build_report",
    "hour_of",
    "hour_start",
    "parse_range",
    "user_label",
]

MICROS: Final = 1_000_000
MAX_USER_CHARS: Final = 128
OTHER: Final = "other"
UNKNOWN: Final = "unknown"
TOP_KEPT: Final = 100  # tasks ranked per day; a report's `top` is at most this
MAX_TOP: Final = TOP_KEPT
DEFAULT_TOP: Final = 10
DEFAULT_SPAN: Final = datetime.timedelta(hours=24)
# A report names at most this many users (the dearest); the rest are summed as `other`.
MAX_REPORT_USERS: Final = 200
_HOUR_FORMAT: Final = "%Y-%m-%dT%H"


# --- pure ------------------------------------------------------------------------------------------


def hour_of(timestamp: float) -> str:
    """The UTC hour of a Unix time as it names a key (`2026-03-01T12`). Pure."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime(_HOUR_FORMAT)


def hour_start(hour: str) -> datetime.datetime:
    """The start of a key's hour, as an aware UTC datetime. Pure."""
    return datetime.datetime.strptime(hour, _HOUR_FORMAT).replace(tzinfo=datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    """`2026-03-01T12:00:00Z`. Pure."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_at(timestamp: float) -> str:
    """`rfc3339` of a Unix time. Pure."""
    return rfc3339(datetime.datetime.fromtimestamp(timestamp, datetime.UTC))


def user_label(metadata: Mapping[str, Any]) -> str:
    """The bounded user label of a task: its `metadata.user`, `unknown` without one, `other` if unfit. Pure."""
    user = metadata.get("user")
    if user is None or user == "":
        return UNKNOWN
    if not isinstance(user, str) or len(user) > MAX_USER_CHARS or not user.isprintable():
        return OTHER
    return user


@dataclass(frozen=True)
class Charge:
    """What one settled model call adds to its hour's report (its cost is the settle's)."""

    model: str
    user: str
    intent: str
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0


@dataclass(frozen=True)
class Range:
    """A report's period: `[start, end)`, and the hours it reads (those starting in it, the first rounded down)."""

    start: datetime.datetime
    end: datetime.datetime

    def hours(self) -> list[str]:
        first = self.start.replace(minute=0, second=0, microsecond=0)
        out: list[str] = []
        moment = first
        while moment < self.end:
            out.append(moment.strftime(_HOUR_FORMAT))
            moment += datetime.timedelta(hours=1)
        return out

    def sources(self) -> list[str]:
        """What a report reads: whole UTC days inside the period as days (`YYYY-MM-DD`), the rest as hours."""
        by_day: dict[str, list[str]] = {}
        for hour in self.hours():
            by_day.setdefault(hour[:10], []).append(hour)
        out: list[str] = []
        for day, hours in by_day.items():
            out += [day] if len(hours) == 24 else hours
        return out

    def days(self) -> list[str]:
        day = self.start.date()
        out: list[str] = []
        while datetime.datetime.combine(day, datetime.time(), datetime.UTC) < self.end:
            out.append(day.isoformat())
            day += datetime.timedelta(days=1)
        return out


def _parse_time(value: str, name: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise errors.InvalidReportRange(
            f"{name}={value!r} is not an RFC 3339 time (e.g. 2026-03-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise errors.InvalidReportRange(f"{name}={value!r} has no time zone: add Z or an offset (RFC 3339)")
    return moment.astimezone(datetime.UTC)


def parse_range(start: str | None, end: str | None, *, now: float, retention_days: int) -> Range:
    """The period asked for (`from`/`to`, RFC 3339; default: the last 24 hours). Pure.

    Raises `InvalidReportRange` (422) for a time that does not parse or has no zone, an end not
    after its start, and a start before what is kept (`reportRetentionDays`), naming the oldest
    hour the service still holds.
    """
    current = datetime.datetime.fromtimestamp(now, datetime.UTC)
    stop = _parse_time(end, "to") if end else current
    begin = _parse_time(start, "from") if start else stop - DEFAULT_SPAN
    if stop <= begin:
        raise errors.InvalidReportRange(f"to ({rfc3339(stop)}) must be after from ({rfc3339(begin)})")
    oldest = (current - datetime.timedelta(days=retention_days)).replace(minute=0, second=0, microsecond=0)
    oldest += datetime.timedelta(hours=1)  # the oldest whole hour still kept
    if begin < oldest:
        raise errors.InvalidReportRange(
            f"from ({rfc3339(begin)}) is past the retention: cost reports are kept {retention_days} days"
            f" (spec.budget.reportRetentionDays); the oldest hour kept starts at {rfc3339(oldest)}"
        )
    return Range(begin, stop)


def _usd(amount: int) -> float:
    return amount / MICROS


def build_report(
    period: Range,
    hours: Sequence[tuple[str, Mapping[str, str]]],
    tasks: Iterable[Mapping[str, Any]],
    *,
    top: int,
) -> dict[str, Any]:
    """The seed's report shape from the hours' hashes and the ranked tasks (micro-dollars summed, then USD). Pure.

    `tasks`: `{taskId, costMicros, model, tokens, finishedAt}` of the days in the period; those
    that finished inside it are ranked.
    """
    total = requests = 0
    by_model: dict[str, dict[str, int]] = {}
    by_user: dict[str, dict[str, int]] = {}
    by_intent: dict[str, dict[str, int]] = {}
    by_hour: dict[str, dict[str, float | int]] = {}
    for source, fields in hours:
        if not fields:
            continue
        cost, calls = int(fields.get("cost", 0)), int(fields.get("requests", 0))
        total += cost
        requests += calls
        is_day = len(source) == 10  # a whole day's hash: its hours are `h|HH|…` fields
        if not is_day:
            by_hour[f"{source}:00:00Z"] = {"costUSD": _usd(cost), "requests": calls}  # rfc3339 of the hour
        hourly: dict[str, dict[str, int]] = {}
        tables = {"m": by_model, "u": by_user, "i": by_intent, "h": hourly}
        for field, raw in fields.items():
            table = tables.get(field[:1])
            if table is None or field[1:2] != "|":
                continue
            name, _, figure = field[2:].rpartition("|")
            row = table.setdefault(name, {})
            row[figure] = row.get(figure, 0) + int(raw)
        if is_day:
            for hh, row in sorted(hourly.items()):
                moment = f"{source}T{hh}:00:00Z"
                by_hour[moment] = {"costUSD": _usd(row.get("cost", 0)), "requests": row.get("requests", 0)}
    start, end = period.start.timestamp(), period.end.timestamp()
    ranked = sorted(
        (t for t in tasks if start <= float(t["finishedAt"]) < end),
        key=lambda t: (-int(t["costMicros"]), str(t["taskId"])),
    )
    return {
        "period": {"start": rfc3339(period.start), "end": rfc3339(period.end)},
        "totalCostUSD": _usd(total),
        "totalRequests": requests,
        "byModel": {
            model: {
                "costUSD": _usd(row.get("cost", 0)),
                "requests": row.get("requests", 0),
                "tokens": row.get("input", 0)
                + row.get("output", 0)
                + row.get("cache_write", 0)
                + row.get("cache_read", 0),
                "cacheReadTokens": row.get("cache_read", 0),
                "cacheWriteTokens": row.get("cache_write", 0),
            }
            for model, row in sorted(by_model.items())
        },
        "byUser": _users(by_user),
        "byIntent": {
            intent: {"costUSD": _usd(row.get("cost", 0)), "requests": row.get("requests", 0)}
            for intent, row in sorted(by_intent.items())
        },
        "byHour": dict(sorted(by_hour.items())),
        "topExpensiveTasks": [
            {
                "taskId": str(t["taskId"]),
                "costUSD": _usd(int(t["costMicros"])),
                "model": str(t["model"]),
                "tokens": int(t["tokens"]),
            }
            for t in ranked[:top]
        ],
    }


def _users(by_user: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float | int]]:
    """The dearest `MAX_REPORT_USERS` users by name; the others summed into `other`."""
    ordered = sorted(by_user.items(), key=lambda item: (-item[1].get("cost", 0), item[0]))
    kept = dict(ordered[:MAX_REPORT_USERS])
    rest = ordered[MAX_REPORT_USERS:]
    if rest:
        other = dict(kept.get(OTHER, {}))
        for _, row in rest:
            for figure, value in row.items():
                other[figure] = other.get(figure, 0) + value
        kept[OTHER] = other
    return {
        user: {"costUSD": _usd(row.get("cost", 0)), "requests": row.get("requests", 0)}
        for user, row in sorted(kept.items())
    }


# --- Redis -----------------------------------------------------------------------------------------

# Appended to the settle script (budget.py), which passes the hour's hash as KEYS[5] (its name ends
# in the hour, `…THH`), the day's as KEYS[6] and, from ARGV[5] on: ttl s, model, user, intent,
# input tokens, output tokens, most users per hash[, cache write tokens, cache read tokens]. The
# cost is ARGV[2] (micro-USD), the same figure the day's spend gains. The day's hash repeats the
# hour's figures (and `h|HH|cost`/`requests` per hour), so that a report over whole days reads
# one hash a day instead of 24.
AGGREGATE_LUA: Final = """
if KEYS[5] then
  local cost, model, intent = ARGV[2], ARGV[6], ARGV[8]
  local hh = string.sub(KEYS[5], -2)
  for k = 5, 6 do
    local h, user = KEYS[k], ARGV[7]
    redis.call('HINCRBY', h, 'cost', cost)
    redis.call('HINCRBY', h, 'requests', 1)
    redis.call('HINCRBY', h, 'input', ARGV[9])
    redis.call('HINCRBY', h, 'output', ARGV[10])
    redis.call('HINCRBY', h, 'm|' .. model .. '|cost', cost)
    redis.call('HINCRBY', h, 'm|' .. model .. '|requests', 1)
    redis.call('HINCRBY', h, 'm|' .. model .. '|input', ARGV[9])
    redis.call('HINCRBY', h, 'm|' .. model .. '|output', ARGV[10])
    if ARGV[12] then
      redis.call('HINCRBY', h, 'cache_write', ARGV[12])
      redis.call('HINCRBY', h, 'cache_read', ARGV[13])
      redis.call('HINCRBY', h, 'm|' .. model .. '|cache_write', ARGV[12])
      redis.call('HINCRBY', h, 'm|' .. model .. '|cache_read', ARGV[13])
    end
    if redis.call('HEXISTS', h, 'u|' .. user .. '|cost') == 0 then
      if tonumber(redis.call('HGET', h, 'users') or '0') >= tonumber(ARGV[11]) then
        user = 'other'
      else
        redis.call('HINCRBY', h, 'users', 1)
      end
    end
    redis.call('HINCRBY', h, 'u|' .. user .. '|cost', cost)
    redis.call('HINCRBY', h, 'u|' .. user .. '|requests', 1)
    redis.call('HINCRBY', h, 'i|' .. intent .. '|cost', cost)
    redis.call('HINCRBY', h, 'i|' .. intent .. '|requests', 1)
    if k == 6 then
      redis.call('HINCRBY', h, 'h|' .. hh .. '|cost', cost)
      redis.call('HINCRBY', h, 'h|' .. hh .. '|requests', 1)
    end
    redis.call('EXPIRE', h, ARGV[5])
  end
end
"""

# KEYS: the day's ranking (sorted set), its details (hash)
# ARGV: task id, cost µUSD, details JSON, ttl s, entries kept
_RANK = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local kept = tonumber(ARGV[5])
local over = redis.call('ZCARD', KEYS[1]) - kept
if over > 0 then
  local gone = redis.call('ZRANGE', KEYS[1], 0, over - 1)
  for _, id in ipairs(gone) do redis.call('HDEL', KEYS[2], id) end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


class CostReports:
    """Reads the reports and ranks finished tasks; the per-call figures are written by the budget's settle."""

    def __init__(self, redis_client: redis.asyncio.Redis, *, keys: constants.ServiceKeys, retention_days: int) -> None:
        self.redis = redis_client
        self.keys = keys
        self.retention_days = retention_days
        self._rank = redis_client.register_script(_RANK)

    @property
    def ttl_seconds(self) -> int:
        """How long an hour's (or a day's) figures are kept: the retention, plus the hour or day itself."""
        return self.retention_days * 86_400 + 86_400

    async def rank_task(
        self, task_id: str, *, cost_micros: int, model: str, tokens: int, finished_at: float, user: str
    ) -> None:
        """Enter a finished task in its day's ranking (kept to the `TOP_KEPT` dearest)."""
        day = datetime.datetime.fromtimestamp(finished_at, datetime.UTC).date().isoformat()
        details = json.dumps({"model": model, "tokens": tokens, "finishedAt": finished_at, "user": user})
        keys = [self.keys.costs_top(day), self.keys.costs_top_info(day)]
        await _run(run_script(self._rank, keys, [task_id, cost_micros, details, self.ttl_seconds, TOP_KEPT]))

    async def report(self, period: Range, *, top: int) -> dict[str, Any]:
        """The report of a period: one pipelined read of its hours and its days' rankings."""
        hours = period.sources()
        days = period.days()
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in hours:
                pipe.hgetall(self.keys.costs_day(source) if len(source) == 10 else self.keys.costs_hour(source))
            for day in days:
                pipe.zrange(self.keys.costs_top(day), 0, -1, withscores=True)
                pipe.hgetall(self.keys.costs_top_info(day))
            replies = await _run(pipe.execute())
        hashes = list(zip(hours, replies[: len(hours)], strict=True))
        candidates: list[tuple[int, str, str]] = []
        rest = replies[len(hours) :]
        for ranked, info in zip(rest[::2], rest[1::2], strict=True):
            candidates += [(int(score), task_id, info.get(task_id) or "{}") for task_id, score in ranked]
        # dearest first; only as many details decoded as it takes to find `top` inside the period
        candidates.sort(key=lambda c: (-c[0], c[1]))
        start, end = period.start.timestamp(), period.end.timestamp()
        tasks: list[dict[str, Any]] = []
        for micros, task_id, raw in candidates:
            if len(tasks) >= top:
                break
            detail = json.loads(raw)
            finished = float(detail.get("finishedAt", 0.0))
            if start <= finished < end:
                tasks.append(
                    {
                        "taskId": task_id,
                        "costMicros": micros,
                        "model": detail.get("model", ""),
                        "tokens": detail.get("tokens", 0),
                        "finishedAt": finished,
                    }
                )
        return build_report(period, hashes, tasks, top=top)


async def _run(awaitable: Any) -> Any:
    try:
        return await awaitable
    except redis.exceptions.RedisError as exc:
        raise errors.from_redis(exc) from exc

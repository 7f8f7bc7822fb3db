"""Cost reports: what the service spent, by UTC hour, model, user and intent, and its dearest tasks.

Every settled model call is added, in the same Lua script that adds it to the day's budget spend
(`budget.py`'s settle), to the hash of its UTC hour (`ServiceKeys.costs_hour`): cost in
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


def _split(field: str) -> tuple[str, str, str] | None:
    first, last = field.find("|"), field.rfind("|")
    if first <= 0 or last <= first:
        return None
    return field[:first], field[first + 1 : last], field[last + 1 :]


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
    for hour, fields in hours:
        if not fields:
            continue
        cost, calls = int(fields.get("cost", 0)), int(fields.get("requests", 0))
        total += cost
        requests += calls
        by_hour[rfc3339(hour_start(hour))] = {"costUSD": _usd(cost), "requests": calls}
        for field, raw in fields.items():
            parts = _split(field)
            if parts is None:
                continue
            kind, name, figure = parts
            table = {"m": by_model, "u": by_user, "i": by_intent}.get(kind)
            if table is None:
                continue
            row = table.setdefault(name, {})
            row[figure] = row.get(figure, 0) + int(raw)
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
                "tokens": row.get("input", 0) + row.get("output", 0),
            }
            for model, row in sorted(by_model.items())
        },
        "byUser": _users(by_user),
        "byIntent": {
            intent: {"costUSD": _usd(row.get("cost", 0)), "requests": row.get("requests", 0)}
            for intent, row in sorted(by_intent.items())
        },
        "byHour": by_hour,
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

# Appended to the settle script (budget.py), which passes the hour's hash as KEYS[5] and, from
# ARGV[5] on: hour ttl s, model, user, intent, input tokens, output tokens, most users per hour.
# The cost is ARGV[2] (micro-USD), the same figure the day's spend gains.
AGGREGATE_LUA: Final = """
if KEYS[5] then
  local h, cost = KEYS[5], ARGV[2]
  redis.call('HINCRBY', h, 'cost', cost)
  redis.call('HINCRBY', h, 'requests', 1)
  redis.call('HINCRBY', h, 'input', ARGV[9])
  redis.call('HINCRBY', h, 'output', ARGV[10])
  local model, user, intent = ARGV[6], ARGV[7], ARGV[8]
  redis.call('HINCRBY', h, 'm|' .. model .. '|cost', cost)
  redis.call('HINCRBY', h, 'm|' .. model .. '|requests', 1)
  redis.call('HINCRBY', h, 'm|' .. model .. '|input', ARGV[9])
  redis.call('HINCRBY', h, 'm|' .. model .. '|output', ARGV[10])
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
  redis.call('EXPIRE', h, ARGV[5])
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
        hours = period.hours()
        days = period.days()
        async with self.redis.pipeline(transaction=False) as pipe:
            for hour in hours:
                pipe.hgetall(self.keys.costs_hour(hour))
            for day in days:
                pipe.zrange(self.keys.costs_top(day), 0, -1, withscores=True)
                pipe.hgetall(self.keys.costs_top_info(day))
            replies = await _run(pipe.execute())
        hashes = list(zip(hours, replies[: len(hours)], strict=True))
        tasks: list[dict[str, Any]] = []
        rest = replies[len(hours) :]
        for ranked, info in zip(rest[::2], rest[1::2], strict=True):
            for task_id, score in ranked:
                detail = json.loads(info.get(task_id) or "{}")
                tasks.append(
                    {
                        "taskId": task_id,
                        "costMicros": int(score),
                        "model": detail.get("model", ""),
                        "tokens": detail.get("tokens", 0),
                        "finishedAt": detail.get("finishedAt", 0.0),
                    }
                )
        return build_report(period, hashes, tasks, top=top)


async def _run(awaitable: Any) -> Any:
    try:
        return await awaitable
    except redis.exceptions.RedisError as exc:
        raise errors.from_redis(exc) from exc

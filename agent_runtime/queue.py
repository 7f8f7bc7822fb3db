"""The task queue: Redis Streams per priority, one consumer group, and every task-state transition.

Each transition that touches both a task record and its stream entry runs as one Lua script, so the
two never disagree: submit (idempotency key, record, XADD), claim (fence, delivery count, dead
letter), finish (store the result, then XACK + XDEL in the same script — a task is acknowledged
only once its result is stored), retry-later, requeue on shutdown and cancel.

Acknowledged entries are deleted, so each stream holds exactly the waiting + pending entries and
queue depth is the sum of XLEN. A worker that dies leaves its entries pending; another worker takes
them with XAUTOCLAIM once they have been idle `claim_idle_seconds` (live workers heartbeat theirs).
Every claim bumps the record's `fence`; checkpoints and results are written only by the holder of
the current fence, which is what makes a reclaimed task safe even if its old worker is merely slow.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

from agent_runtime import constants, errors
from agent_runtime.config import RuntimeConfig
from agent_runtime.redisconn import run_replicated
from agent_runtime.scripts import run_script
from agent_runtime.tasks import Checkpoint, TaskRecord, TaskStatus, Waiting

__all__ = [
    "Claim",
    "Entry",
    "FinishOutcome",
    "PriorityScheduler",
    "Submission",
    "TaskQueue",
    "request_digest",
]

T = TypeVar("T")

FinishOutcome = Literal["stored", "cancelled", "succeeded", "failed", "lost"]

_TERMINAL_LUA = "status == 'succeeded' or status == 'failed' or status == 'cancelled'"

# A task leaves the queue's byte count when it ends (finished, cancelled, dead-lettered): its size
# is dropped from the sizes hash and taken off the total, once (a second call finds no size).
# KEYS[bytes_at], KEYS[bytes_at + 1]: the total and the sizes hash (`ServiceKeys.queued_bytes/sizes`).
_UNQUEUE_LUA = """
local function unqueue(total, sizes, task_id)
  local size = redis.call('HGET', sizes, task_id)
  if size then
    redis.call('HDEL', sizes, task_id)
    redis.call('DECRBY', total, size)
  end
end
"""

# KEYS: task, stream, idem, queued bytes, queued sizes, priority streams...
# ARGV: task_id, idem_ttl, use_idem (0|1), max_queued (0: unbounded), request digest, size (bytes),
#       max queued bytes (0: unbounded), field, value, ...
# Returns {1, task_id} created, {0, task_id} the key's task (made from the same request),
# {2, task_id} the key's task was made from another request, {3, depth} the queue is full,
# {4, bytes} the queued tasks hold too many bytes for this one.
_SUBMIT = """
if ARGV[3] == '1' then
  local existing = redis.call('HMGET', KEYS[3], 'task_id', 'request')
  if existing[1] then
    if existing[2] ~= ARGV[5] then return {2, existing[1]} end
    return {0, existing[1]}
  end
end
local limit = tonumber(ARGV[4])
if limit > 0 then
  local depth = 0
  for i = 6, #KEYS do depth = depth + redis.call('XLEN', KEYS[i]) end
  if depth >= limit then return {3, tostring(depth)} end
end
local size = tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[7])
if max_bytes > 0 then
  local queued = tonumber(redis.call('GET', KEYS[4]) or '0')
  if queued + size > max_bytes then return {4, tostring(queued)} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1])
redis.call('HSET', KEYS[1], 'entry_id', entry)
redis.call('INCRBY', KEYS[4], size)
redis.call('HSET', KEYS[5], ARGV[1], size)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[3], 'task_id', ARGV[1], 'request', ARGV[5])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return {1, ARGV[1]}
"""

# KEYS: task, stream, dead, queued bytes, queued sizes   ARGV: entry, group, consumer, now, max_deliveries, ttl
_CLAIM = f"""{_UNQUEUE_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
local function drop()
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
end
if not status then drop() return {{'gone'}} end
if {_TERMINAL_LUA} then drop() return {{'done', status}} end
local deliveries = redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if deliveries > tonumber(ARGV[5]) then
  local last = redis.call('HGET', KEYS[1], 'last_error')
  if not last or last == '' then last = 'none recorded (the worker holding it stopped or timed out)' end
  local message = 'gave up after ' .. (deliveries - 1) .. ' deliveries; last error: ' .. last
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', message, 'finished_at', ARGV[4],
             'deliveries', deliveries - 1)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  local task_id = redis.call('HGET', KEYS[1], 'task_id')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'task_id', task_id, 'error', last,
             'deliveries', deliveries - 1)
  unqueue(KEYS[4], KEYS[5], task_id)
  drop()
  return {{'dead', message}}
end
redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'consumer', ARGV[3], 'entry_id', ARGV[1])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[4])
return {{'ok', redis.call('HGETALL', KEYS[1])}}
"""

# KEYS: task   ARGV: fence, field, value, ...
_CHECKPOINT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then return status or 'gone' end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 'lost' end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 'ok'
"""

# KEYS: task, stream, queued bytes, queued sizes   ARGV: fence, entry, group, ttl, field, value, ...
_FINISH = f"""{_UNQUEUE_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
local outcome
if status == 'running' and redis.call('HGET', KEYS[1], 'fence') == ARGV[1] then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  outcome = 'stored'
elseif status and ({_TERMINAL_LUA}) then
  outcome = status
else
  return 'lost'
end
unqueue(KEYS[3], KEYS[4], redis.call('HGET', KEYS[1], 'task_id'))
redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return outcome
"""

# KEYS: task   ARGV: fence, error   (leave the entry pending: it is reclaimed after the idle timeout)
_RETRY_LATER = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'last_error', ARGV[2])
return 1
"""

# KEYS: task, stream   ARGV: fence, entry, group   (graceful shutdown: hand over at once, delivery not counted)
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
local entry = redis.call('XADD', KEYS[2], '*', 'task_id', redis.call('HGET', KEYS[1], 'task_id'))
redis.call('HSET', KEYS[1], 'status', 'queued', 'entry_id', entry)
redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return 1
"""

# KEYS: task, held, queued bytes, queued sizes, priority streams...   ARGV: group, now, ttl
# (the streams are declared, not read from the record, so the script touches only keys it was given)
_CANCEL = f"""{_UNQUEUE_LUA}
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {{'gone', 0}} end
if {_TERMINAL_LUA} then return {{status, 0}} end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'task_id'))
unqueue(KEYS[3], KEYS[4], redis.call('HGET', KEYS[1], 'task_id'))
local stream = redis.call('HGET', KEYS[1], 'stream')
local entry = redis.call('HGET', KEYS[1], 'entry_id')
for i = 5, #KEYS do
  if KEYS[i] == stream and entry then
    redis.call('XACK', stream, ARGV[1], entry)
    redis.call('XDEL', stream, entry)
  end
end
return {{'cancelled', 1}}
"""

# KEYS: task, stream, held   ARGV: fence, entry, group, now, waiting (JSON)
# Put a task aside until money comes back: queued, out of the stream (it neither counts as queue
# depth nor drives autoscaling: more workers cannot make money), delivery not counted.
_HOLD = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'waiting', ARGV[5])
redis.call('HDEL', KEYS[1], 'entry_id')
redis.call('HINCRBY', KEYS[1], 'deliveries', -1)
redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], redis.call('HGET', KEYS[1], 'task_id'))
return 1
"""

# KEYS: held, high, normal, low stream, task keys...   ARGV: task ids (in the order of their keys)
# Send held tasks back to their stream (those cancelled meanwhile are only dropped from the set).
_RELEASE = """
local released = 0
for i = 1, #ARGV do
  local key = KEYS[4 + i]
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 and redis.call('HGET', key, 'status') == 'queued' then
    local stream = redis.call('HGET', key, 'stream')
    for s = 2, 4 do
      if KEYS[s] == stream then
        redis.call('HSET', key, 'entry_id', redis.call('XADD', stream, '*', 'task_id', ARGV[i]))
        redis.call('HDEL', key, 'waiting')
        released = released + 1
      end
    end
  end
end
return released
"""

# KEYS: streams, most wanted first   ARGV: group, consumer, count
_READ = """
local wanted = tonumber(ARGV[3])
local out = {}
for _, stream in ipairs(KEYS) do
  if wanted <= 0 then break end
  local ok, res = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', wanted, 'STREAMS', stream, '>')
  if not ok then return redis.error_reply(res.err or tostring(res)) end
  if res then
    for _, item in ipairs(res[1][2]) do
      local fields = item[2]
      local task_id = ''
      for i = 1, #fields, 2 do if fields[i] == 'task_id' then task_id = fields[i + 1] end end
      table.insert(out, {stream, item[1], task_id})
      wanted = wanted - 1
    end
  end
end
return out
"""

# KEYS: stream   ARGV: group, consumer, entry ids...   (reset idle time only of entries this consumer still owns)
_HEARTBEAT = """
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""


@dataclass(frozen=True)
class Entry:
    """One stream entry delivered to this consumer."""

    stream: str
    entry_id: str
    task_id: str


@dataclass(frozen=True)
class Submission:
    task_id: str
    created: bool  # False: the idempotency key named an existing task


@dataclass(frozen=True)
class Claim:
    """A delivery this worker now owns: the record and the fence its writes must carry."""

    entry: Entry
    record: TaskRecord

    @property
    def fence(self) -> int:
        return self.record.fence


def request_digest(task_input: str, priority: str) -> str:
    """What an idempotency key remembers of the request that made its task. Pure."""
    return hashlib.sha256(f"{priority}\0{task_input}".encode()).hexdigest()


class PriorityScheduler:
    """Smooth weighted round robin over priorities: decides which stream a read tries first.

    With weights 6/3/1, `low` is tried first one read in ten, so it is never starved however
    busy `high` is, while `high` still gets most reads. Pure and deterministic.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        if not weights or any(w <= 0 for w in weights.values()):
            raise errors.ConfigError("priority_weights: every priority needs a weight > 0")
        self._weights = dict(weights)
        self._credit = dict.fromkeys(weights, 0)
        self._by_weight = sorted(weights, key=lambda p: (-weights[p], constants.PRIORITIES.index(p)))

    def order(self) -> list[str]:
        """Return the priorities in the order the next read should try them."""
        total = sum(self._weights.values())
        for name, weight in self._weights.items():
            self._credit[name] += weight
        first = max(self._by_weight, key=lambda p: self._credit[p])
        self._credit[first] -= total
        return [first, *(p for p in self._by_weight if p != first)]


class TaskQueue:
    """Every Redis operation on tasks of one service: records, streams and the consumer group."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        *,
        keys: constants.ServiceKeys,
        max_deliveries: int = 5,
        claim_idle_seconds: float = 60.0,
        task_ttl_seconds: int = 7 * 86_400,
        priority_weights: Mapping[str, int] | None = None,
        max_queued_tasks: int | None = None,
        max_queued_bytes: int | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis_client
        self.keys = keys
        self.max_queued_tasks = max_queued_tasks
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes, self.queued_sizes = keys.queued_bytes(), keys.queued_sizes()
        self.max_deliveries = max_deliveries
        # Replicas that must hold a promised write (submit, checkpoint, result) before it is
        # acknowledged, so that a failover cannot take it back (see `redisconn.run_replicated`).
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.task_ttl_seconds = task_ttl_seconds
        self.scheduler = PriorityScheduler(priority_weights or {"high": 6, "normal": 3, "low": 1})
        self.streams = {p: keys.stream(p) for p in constants.PRIORITIES}
        self.dead_letter = keys.dead_letter()
        self.group = constants.CONSUMER_GROUP
        self._clock = clock
        r = redis_client
        self._submit = r.register_script(_SUBMIT)
        self._claim = r.register_script(_CLAIM)
        self._checkpoint = r.register_script(_CHECKPOINT)
        self._finish = r.register_script(_FINISH)
        self._retry_later = r.register_script(_RETRY_LATER)
        self._requeue = r.register_script(_REQUEUE)
        self._cancel = r.register_script(_CANCEL)
        self._read = r.register_script(_READ)
        self._overflow: dict[str, list[Entry]] = {}  # delivered to a consumer beyond what it asked for
        self._heartbeat = r.register_script(_HEARTBEAT)
        self._hold = r.register_script(_HOLD)
        self._release = r.register_script(_RELEASE)
        self.held = keys.budget_held()

    @classmethod
    def from_config(cls, config: RuntimeConfig, redis_client: redis.asyncio.Redis) -> TaskQueue:
        return cls(
            redis_client,
            keys=config.keys(),
            max_deliveries=config.max_deliveries,
            claim_idle_seconds=config.claim_idle_seconds,
            task_ttl_seconds=config.task_ttl_seconds,
            priority_weights=config.priority_weights,
            max_queued_tasks=config.max_queued_tasks,
            max_queued_bytes=config.max_queued_input_bytes,
            wait_replicas=config.redis.wait_replicas,
            wait_timeout_ms=config.redis.wait_timeout_ms,
        )

    def task_key(self, task_id: str) -> str:
        return self.keys.task(task_id)

    # --- the API side ---

    async def submit(
        self,
        task_input: str,
        *,
        priority: str = "normal",
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_steps: int,
    ) -> Submission:
        """Create the task record and enqueue it; with an idempotency key, return the task it already made.

        Raises `IdempotencyConflict` when the key's task was made from another input or priority
        (the key's first request is the one kept), and `QueueFull` at `max_queued_tasks`.
        """
        if priority not in self.streams:
            raise errors.InvalidTask(f"unknown priority {priority!r}; use one of {', '.join(self.streams)}")
        task_id = uuid.uuid4().hex
        record = TaskRecord(
            task_id=task_id,
            status=TaskStatus.QUEUED,
            priority=priority,
            input=task_input,
            stream=self.streams[priority],
            metadata=dict(metadata or {}),
            idempotency_key=idempotency_key,
            max_steps=max_steps,
            created_at=self._clock(),
        )
        idem = self.keys.idempotency(idempotency_key) if idempotency_key else self.keys.idempotency("")
        keys = [
            self.task_key(task_id),
            self.streams[priority],
            idem,
            self.queued_bytes,
            self.queued_sizes,
            *self.streams.values(),
        ]
        fields = record.creation_fields()
        # What the record holds while queued: the input, the metadata and the rest, as stored.
        size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in fields.items())
        args: list[str | int] = [
            task_id,
            self.task_ttl_seconds,
            1 if idempotency_key else 0,
            self.max_queued_tasks or 0,
            request_digest(task_input, priority),
            size,
            self.max_queued_bytes or 0,
        ]
        for field, value in fields.items():
            args += [field, value]
        outcome, value = await self._promise(self._submit, keys, args)
        if outcome == 2:
            raise errors.IdempotencyConflict(
                f"idempotency_key {idempotency_key!r} was used for task {value} with a different input or "
                "priority; use a new key for a new task"
            )
        if outcome == 3:
            raise errors.QueueFull(
                f"queue full: {value} tasks queued or running, the limit is {self.max_queued_tasks} "
                "(limits.maxQueuedTasks); retry later"
            )
        if outcome == 4:
            raise errors.QueueFull(
                f"queue full: the tasks queued or running hold {value} bytes, this one {size}, the limit is"
                f" {self.max_queued_bytes} (limits.maxQueuedInputBytes); retry later"
            )
        return Submission(task_id=str(value), created=outcome == 1)

    async def get(self, task_id: str) -> TaskRecord:
        raw: dict[str, str] = await self._run(self.redis.hgetall(self.task_key(task_id)))  # type: ignore[arg-type]
        if not raw:
            raise errors.TaskNotFound(f"no task {task_id!r} (unknown id, or its record expired)")
        return TaskRecord.from_hash(raw)

    async def cancel(self, task_id: str) -> tuple[TaskStatus, bool]:
        """Cancel a queued or running task; return the status it ends in and whether this call cancelled it."""
        status, changed = await self._call(
            self._cancel,
            [
                self.task_key(task_id),
                self.keys.budget_held(),
                self.queued_bytes,
                self.queued_sizes,
                *self.streams.values(),
            ],
            [self.group, repr(self._clock()), self.task_ttl_seconds],
        )
        if status == "gone":
            raise errors.TaskNotFound(f"no task {task_id!r} (unknown id, or its record expired)")
        return TaskStatus(status), bool(changed)

    async def depth(self) -> int:
        """Waiting + pending entries over all priorities (acknowledged entries are deleted)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams.values():
                pipe.xlen(stream)
            lengths = await self._run(pipe.execute())
        return int(sum(lengths))

    async def probe(self) -> None:
        """Raise `StoreUnavailable` unless Redis accepts a write now (what readiness means for us)."""
        await self._run(self.redis.set(self.keys.probe(), repr(self._clock()), px=60_000))

    # --- the worker side ---

    async def ensure_group(self) -> None:
        """Create the consumer group on every priority stream (idempotent; reads from the beginning)."""
        for stream in self.streams.values():
            try:
                await self._run(self.redis.xgroup_create(stream, self.group, id="0", mkstream=True))
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(self, consumer: str, count: int, *, block_ms: int = 0) -> list[Entry]:
        """Take up to `count` new entries, trying priorities in weighted order; block if all are empty."""
        if count <= 0:
            return []
        held = self._overflow.get(consumer)
        if held:
            self._overflow[consumer] = held[count:]
            return held[:count]
        order = [self.streams[p] for p in self.scheduler.order()]
        rows = await self._call(self._read, order, [self.group, consumer, count])
        entries = [Entry(stream=str(s), entry_id=str(e), task_id=str(t)) for s, e, t in rows]
        if entries or not block_ms:
            return entries
        reply = await self._run(
            self.redis.xreadgroup(self.group, consumer, dict.fromkeys(order, ">"), count=count, block=block_ms)
        )
        entries = [
            Entry(stream=str(stream), entry_id=str(entry_id), task_id=str(fields.get("task_id", "")))
            for stream, items in reply or []
            for entry_id, fields in items
        ]
        # COUNT applies per stream, so a read over the priority streams may deliver up to three
        # times `count`: the rest are ours already (pending) and go out on the next reads.
        self._overflow[consumer] = entries[count:]
        return entries[:count]

    async def reclaim(self, consumer: str, count: int, *, running: Collection[str] = ()) -> list[Entry]:
        """Take over up to `count` entries left pending longer than the idle timeout (those of dead consumers).

        XAUTOCLAIM also matches this consumer's own entries when a heartbeat came late (a busy
        machine, a slow event loop). Those still held here — `running` (entry ids of the tasks this
        consumer is running) and entries delivered beyond what a read asked for — are not handed
        out again: a second delivery would repeat the running task's model call.
        """
        held = {entry.entry_id for entry in self._overflow.get(consumer, ())}
        found: list[Entry] = []
        for priority in constants.PRIORITIES:
            if len(found) >= count:
                break
            stream = self.streams[priority]
            reply = await self._run(
                self.redis.xautoclaim(stream, self.group, consumer, self.claim_idle_ms, "0-0", count=count - len(found))
            )
            for entry_id, fields in reply[1]:
                if fields is None:  # deleted while pending (e.g. cancelled): XAUTOCLAIM already dropped it
                    continue
                if entry_id in running or entry_id in held:  # ours and alive: the claim only refreshed it
                    continue
                found.append(Entry(stream=stream, entry_id=str(entry_id), task_id=str(fields.get("task_id", ""))))
        return found

    async def heartbeat(self, consumer: str, entries: Iterable[Entry]) -> None:
        """Reset the idle time of entries this consumer still owns, so nobody reclaims a live task.

        Entries delivered beyond what a read asked for are this consumer's too (pending, not yet
        started): they are kept fresh as well, or another worker would take them meanwhile.
        """
        by_stream: dict[str, list[str]] = {}
        for entry in [*entries, *self._overflow.get(consumer, ())]:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        for stream, ids in by_stream.items():
            await self._call(self._heartbeat, [stream], [self.group, consumer, *ids])

    async def claim(self, entry: Entry, consumer: str) -> Claim | None:
        """Start a delivery: bump the fence and the delivery count; None if there is nothing to run."""
        reply = await self._call(
            self._claim,
            [self.task_key(entry.task_id), entry.stream, self.dead_letter, self.queued_bytes, self.queued_sizes],
            [entry.entry_id, self.group, consumer, repr(self._clock()), self.max_deliveries, self.task_ttl_seconds],
        )
        if reply[0] != "ok":
            return None
        flat: Sequence[str] = reply[1]
        raw = dict(zip(flat[::2], flat[1::2], strict=True))
        return Claim(entry=entry, record=TaskRecord.from_hash(raw))

    async def checkpoint(self, claim: Claim, checkpoint: Checkpoint) -> None:
        """Store the state after a completed step; raise `OwnershipLost` if the task was cancelled or taken over."""
        outcome = await self._promise(
            self._checkpoint,
            [self.task_key(claim.entry.task_id)],
            [claim.fence, "checkpoint", checkpoint.model_dump_json()],
        )
        if outcome != "ok":
            raise errors.OwnershipLost(f"task {claim.entry.task_id} is {outcome}; this delivery stops")

    async def finish(
        self,
        claim: Claim,
        status: TaskStatus,
        *,
        checkpoint: Checkpoint,
        result: str | None,
        error: str | None,
        degradation: str | None = None,
    ) -> FinishOutcome:
        """Store the final state, then acknowledge the entry — in one script. 'stored' only for the writer that won."""
        fields = {
            "status": status.value,
            "finished_at": repr(self._clock()),
            "checkpoint": checkpoint.model_dump_json(),
            "result": result or "",
            "error": error or "",
            "degradation": degradation or "",
        }
        args: list[str | int] = [claim.fence, claim.entry.entry_id, self.group, self.task_ttl_seconds]
        for field, value in fields.items():
            args += [field, value]
        outcome: FinishOutcome = await self._promise(
            self._finish,
            [self.task_key(claim.entry.task_id), claim.entry.stream, self.queued_bytes, self.queued_sizes],
            args,
        )
        return outcome

    async def retry_later(self, claim: Claim, error: str) -> None:
        """Record a transient failure and leave the entry pending, to be reclaimed after the idle timeout."""
        await self._call(self._retry_later, [self.task_key(claim.entry.task_id)], [claim.fence, error])

    async def requeue(self, claim: Claim) -> bool:
        """Hand a task back at once (shutdown): its checkpoint stays, the delivery is not counted."""
        done = await self._call(
            self._requeue,
            [self.task_key(claim.entry.task_id), claim.entry.stream],
            [claim.fence, claim.entry.entry_id, self.group],
        )
        return bool(done)

    async def hold(self, claim: Claim, waiting: Waiting) -> bool:
        """Put a task aside until money comes back (`budget.onExhausted: hold`): queued, with why it waits.

        Its checkpoint stays, so it resumes where it stopped; the delivery is not counted (a wait for
        money is no failure and must not lead to the dead-letter stream).
        """
        done = await self._call(
            self._hold,
            [self.task_key(claim.entry.task_id), claim.entry.stream, self.held],
            [claim.fence, claim.entry.entry_id, self.group, repr(self._clock()), waiting.model_dump_json()],
        )
        return bool(done)

    async def held_ids(self, count: int) -> list[str]:
        """The `count` tasks held longest (first put aside, first sent back)."""
        if count <= 0:
            return []
        ids: list[str] = await self._run(self.redis.zrange(self.held, 0, count - 1))
        return [str(i) for i in ids]

    async def held_needs(self, count: int, *, default: int) -> list[tuple[str, int]]:
        """The `count` tasks held longest, each with what its next call needs to go (micro-USD, from its `waiting`)."""
        ids = await self.held_ids(count)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self.task_key(task_id), "waiting")
            raw = await self._run(pipe.execute())
        needs: list[tuple[str, int]] = []
        for task_id, waiting in zip(ids, raw, strict=True):
            need = default
            if waiting:
                parsed = Waiting.model_validate_json(waiting)
                usd = parsed.least_usd if parsed.least_usd is not None else parsed.needed_usd
                need = max(default, math.ceil(round(usd * 1_000_000, 3)))
            needs.append((task_id, need))
        return needs

    async def held_count(self) -> int:
        """How many tasks are put aside for money."""
        return int(await self._run(self.redis.zcard(self.held)))

    async def release_held(self, task_ids: Sequence[str]) -> int:
        """Send held tasks back to their streams; return how many went (cancelled ones are just dropped)."""
        if not task_ids:
            return 0
        keys = [self.held, *self.streams.values(), *(self.task_key(t) for t in task_ids)]
        return int(await self._call(self._release, keys, list(task_ids)))

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        rows = await self._run(self.redis.xrange(self.dead_letter, count=count))
        return [dict(fields) for _, fields in rows]

    async def forget_idle_consumers(self, idle_seconds: float) -> int:
        """Delete consumers that hold nothing and have been idle long (dead pods), so the group stays small."""
        removed = 0
        for stream in self.streams.values():
            for info in await self._run(self.redis.xinfo_consumers(stream, self.group)):
                if int(info["pending"]) == 0 and int(info["idle"]) > idle_seconds * 1000:
                    await self._run(self.redis.xgroup_delconsumer(stream, self.group, info["name"]))
                    removed += 1
        return removed

    # --- error mapping ---

    async def _call(self, script: AsyncScript, keys: list[str], args: Sequence[str | int]) -> Any:
        return await self._run(run_script(script, keys, args))

    async def _promise(self, script: AsyncScript, keys: list[str], args: Sequence[str | int]) -> Any:
        """A write the caller acknowledges to someone: with `wait_replicas`, only once replicas hold it."""
        if not self.wait_replicas:
            return await self._call(script, keys, args)
        source = script.script if isinstance(script.script, str) else bytes(script.script).decode()
        return await self._run(
            run_replicated(self.redis, source, keys, args, replicas=self.wait_replicas, timeout_ms=self.wait_timeout_ms)
        )

    @staticmethod
    async def _run(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restarted without persistence): the worker recreates it
                raise errors.StoreUnavailable(f"consumer group missing: {exc}") from exc
            if errors.redis_refusal(exc) is not None:  # READONLY, OOM, BUSY, ...: refused for now, not wrong
                raise errors.from_redis(exc) from exc
            raise  # a bug (wrong type, bad script): surface it as it is
        except redis.exceptions.RedisError as exc:
            raise errors.from_redis(exc) from exc

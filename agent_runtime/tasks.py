"""Task records as plain data: statuses, the stored record, the checkpoint, and their Redis-hash encoding.

Pure: no I/O here. `queue.py` moves these through Redis; `api.py` shows them; `agent.py` fills the
checkpoint. A record is one Redis hash of strings; `from_hash` / `to_hash` are the only codecs.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "TERMINAL",
    "CallUsage",
    "Checkpoint",
    "Progress",
    "TaskRecord",
    "TaskStatus",
    "TaskView",
    "Usage",
    "Waiting",
    "checkpoint_fields",
    "json_depth",
    "metadata_problem",
    "tool_calls",
]


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})

# Bounds of a task's metadata. Without them a client could store metadata that every later
# read fails to serialise (pydantic stops at a few hundred levels): a task nobody can read.
MAX_METADATA_DEPTH = 32  # nested objects and arrays, the metadata object itself included
MAX_METADATA_BYTES = 65_536  # as compact JSON, UTF-8


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a decoded JSON value ({} is 1, a scalar 0). Pure, iterative.

    Iterative on purpose: the values it guards against are deep enough to exhaust the recursion limit.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def metadata_problem(metadata: Any) -> str | None:
    """Why this metadata cannot be stored (naming the bound), or None. Pure."""
    depth = json_depth(metadata)
    if depth > MAX_METADATA_DEPTH:
        return f"metadata nests {depth} levels deep; the limit is {MAX_METADATA_DEPTH} levels (metadata depth)"
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        return f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES} bytes (metadata size)"
    return None


class Usage(BaseModel):
    """Tokens and spend accumulated over the task's completed steps."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, input_tokens: int, output_tokens: int, cost_usd: float) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + input_tokens,
            output_tokens=self.output_tokens + output_tokens,
            cost_usd=round(self.cost_usd + cost_usd, 10),
        )


class CallUsage(BaseModel):
    """One completed model call of a task: which model answered, its tokens and what it was charged."""

    model_config = ConfigDict(extra="forbid")

    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = Field(default=0, description="What the budget ledger settled for it (micro-USD, rounded up).")
    cached: bool = False


class Checkpoint(BaseModel):
    """The agent loop's state after its last completed step: enough to resume without re-running it."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(default_factory=list)
    step: int = 0  # model calls completed (each one billed exactly once)
    usage: Usage = Field(default_factory=Usage)
    # The tool calls of the last step while they run (emptied once their results join `messages`):
    # the result of each call already made, by tool_use id, and the ids of `external` calls sent
    # whose result was not stored yet. A resumed task reuses the first and never re-sends the second.
    tool_results: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tools_started: list[str] = Field(default_factory=list)
    calls: list[CallUsage] = Field(default_factory=list)  # one per completed step, in order

    def cost_micros(self) -> int:
        """The task's spend as the ledger counted it: the sum of its calls' settled micro-dollars."""
        return sum(call.cost_micros for call in self.calls)

    def main_model(self) -> str:
        """The model that cost the task most (the first one on a tie; "" before any call)."""
        totals: dict[str, int] = {}
        for call in self.calls:
            totals[call.model] = totals.get(call.model, 0) + call.cost_micros
        return max(totals, key=lambda model: totals[model], default="")


class Waiting(BaseModel):
    """Why a queued task is not running: put aside until money comes back (`budget.onExhausted: hold`)."""

    model_config = ConfigDict(extra="ignore")

    reason: str = Field(description="budget_exhausted")
    message: str = Field(description="The figures, and when the task may run again.")
    until: float = Field(description="Unix time money comes back (the next 00:00 UTC), unless the budget is raised.")
    needed_usd: float = Field(description="What the task's next model call could cost (its reservation).")
    least_usd: float | None = Field(
        default=None,
        description="The least its next call must reserve to go (its output capped to budget_min_output_tokens):"
        " the task is sent back as soon as the day has that much left.",
    )
    spent_usd: float = Field(description="The day's spend when the task was put aside.")
    reserved_usd: float = Field(description="Reserved by calls in flight then.")
    limit_usd: float = Field(description="The daily budget (budget.dailyUSD).")
    since: float = Field(description="Unix time the task was put aside.")


class Progress(BaseModel):
    step: int
    max_steps: int


class TaskView(BaseModel):
    """What `GET /v1/tasks/{id}` answers."""

    task_id: str
    status: TaskStatus
    priority: str
    progress: Progress
    result: str | None = None
    error: str | None = None
    last_error: str | None = None
    usage: Usage
    calls: list[CallUsage] = Field(default_factory=list, description="Each model call: model, provider, tokens, cost.")
    degradation: str | None = None  # worst degradation level the task ran at (full … static)
    waiting: Waiting | None = None  # why a queued task waits (only while queued)
    tool_calls: list[str] = Field(
        default_factory=list, description="Names of the tools the agent called, in order (the evaluation reads it)."
    )
    attempts: int
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None


class TaskRecord(BaseModel):
    """One task as stored (the Redis hash), checkpoint included."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    status: TaskStatus
    priority: str
    input: str
    stream: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    max_steps: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: str | None = None
    error: str | None = None
    last_error: str | None = None
    degradation: str | None = None
    waiting: Waiting | None = None
    deliveries: int = 0
    fence: int = 0
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TaskRecord:
        """Decode a hash as returned by HGETALL (decoded to str)."""
        data: dict[str, Any] = dict(raw)
        data["metadata"] = _stored_metadata(raw.get("metadata") or "{}")
        data["checkpoint"] = json.loads(raw.get("checkpoint") or "{}")
        data["waiting"] = json.loads(raw["waiting"]) if raw.get("waiting") else None
        for key in ("started_at", "finished_at", "result", "error", "last_error", "idempotency_key", "degradation"):
            if data.get(key) == "":
                data[key] = None
        return cls.model_validate(data)

    def creation_fields(self) -> dict[str, str]:
        """The fields written when the task is submitted."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "priority": self.priority,
            "input": self.input,
            "stream": self.stream,
            "metadata": json.dumps(self.metadata, separators=(",", ":")),
            "idempotency_key": self.idempotency_key or "",
            "max_steps": str(self.max_steps),
            "created_at": repr(self.created_at),
            "deliveries": "0",
            "fence": "0",
        }

    def view(self) -> TaskView:
        usage = self.checkpoint.usage
        return TaskView(
            task_id=self.task_id,
            status=self.status,
            priority=self.priority,
            progress=Progress(step=self.checkpoint.step, max_steps=self.max_steps),
            result=self.result,
            error=self.error,
            last_error=self.last_error,
            usage=usage,
            calls=self.checkpoint.calls,
            degradation=self.degradation,
            waiting=self.waiting if self.status == TaskStatus.QUEUED else None,
            tool_calls=tool_calls(self.checkpoint.messages),
            attempts=self.deliveries,
            metadata=self.metadata,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )


def _stored_metadata(raw: str) -> dict[str, Any]:
    """Decode stored metadata; metadata the API would refuse today is replaced by a note, never a failed read.

    Records written before the bounds existed may hold metadata too deep to serialise: the task stays
    readable (status, result, usage) and its metadata says why it is not shown.
    """
    try:
        metadata = json.loads(raw)
    except (ValueError, RecursionError):
        return {"unreadable": "the stored metadata is not valid JSON; not shown"}
    if not isinstance(metadata, dict):
        return {"unreadable": "the stored metadata is not a JSON object; not shown"}
    depth = json_depth(metadata)  # the size is no threat to a read; the depth is
    if depth > MAX_METADATA_DEPTH:
        return {"unreadable": f"the stored metadata nests {depth} levels deep, over {MAX_METADATA_DEPTH}; not shown"}
    return metadata


def tool_calls(messages: list[dict[str, Any]]) -> list[str]:
    """The names of the tools called in a transcript (assistant `tool_use` blocks), in order. Pure."""
    names: list[str] = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "assistant" and isinstance(content, list):
            names += [str(b.get("name")) for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
    return names


def checkpoint_fields(checkpoint: Checkpoint) -> dict[str, str]:
    """The fields written at each checkpoint."""
    return {"checkpoint": checkpoint.model_dump_json()}

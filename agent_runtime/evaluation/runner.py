"""Run a suite against a task API: submit every case `runs` times, wait for the answers, grade them.

This is the I/O edge of the evaluation (HTTP to the task API, the judge's model calls); the
deciding is `graders.py` and `report.py`. At most `concurrency` runs are in flight. Each run is
one task (`POST /v1/tasks` with the case's input and metadata, and an idempotency key unique to
this evaluation, so a submit retried after a lost reply does not run twice), then polled until it
finishes or the suite's `taskTimeoutSeconds` passes, when it is cancelled (no answer is a
failure: a candidate too slow to answer is not a good one). A 429 or 503 is waited out (its
`retry-after`) within the same deadline. A run whose task could not be submitted or read at all
(refused, unreachable, 5xx until the deadline) is *ungraded*: it makes the verdict inconclusive,
never a pass.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from agent_runtime import constants
from agent_runtime.evaluation.graders import Answer, grade, shorten
from agent_runtime.evaluation.judge import Judge
from agent_runtime.evaluation.report import Report, RunResult, summarize
from agent_runtime.evaluation.suite import Case, Suite, Thresholds
from agent_runtime.logging import get_logger

__all__ = ["EvaluationTarget", "run_suite"]

log = get_logger(__name__)
_POLL_FIRST = 0.1
_POLL_MAX = 1.0
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_RETRY_AFTER = 10.0


@dataclass(frozen=True)
class EvaluationTarget:
    """Where the tasks go: the task API's base URL and its bearer token (None: no header)."""

    api_url: str
    token: str | None = None
    request_timeout_seconds: float = 10.0
    transport: httpx.AsyncBaseTransport | None = None  # the API app in this process (`--in-process-api`)


class _Ungraded(Exception):
    """The task could not be submitted or read; the message says why."""


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(_MAX_RETRY_AFTER, max(0.1, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    message = body.get("error") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {shorten(str(message or body), 160)}"


class _Session:
    def __init__(self, client: httpx.AsyncClient, suite: Suite, judge: Judge | None, clock: Callable[[], float]):
        self.client = client
        self.suite = suite
        self.judge = judge
        self.clock = clock
        self.nonce = uuid.uuid4().hex[:12]

    async def _request(self, method: str, url: str, deadline: float, **kwargs: Any) -> httpx.Response:
        """One request, retried on 429/5xx and transport errors until the deadline."""
        last = "no attempt"
        while True:
            try:
                response = await self.client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                last = f"the task API is unreachable: {type(exc).__name__}: {shorten(str(exc), 120)}"
                wait = 0.5
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                last = _error_of(response)
                wait = _retry_after(response)
            if self.clock() + wait > deadline:
                raise _Ungraded(last)
            await asyncio.sleep(wait)

    async def run(self, case: Case, run: int) -> RunResult:
        started = self.clock()
        deadline = started + self.suite.task_timeout_seconds
        key = f"eval-{self.suite.name}-{self.nonce}-{case.name}-{run}"[:256]
        try:
            return await self._run(case, run, key, deadline, started)
        except _Ungraded as exc:
            return RunResult(case.name, run, case.weight, False, f"not graded: {exc}", 0.0, 0.0, graded=False)

    async def _run(self, case: Case, run: int, key: str, deadline: float, started: float) -> RunResult:
        body = {"input": case.input, "metadata": case.metadata, "idempotency_key": key}
        made = await self._request("POST", constants.TASKS_PATH, deadline, json=body)
        if made.status_code not in (200, 202):
            # 4xx: the API refuses this case (too long for max_input_chars, ...): a failure of the
            # candidate's configuration, graded as such.
            return RunResult(case.name, run, case.weight, False, f"submit refused: {_error_of(made)}", 0.0, 0.0)
        status_url = str(made.json()["status_url"])
        view = await self._wait(status_url, deadline)
        if view is None:
            await self._cancel(status_url)
            elapsed = self.clock() - started
            reason = f"no answer within {self.suite.task_timeout_seconds:g} s (taskTimeoutSeconds); cancelled"
            return RunResult(case.name, run, case.weight, False, reason, 0.0, elapsed)
        cost = float((view.get("usage") or {}).get("cost_usd") or 0.0)
        latency = float(view.get("finished_at") or self.clock()) - float(view.get("created_at") or started)
        if view.get("status") != "succeeded":
            reason = f"task {view.get('status')}: {shorten(str(view.get('error') or 'no error given'), 160)}"
            return RunResult(case.name, run, case.weight, False, reason, cost, latency)
        answer = Answer(text=str(view.get("result") or ""), tool_calls=tuple(view.get("tool_calls") or ()))
        judged = None
        if case.expect.judge is not None and self.judge is not None:
            before = grade(case.expect.model_copy(update={"judge": None}), answer)
            if before.passed:  # a run already failed needs no paid opinion
                judged = await self.judge.score(case.expect.judge, task=case.input, answer=answer.text, run_id=key)
        result = grade(case.expect, answer, judged)
        return RunResult(case.name, run, case.weight, result.passed, result.reason, cost, max(0.0, latency))

    async def _wait(self, status_url: str, deadline: float) -> dict[str, Any] | None:
        interval = _POLL_FIRST
        while True:
            response = await self._request("GET", status_url, deadline)
            if response.status_code != 200:
                raise _Ungraded(f"reading the task: {_error_of(response)}")
            view: dict[str, Any] = response.json()
            if view.get("status") in ("succeeded", "failed", "cancelled"):
                return view
            if self.clock() + interval > deadline:
                return None
            await asyncio.sleep(interval)
            interval = min(_POLL_MAX, interval * 1.5)

    async def _cancel(self, status_url: str) -> None:
        try:
            await self.client.delete(status_url)
        except httpx.TransportError as exc:
            log.warning("eval_cancel_failed", error=str(exc))


async def run_suite(
    suite: Suite,
    target: EvaluationTarget,
    *,
    thresholds: Thresholds | None = None,
    concurrency: int = 4,
    judge: Judge | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Report:
    """Every case `suite.runs` times against the API, graded and summarized."""
    headers = {"authorization": f"Bearer {target.token}"} if target.token else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=target.api_url.rstrip("/"),
        headers=headers,
        timeout=target.request_timeout_seconds,
        limits=limits,
        follow_redirects=False,
        transport=target.transport,
    ) as client:
        session = _Session(client, suite, judge, clock)

        async def one(case: Case, run: int) -> RunResult:
            async with gate:
                return await session.run(case, run)

        results = await asyncio.gather(*(one(c, r) for r in range(1, suite.runs + 1) for c in suite.cases))
    position = {c.name: i for i, c in enumerate(suite.cases)}
    ordered = sorted(results, key=lambda r: (position[r.case], r.run))
    return summarize(
        suite.name,
        ordered,
        thresholds or suite.thresholds,
        judge_calls=judge.calls if judge else 0,
        judge_cost_usd=judge.cost_usd if judge else 0.0,
    )

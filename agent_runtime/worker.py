"""The worker: an asyncio pool taking tasks from the queue and running them through the agent loop.

- Up to `concurrency` tasks at once; reads only as many entries as it has free slots.
- Reclaims entries of dead consumers (XAUTOCLAIM) and heartbeats its own so nobody steals them;
  the reclaim pass never hands out an entry this worker is running (no second model call).
- `burst=True` drains the queue (waiting and pending entries, those of dead workers included) and
  returns: deterministic tests and benchmarks need no sleeps.
- `stop()` (SIGTERM): stop reading, let in-flight tasks finish within the grace period, then hand the
  rest back to the queue at their last checkpoint; `run()` returns normally so the process exits 0.
- Redis going away never kills the loop: it backs off and resumes; unacknowledged work stays pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
from aiohttp import web

from agent_runtime import constants, errors, tracing
from agent_runtime.agent import Outcome, SaveCheckpoint
from agent_runtime.budget import BudgetWatch
from agent_runtime.costs import CostReports, user_label
from agent_runtime.logging import get_logger
from agent_runtime.mcptools import ToolServers
from agent_runtime.metrics import Metrics
from agent_runtime.queue import Claim, Entry, TaskQueue
from agent_runtime.tasks import Checkpoint, TaskStatus

__all__ = ["Runner", "Worker", "consumer_name", "serve_probes"]

log = get_logger(__name__)


class Refreshable(Protocol):
    """State read from Redis for the metrics, re-read with the queue depth (the providers' shared circuits)."""

    async def refresh(self) -> None: ...


class Runner(Protocol):
    """What runs a task: `agent.Agent` in production; a no-op in the queue benchmark."""

    async def run(
        self,
        task_id: str,
        task_input: str,
        checkpoint: Checkpoint,
        *,
        max_steps: int,
        save: SaveCheckpoint,
        fence: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> Outcome: ...


def consumer_name() -> str:
    """A consumer name unique to this process: pod (or host) name, pid and a random suffix."""
    base = os.environ.get(constants.POD_NAME_ENV) or socket.gethostname()
    return f"{base}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Consumes one service's queue."""

    def __init__(
        self,
        *,
        queue: TaskQueue,
        runner: Runner,
        metrics: Metrics,
        concurrency: int = 8,
        task_timeout_seconds: float = 600.0,
        shutdown_grace_seconds: float = 110.0,
        burst: bool = False,
        consumer: str | None = None,
        block_ms: int = 500,
        depth_interval_seconds: float = 2.0,
        budget: BudgetWatch | None = None,
        circuits: Refreshable | None = None,
        tool_servers: ToolServers | None = None,
        reports: CostReports | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.metrics = metrics
        self.concurrency = max(1, concurrency)
        self.task_timeout_seconds = task_timeout_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.burst = burst
        self.consumer = consumer or consumer_name()
        self.block_ms = block_ms
        self.depth_interval_seconds = depth_interval_seconds
        self.budget = budget
        self.circuits = circuits
        self.tool_servers = tool_servers or ToolServers([])
        self.reports = reports
        self.claim_interval_seconds = max(queue.claim_idle_ms / 1000 / 3, 0.05)
        self.processed = 0  # deliveries handled to the end (any outcome), for tests and the benchmark
        self._stopping = asyncio.Event()
        self._closing = False  # run() is ending: the background loops end at their next turn
        self._inflight: dict[asyncio.Task[None], Entry] = {}

    def stop(self) -> None:
        """Stop reading new tasks; `run()` then drains in-flight ones and returns."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Process tasks until stopped (or, in burst mode, until the queue is empty)."""
        # MCP servers first: a task taken before its tools are listed would run without them. One
        # that cannot be reached does not hold the worker: it is reported (degraded) and retried.
        self._closing = False  # a burst worker may be run again (tests: the same worker, a later batch)
        await self.tool_servers.start()
        degraded = self.tool_servers.degraded()
        if degraded:
            log.warning("tool_servers_degraded", servers=degraded)
        log.info("worker_started", consumer=self.consumer, concurrency=self.concurrency, burst=self.burst)
        background = [asyncio.create_task(self._every(self.claim_interval_seconds, self._heartbeat))]
        if not self.burst:
            background.append(asyncio.create_task(self._every(self.depth_interval_seconds, self.refresh_depth)))
            background.append(asyncio.create_task(self._every(max(self.claim_interval_seconds * 30, 60.0), self._tidy)))
            if self.budget is not None:
                background.append(asyncio.create_task(self._every(self.budget.interval_seconds, self.release_held)))
        try:
            await self._loop()
        finally:
            await self._drain()
            self._closing = True
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            log.info("worker_stopped", consumer=self.consumer, processed=self.processed)

    async def refresh_depth(self) -> None:
        self.metrics.set_queue_depth(await self.queue.depth())
        if self.circuits is not None:
            await self.circuits.refresh()  # falls back on its own when Redis is away: never raises for it
        if self.budget is not None:
            await self.budget.refresh_metrics()

    async def release_held(self) -> None:
        """Send tasks held for money back to the queue when the day has room again (a new day, a raised budget)."""
        if self.budget is None:
            return
        released = await self.budget.release_held(most=self.concurrency)
        if released:
            log.info("held_tasks_released", count=released)

    async def _loop(self) -> None:
        backoff = 0.0
        group_ready = False
        last_reclaim = 0.0
        while not self.stopping:
            try:
                if not group_ready:
                    await self.queue.ensure_group()
                    group_ready = True
                free = self.concurrency - len(self._inflight)
                if free <= 0:
                    await self._wait_for_slot()
                    continue
                entries: list[Entry] = []
                now = time.monotonic()
                if now - last_reclaim >= self.claim_interval_seconds:
                    last_reclaim = now
                    running = {entry.entry_id for entry in self._inflight.values()}
                    entries = await self.queue.reclaim(self.consumer, free, running=running)
                if not entries:
                    block = 0 if self.burst or self._inflight else self.block_ms
                    entries = await self.queue.read(self.consumer, free, block_ms=block)
                if entries:
                    backoff = 0.0
                    for entry in entries:
                        task = asyncio.create_task(self._handle(entry))
                        self._inflight[task] = entry
                elif self._inflight:
                    await self._wait_for_slot(timeout=self.block_ms / 1000)
                elif self.burst:
                    if await self.queue.depth() == 0:
                        return
                    # entries pending for a dead consumer: wait until they are idle long enough to reclaim
                    last_reclaim = 0.0
                    await self._sleep(min(self.claim_interval_seconds, 0.2))
            except errors.StoreUnavailable as exc:
                backoff = min(max(backoff * 2, 0.1), 5.0)
                group_ready = False
                log.warning("store_unavailable", error=str(exc), retry_in=backoff)
                await self._sleep(backoff)

    async def _wait_for_slot(self, timeout: float | None = None) -> None:
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait([*self._inflight, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _drain(self) -> None:
        if not self._inflight:
            return
        log.info("worker_draining", inflight=len(self._inflight), grace_seconds=self.shutdown_grace_seconds)
        _, pending = await asyncio.wait(list(self._inflight), timeout=self.shutdown_grace_seconds)
        for task in pending:
            task.cancel()  # `_handle` hands the task back at its last checkpoint
        await asyncio.gather(*pending, return_exceptions=True)

    async def _heartbeat(self) -> None:
        await self.queue.heartbeat(self.consumer, list(self._inflight.values()))

    async def _tidy(self) -> None:
        """Forget consumers of dead pods that hold nothing, so the group does not grow forever."""
        removed = await self.queue.forget_idle_consumers(idle_seconds=self.queue.claim_idle_ms / 1000 * 10)
        if removed:
            log.info("consumers_forgotten", count=removed)

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        # Not `while True`: redis-py's asyncio client can swallow a cancellation that lands inside a
        # command (redis/redis-py#2028; seen with 5.3.1 in about 2 % of cancellations of a running
        # command), and a loop relying on it alone then runs for ever and `run()` never returns.
        while not self._closing:
            await asyncio.sleep(seconds)
            try:
                await action()
            except errors.StoreUnavailable as exc:
                log.debug("background_store_unavailable", error=str(exc))
            except Exception:  # a heartbeat that died silently would let live tasks be reclaimed
                log.exception("background_action_failed", action=getattr(action, "__name__", repr(action)))

    async def _handle(self, entry: Entry) -> None:
        try:
            with structlog.contextvars.bound_contextvars(task_id=entry.task_id):
                await self._deliver(entry)
        finally:
            self._inflight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]

    async def _deliver(self, entry: Entry) -> None:
        try:
            claim = await self.queue.claim(entry, self.consumer)
        except errors.StoreUnavailable as exc:
            log.warning("claim_failed", error=str(exc))  # still pending: reclaimed later
            return
        if claim is None:
            return
        self.metrics.task_started()
        record = claim.record
        attributes: tracing.Attributes = {
            "task.id": record.task_id,
            "task.priority": record.priority,
            "task.delivery": record.deliveries,
        }
        try:
            # a child of the submitting request's span (stored with the task): one trace per task
            with tracing.span("task.run", attributes, kind="consumer", parent=tracing.stored_context(record.metadata)):
                await self._execute(claim)
        finally:
            self.metrics.task_stopped()
            self.processed += 1

    async def _execute(self, claim: Claim) -> None:
        record = claim.record
        latest = record.checkpoint

        async def save(checkpoint: Checkpoint) -> None:
            nonlocal latest
            await self.queue.checkpoint(claim, checkpoint)
            latest = checkpoint

        started = record.started_at or time.time()
        remaining = self.task_timeout_seconds - (time.time() - started)
        try:
            async with asyncio.timeout(max(remaining, 0.001)):
                outcome = await self.runner.run(
                    record.task_id,
                    record.input,
                    record.checkpoint,
                    max_steps=record.max_steps,
                    save=save,
                    fence=claim.fence,
                    metadata=record.metadata,
                )
        except asyncio.CancelledError:
            with contextlib.suppress(errors.AgentRuntimeError):
                await self.queue.requeue(claim)
            log.info("task_handed_back", step=latest.step)
            raise
        except TimeoutError:
            outcome = Outcome(TaskStatus.FAILED, latest, error=f"timed out after {self.task_timeout_seconds:g} s")
        except errors.OwnershipLost as exc:
            log.info("task_abandoned", reason=str(exc))
            return
        except errors.BudgetHeld as exc:
            try:
                await self.queue.hold(claim, exc.waiting)
            except errors.StoreUnavailable as store:
                log.warning("hold_failed", error=str(store))  # still pending: reclaimed (and held) later
                return
            log.info("task_held", step=latest.step, reason=exc.waiting.reason, until=exc.waiting.until)
            if self.budget is not None:
                # A call in flight may have settled between this task's verdict and its hold, finding
                # nothing held to send back: look once more now that the task is in the held set.
                await self.budget.money_back()
            return
        except errors.StoreUnavailable as exc:
            log.warning("task_interrupted", error=str(exc))  # pending: resumed from its checkpoint later
            return
        except errors.ProviderUnavailable as exc:
            log.warning("task_retry_later", error=str(exc))
            with contextlib.suppress(errors.StoreUnavailable):
                await self.queue.retry_later(claim, str(exc))
            return
        except errors.ProviderResponseError as exc:
            outcome = Outcome(TaskStatus.FAILED, latest, error=str(exc))
        except Exception as exc:  # a bug or a tool module misbehaving: retried, dead-lettered after N
            log.exception("task_crashed")
            with contextlib.suppress(errors.StoreUnavailable):
                await self.queue.retry_later(claim, f"internal error: {type(exc).__name__}: {exc}")
            return
        await self._finish(claim, outcome)

    async def _finish(self, claim: Claim, outcome: Outcome) -> None:
        try:
            stored = await self.queue.finish(
                claim,
                outcome.status,
                checkpoint=outcome.checkpoint,
                result=outcome.result,
                error=outcome.error,
                degradation=outcome.degradation,
            )
        except errors.StoreUnavailable as exc:
            log.warning("finish_failed", error=str(exc))  # not acknowledged: another delivery stores it
            return
        tracing.annotate({"task.status": outcome.status.value, "task.steps": outcome.checkpoint.step})
        if stored == "stored" and self.reports is not None and outcome.checkpoint.calls:
            await self._rank(claim, outcome.checkpoint)
        if stored == "stored":
            self.metrics.task_finished(
                outcome.status,
                intent=self.metrics.intent(claim.record.metadata.get("intent")),
                latency_seconds=time.time() - claim.record.created_at,
                steps=outcome.checkpoint.step,
            )
        log.info(
            "task_finished",
            status=outcome.status.value,
            stored=stored,
            steps=outcome.checkpoint.step,
            error=outcome.error,
            degradation=outcome.degradation,
        )

    async def _rank(self, claim: Claim, checkpoint: Checkpoint) -> None:
        """Enter the finished task in its day's ranking of dearest tasks (a report's `topExpensiveTasks`)."""
        assert self.reports is not None
        usage = checkpoint.usage
        try:
            await self.reports.rank_task(
                claim.record.task_id,
                cost_micros=checkpoint.cost_micros(),
                model=checkpoint.main_model(),
                tokens=usage.input_tokens + usage.output_tokens,
                finished_at=time.time(),
                user=user_label(claim.record.metadata),
            )
        except errors.StoreUnavailable as exc:  # the result is stored; only the ranking misses it
            log.warning("cost_rank_failed", error=str(exc))


async def serve_probes(queue: TaskQueue, metrics: Metrics, worker: Worker, *, host: str, port: int) -> web.AppRunner:
    """Serve the worker's /health, /ready and /metrics; the caller cleans up the returned runner."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "stopping" if worker.stopping else "ok", "consumer": worker.consumer})

    async def ready(request: web.Request) -> web.Response:
        try:
            await queue.probe()
        except errors.StoreUnavailable as exc:
            return web.json_response({"ready": False, "reason": str(exc)}, status=503)
        if worker.stopping:
            return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
        # An MCP server that is down degrades the service (its tools are not offered) but does not
        # make the pod unready: a restart would not bring the server back, and tasks still run.
        degraded = worker.tool_servers.degraded()
        if degraded:
            reasons = {name: f"MCP server {name} unreachable: {why}" for name, why in degraded.items()}
            return web.json_response({"ready": True, "degraded": reasons})
        return web.json_response({"ready": True})

    async def scrape(request: web.Request) -> web.Response:
        with contextlib.suppress(errors.StoreUnavailable):
            await worker.refresh_depth()
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get(constants.HEALTH_PATH, health)
    app.router.add_get(constants.READY_PATH, ready)
    app.router.add_get(constants.METRICS_PATH, scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

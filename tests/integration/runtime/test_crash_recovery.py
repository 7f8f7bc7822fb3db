"""Worker processes killed and stopped mid-task: no task lost, none done twice, no finished step re-run.

Covers, with real `agent-runtime worker` processes, a real redis-server and the local model server:
- `kill -9` of a worker while it holds tasks, 20 times in a row: every task then completes exactly once
  with the right answer, no stream entry is left pending, and — from the model server's own log of
  requests — no step whose reply had been checkpointed before a kill is ever requested again, so
  resumed tasks continue from their checkpoint and usage counts each step once;
- SIGTERM with a short grace period: the worker stops reading, hands its in-flight tasks back at their
  last checkpoint (deliveries not counted) and exits 0; with a long grace period it finishes them.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import defaultdict
from pathlib import Path

import pytest
import redis.asyncio
from agentops_dev.localmodel import CallRecord, LocalModelServer
from agentops_dev.localredis import LocalRedis
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime.composition import build_worker
from agent_runtime.config import RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus

KILLS = 20


def expressions(n: int) -> tuple[str, str]:
    a, b, c = n + 2, n + 5, n + 11
    text = f"Task {n}: compute {a}+{b}, then {b}*{c}, then {c}-{a}."
    answer = f"The answer: {a}+{b} = {a + b}; {b}*{c} = {b * c}; {c}-{a} = {c - a}."
    return text, answer


async def holds_tasks(client: redis.asyncio.Redis, queue: TaskQueue, pid: int) -> bool:
    """Whether the worker process `pid` has claimed entries (its consumer name embeds the pid)."""
    for stream in queue.streams.values():
        for consumer in await client.xinfo_consumers(stream, queue.group):
            if f"-{pid}-" in consumer["name"] and int(consumer["pending"]) > 0:
                return True
    return False


async def start_worker(tmp_path: Path, cfg: RuntimeConfig, redis_server: LocalRedis) -> ForkedRuntime:
    path = write_config(tmp_path, cfg.model_dump(mode="json"))
    process = ForkedRuntime(["worker", "--metrics-port", "0"], config_path=path, redis_url=redis_server.url)
    await process.start()
    return process


@pytest.mark.slow
async def test_kill_9_twenty_times_loses_nothing_and_reruns_no_finished_step(
    tmp_path: Path,
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    model_server: LocalModelServer,
) -> None:
    cfg = config.model_copy(update={"max_deliveries": 100, "claim_idle_seconds": 0.6, "worker_concurrency": 3})
    model_server.faults.latency_seconds = 0.2
    queue = TaskQueue.from_config(cfg, redis_client)
    await queue.ensure_group()
    rng = random.Random(4)
    answers: dict[str, str] = {}

    async def top_up() -> None:
        unfinished = [t for t in answers if (await queue.get(t)).status != TaskStatus.SUCCEEDED]
        while len(unfinished) < 4:
            text, answer = expressions(len(answers))
            made = await queue.submit(text, max_steps=6)
            answers[made.task_id] = answer
            unfinished.append(made.task_id)

    snapshots: list[tuple[int, dict[str, int]]] = []  # (calls seen by the model server at the kill, steps checkpointed)
    interrupting = 0  # kills that left the dead worker holding a task it had not finished
    while interrupting < KILLS:
        # a kill can land after the worker finished what it held (the random sleep outlasted its
        # tasks; how often depends on the machine's speed): it interrupts nothing, so it is not counted
        assert len(snapshots) < 3 * KILLS, f"only {interrupting} of {len(snapshots)} kills landed mid-task"
        await top_up()
        worker = await start_worker(tmp_path, cfg, redis_server)
        pid = worker.pid  # gone from the process handle once it is killed
        try:
            for _ in range(300):
                if await holds_tasks(redis_client, queue, worker.pid):
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail(f"worker never took a task:\n{worker.logs()}")
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # land anywhere: model call, checkpoint, tool, finish
            assert worker.alive(), f"the worker exited on its own:\n{worker.logs()}"
        finally:
            await worker.kill()
        # no worker runs now: the dead one's claimed, unacknowledged entries are the tasks it was running
        interrupting += await holds_tasks(redis_client, queue, pid)
        steps = {t: (await queue.get(t)).checkpoint.step for t in answers}
        snapshots.append((len(model_server.calls), steps))

    final = build_worker(cfg, redis_client=redis_client, registry=CollectorRegistry(), burst=True)
    await asyncio.wait_for(final.worker.run(), 60)
    await final.aclose()

    # every task completed, with the right answer, and nothing is left waiting or pending
    resumed = 0
    for task_id, answer in answers.items():
        record = await queue.get(task_id)
        assert record.status == TaskStatus.SUCCEEDED, (task_id, record.error, record.last_error)
        assert record.result == answer
        assert record.checkpoint.step == 4
        resumed += record.deliveries > 1
    assert await queue.depth() == 0
    for stream in queue.streams.values():
        assert (await redis_client.xpending(stream, queue.group))["pending"] == 0
    assert resumed >= 1, "the kills should have interrupted tasks that another worker resumed"

    assert_no_checkpointed_step_rerun(model_server.calls, snapshots)
    await assert_each_step_billed_once(queue, model_server.calls, list(answers))


def assert_no_checkpointed_step_rerun(calls: list[CallRecord], snapshots: list[tuple[int, dict[str, int]]]) -> None:
    """No step whose reply was checkpointed before a kill was requested from the model after that kill."""
    for boundary, steps in snapshots:
        for call in calls[boundary:]:
            assert call.task_id is not None
            if call.outcome == "aborted" and not call.tools:
                # the worker died sending it: the server never read the body, so the record's step is
                # its default 0, not the step asked for, and the model answered nothing
                continue
            assert call.step >= steps.get(call.task_id, 0), (call, steps.get(call.task_id))


async def assert_each_step_billed_once(queue: TaskQueue, calls: list[CallRecord], task_ids: list[str]) -> None:
    """Every step was answered, and the stored usage counts each step exactly once."""
    by_step: dict[tuple[str, int], list[int]] = defaultdict(list)
    for call in calls:
        if call.outcome == "ok":
            by_step[(str(call.task_id), call.step)].append(call.input_tokens + call.output_tokens)
    for task_id in task_ids:
        per_step = [by_step[(task_id, step)] for step in range(4)]
        assert all(per_step), (task_id, per_step)
        assert all(len(set(tokens)) == 1 for tokens in per_step)  # a step's request is the same on every try
        usage = (await queue.get(task_id)).checkpoint.usage
        assert usage.input_tokens + usage.output_tokens == sum(tokens[0] for tokens in per_step)
    # a step answered twice is one whose reply arrived but was not yet checkpointed at a kill
    assert sum(len(v) - 1 for v in by_step.values()) <= KILLS


async def test_sigterm_hands_back_or_finishes_in_flight_tasks(
    tmp_path: Path,
    config: RuntimeConfig,
    redis_server: LocalRedis,
    redis_client: redis.asyncio.Redis,
    model_server: LocalModelServer,
) -> None:
    model_server.faults.latency_seconds = 0.3
    queue = TaskQueue.from_config(config, redis_client)
    await queue.ensure_group()
    ids = [(await queue.submit(expressions(n)[0], max_steps=6)).task_id for n in range(2)]

    short = await start_worker(tmp_path, config.model_copy(update={"shutdown_grace_seconds": 0.05}), redis_server)
    try:
        while not await holds_tasks(redis_client, queue, short.pid):
            await asyncio.sleep(0.02)

        async def a_step_checkpointed() -> bool:  # one step done (stored), the next in flight
            return max([(await queue.get(t)).checkpoint.step for t in ids]) >= 1

        await eventually(a_step_checkpointed)
        short.signal(signal.SIGTERM)
        assert await short.wait(10) == 0, short.logs()
    finally:
        await short.kill()
    records = [await queue.get(t) for t in ids]
    assert [r.status for r in records] == [TaskStatus.QUEUED] * 2, short.logs()
    assert all(r.deliveries == 0 for r in records)  # handed back: the delivery is not counted
    assert sum(r.checkpoint.step for r in records) >= 1  # the completed steps stayed
    assert await queue.depth() == 2
    assert all(e["event"] != "task_finished" for e in map(json.loads, short.logs().splitlines()) if "event" in e)

    patient = await start_worker(tmp_path, config.model_copy(update={"shutdown_grace_seconds": 30}), redis_server)
    try:
        while not await holds_tasks(redis_client, queue, patient.pid):
            await asyncio.sleep(0.02)
        patient.signal(signal.SIGTERM)
        assert await patient.wait(20) == 0, patient.logs()
    finally:
        await patient.kill()
    assert [(await queue.get(t)).status for t in ids] == [TaskStatus.SUCCEEDED] * 2
    assert await queue.depth() == 0


async def test_a_worker_never_reclaims_its_own_running_task(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    """Regression: XAUTOCLAIM also matches the worker's own in-flight entry once it is idle past the
    threshold (a heartbeat that came late on a busy machine), and the worker ran the task a second
    time — a duplicate model call. A threshold of 1 ms makes every reclaim pass see the running
    task's entry as idle, so the old code repeated step 1 every time; only the model server's own
    log of requests counts the calls."""
    model_server.faults.latency_seconds = 0.6  # each step outlasts several reclaim passes
    cfg = config.model_copy(update={"claim_idle_seconds": 0.001})
    queue = TaskQueue.from_config(cfg, redis_client)
    made = await queue.submit("What is 6*7?", max_steps=cfg.max_steps_per_task)
    parts = build_worker(cfg, redis_client=redis_client, registry=CollectorRegistry(), burst=True)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    assert [(c.task_id, c.step) for c in model_server.calls] == [(made.task_id, 0), (made.task_id, 1)]
    record = await queue.get(made.task_id)
    assert record.status == TaskStatus.SUCCEEDED and record.result == "The answer: 6*7 = 42."
    assert record.deliveries == 1

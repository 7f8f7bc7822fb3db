"""The Redis Streams queue against a real redis-server.

Covers: the weighted priority scheduler (high first most of the time, low never starved); priority
ordering of a real burst worker; acknowledgement only with the stored result (the stream is empty
after finish, pending while running); reclaim (XAUTOCLAIM) of a dead consumer's entry after the idle
timeout, and none before it; heartbeats keep a live consumer's entry from being reclaimed; fencing
(a stale delivery can neither checkpoint nor store a result); dead-lettering after N deliveries with
the last error; depth = waiting + pending; requeue on shutdown keeps the checkpoint and does not count
as a delivery; cancel of a running task stops its writer; consumers of dead pods that hold
nothing are forgotten, those holding entries kept.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio
from agentops_dev.waiting import eventually

from agent_runtime import errors
from agent_runtime.constants import ServiceKeys
from agent_runtime.queue import PriorityScheduler, TaskQueue
from agent_runtime.tasks import Checkpoint, TaskStatus, Usage
from tests.integration.runtime.conftest import MakeWorker


def make_queue(client: redis.asyncio.Redis, **kwargs: object) -> TaskQueue:
    return TaskQueue(client, keys=ServiceKeys("default", "q"), claim_idle_seconds=0.3, max_deliveries=3, **kwargs)  # type: ignore[arg-type]


def test_scheduler_weights_and_no_starvation() -> None:
    scheduler = PriorityScheduler({"high": 6, "normal": 3, "low": 1})
    firsts = Counter(scheduler.order()[0] for _ in range(1000))
    assert firsts == {"high": 600, "normal": 300, "low": 100}
    orders = [scheduler.order() for _ in range(10)]
    assert all(sorted(o) == ["high", "low", "normal"] for o in orders)
    assert any(o[0] == "low" for o in orders)  # within every ten reads low goes first once
    with pytest.raises(errors.ConfigError):
        PriorityScheduler({"high": 1, "low": 0})


async def test_priority_order_of_a_burst_worker(make_worker: MakeWorker, redis_client: redis.asyncio.Redis) -> None:
    parts = make_worker(concurrency=1)
    queue = parts.queue
    ids: dict[str, str] = {}
    for priority in ("low", "normal", "high"):
        for i in range(10):
            made = await queue.submit(f"say {priority} {i}", priority=priority, max_steps=3)
            ids[made.task_id] = priority
    await parts.worker.run()
    finished = []
    for task_id, priority in ids.items():
        record = await queue.get(task_id)
        assert record.status == TaskStatus.SUCCEEDED
        assert record.finished_at is not None
        finished.append((record.finished_at, priority))
    order = [p for _, p in sorted(finished)]
    assert order[0] == "high"
    position = {p: sum(i for i, q in enumerate(order) if q == p) / 10 for p in ("high", "normal", "low")}
    assert position["high"] < position["normal"] < position["low"]
    assert "low" in order[:20]  # low is served before high and normal are exhausted: never starved


async def test_ack_only_with_result_and_depth(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    made = await queue.submit("x", max_steps=3)
    assert await queue.depth() == 1  # waiting
    [entry] = await queue.read("c1", 10)
    claim = await queue.claim(entry, "c1")
    assert claim is not None and claim.fence == 1
    assert await queue.depth() == 1  # pending
    assert (await redis_client.xpending(entry.stream, "workers"))["pending"] == 1
    checkpoint = Checkpoint(messages=[{"role": "user", "content": "x"}], step=1, usage=Usage(input_tokens=5))
    await queue.checkpoint(claim, checkpoint)
    assert (await queue.get(made.task_id)).checkpoint == checkpoint
    assert await queue.depth() == 1
    outcome = await queue.finish(claim, TaskStatus.SUCCEEDED, checkpoint=checkpoint, result="done", error=None)
    assert outcome == "stored"
    assert await queue.depth() == 0
    assert (await redis_client.xpending(entry.stream, "workers"))["pending"] == 0
    record = await queue.get(made.task_id)
    assert (record.status, record.result) == (TaskStatus.SUCCEEDED, "done")
    assert 0 < await redis_client.ttl(queue.task_key(made.task_id)) <= 7 * 86400
    # a second finish of the same delivery stores nothing more
    assert await queue.finish(claim, TaskStatus.FAILED, checkpoint=checkpoint, result=None, error="x") == "succeeded"
    assert (await queue.get(made.task_id)).status == TaskStatus.SUCCEEDED


async def test_reclaim_after_idle_timeout_with_fencing(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    made = await queue.submit("x", max_steps=3)
    [entry] = await queue.read("dead", 1)
    old = await queue.claim(entry, "dead")
    assert old is not None
    await queue.checkpoint(old, Checkpoint(messages=[{"role": "user", "content": "x"}], step=1))
    assert await queue.reclaim("alive", 5) == []  # not idle long enough yet
    await asyncio.sleep(0.35)
    [again] = await queue.reclaim("alive", 5)
    assert again.entry_id == entry.entry_id
    new = await queue.claim(again, "alive")
    assert new is not None and new.fence == 2
    assert new.record.checkpoint.step == 1  # resumes where the dead one stopped
    assert new.record.deliveries == 2
    with pytest.raises(errors.OwnershipLost):
        await queue.checkpoint(old, Checkpoint(step=9))
    assert (
        await queue.finish(old, TaskStatus.SUCCEEDED, checkpoint=Checkpoint(step=9), result="stale", error=None)
        == "lost"
    )
    assert await queue.depth() == 1  # the stale finish did not acknowledge the live delivery
    assert (
        await queue.finish(new, TaskStatus.SUCCEEDED, checkpoint=Checkpoint(step=2), result="ok", error=None)
        == "stored"
    )
    record = await queue.get(made.task_id)
    assert (record.result, record.checkpoint.step) == ("ok", 2)


async def test_heartbeat_keeps_a_live_task(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    await queue.submit("x", max_steps=3)
    [entry] = await queue.read("live", 1)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await queue.heartbeat("live", [entry])
    assert await queue.reclaim("thief", 5) == []
    await queue.heartbeat("thief", [entry])  # a heartbeat never steals another consumer's entry
    await asyncio.sleep(0.35)
    assert [e.entry_id for e in await queue.reclaim("thief", 5)] == [entry.entry_id]


async def test_dead_letter_after_max_deliveries(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    made = await queue.submit("x", max_steps=3)
    assert int(await redis_client.get(queue.queued_bytes)) > 0
    [entry] = await queue.read("c", 1)
    for delivery in range(1, 4):
        claim = await queue.claim(entry, "c")
        assert claim is not None and claim.record.deliveries == delivery
        await queue.retry_later(claim, f"provider 'p' answered HTTP 500: boom {delivery}")
        assert (await queue.get(made.task_id)).status == TaskStatus.QUEUED
    assert await queue.claim(entry, "c") is None  # fourth delivery: dead-lettered instead
    record = await queue.get(made.task_id)
    assert record.status == TaskStatus.FAILED
    assert record.error == "gave up after 3 deliveries; last error: provider 'p' answered HTTP 500: boom 3"
    assert await queue.depth() == 0
    assert int(await redis_client.get(queue.queued_bytes)) == 0  # its bytes given back (issue 27)
    assert await queue.dead_letters() == [
        {"task_id": made.task_id, "error": "provider 'p' answered HTTP 500: boom 3", "deliveries": "3"}
    ]


async def test_requeue_keeps_checkpoint_and_delivery_count(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    made = await queue.submit("x", max_steps=3)
    [entry] = await queue.read("c", 1)
    claim = await queue.claim(entry, "c")
    assert claim is not None
    await queue.checkpoint(claim, Checkpoint(messages=[{"role": "user", "content": "x"}], step=1))
    assert await queue.requeue(claim)
    assert await queue.depth() == 1
    [fresh] = await queue.read("d", 1)
    assert fresh.entry_id != entry.entry_id
    again = await queue.claim(fresh, "d")
    assert again is not None
    assert again.record.deliveries == 1 and again.record.checkpoint.step == 1 and again.fence == 2
    assert made.task_id == again.record.task_id


async def test_cancel_running_task_stops_its_writer(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    made = await queue.submit("x", max_steps=3)
    [entry] = await queue.read("c", 1)
    claim = await queue.claim(entry, "c")
    assert claim is not None
    assert await queue.cancel(made.task_id) == (TaskStatus.CANCELLED, True)
    assert await queue.cancel(made.task_id) == (TaskStatus.CANCELLED, False)
    assert await queue.depth() == 0
    with pytest.raises(errors.OwnershipLost):
        await queue.checkpoint(claim, Checkpoint(step=1))
    assert (
        await queue.finish(claim, TaskStatus.SUCCEEDED, checkpoint=Checkpoint(), result="x", error=None) == "cancelled"
    )
    assert (await queue.get(made.task_id)).status == TaskStatus.CANCELLED


async def test_forget_idle_consumers_keeps_those_holding_tasks(redis_client: redis.asyncio.Redis) -> None:
    queue = make_queue(redis_client)
    await queue.ensure_group()
    await queue.submit("x", max_steps=3)
    await queue.submit("y", max_steps=3)
    [done] = await queue.read("finished-pod", 1)
    claim = await queue.claim(done, "finished-pod")
    assert claim is not None
    assert await queue.finish(claim, TaskStatus.SUCCEEDED, checkpoint=Checkpoint(), result="ok", error=None) == "stored"
    assert await queue.read("busy-pod", 1)
    await asyncio.sleep(0.1)
    assert await queue.forget_idle_consumers(idle_seconds=0.05) == 1
    names = {c["name"] for c in await redis_client.xinfo_consumers(queue.streams["normal"], queue.group)}
    assert names == {"busy-pod"}


async def test_a_blocking_read_never_hands_out_more_than_asked(redis_client: redis.asyncio.Redis) -> None:
    """A worker's free slots bound what one read hands out, even when several streams fill at once.

    XREADGROUP's COUNT applies per stream; the redis-server used here wakes a blocked reader with
    the stream that got data only, but `TaskQueue.read` does not rely on that (it keeps extras).
    """
    queue = make_queue(redis_client)
    await queue.ensure_group()
    reader = asyncio.create_task(queue.read("c1", 1, block_ms=5000))

    async def blocked() -> bool:  # the read is blocked on the three empty priority streams
        return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in await redis_client.client_list())

    await eventually(blocked)
    async with redis_client.pipeline(transaction=True) as pipe:  # all three arrive before it wakes
        for priority in ("high", "normal", "low"):
            pipe.xadd(queue.streams[priority], {"task_id": f"t-{priority}"})
        await pipe.execute()
    first = await asyncio.wait_for(reader, 5)
    assert len(first) == 1
    rest = [await queue.read("c1", 1), await queue.read("c1", 5)]
    assert [len(r) for r in rest] == [1, 1]
    assert sorted(e.task_id for e in [*first, *rest[0], *rest[1]]) == ["t-high", "t-low", "t-normal"]
    assert await queue.read("c1", 5) == []

"""Redis modes: no-op drain throughput on standalone vs a 3-primary Cluster; tasks lost across a Sentinel failover.

Usage (from the repository root): `PYTHONPATH=. python bench/redis_modes.py [--tasks N] [--concurrency C] [--trials T]`.

1. Throughput: N no-op tasks submitted through `TaskQueue.submit`, then drained by one burst
   worker with concurrency C (the runner returns at once, as in runtime_throughput.py), on
   - one standalone redis-server, and
   - a Cluster of 3 primaries + 3 replicas (`redis+cluster://`, redis-py's RedisCluster),
   each also with `wait_replicas=1` where the topology has replicas (WAIT after every promise).
2. Failover: a Sentinel group (1 primary, 2 replicas, 3 sentinels, down-after 1 s). 16 concurrent
   submitters call `TaskQueue.submit`; 0.5 s in, the primary gets SIGKILL; submitting goes on until
   a sentinel names the new primary, plus 0.5 s. Then every acknowledged task id is looked up on
   the new primary: missing = an acknowledged task lost. T trials with `wait_replicas` 0, T with 1.
All processes on loopback, no persistence; every figure is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis.asyncio
from agentops_dev.localredis import LocalRedis
from prometheus_client import CollectorRegistry

from agent_runtime import errors
from agent_runtime import logging as runtime_logging
from agent_runtime.agent import Outcome, SaveCheckpoint
from agent_runtime.composition import connect_redis
from agent_runtime.constants import ServiceKeys
from agent_runtime.metrics import Metrics
from agent_runtime.queue import TaskQueue
from agent_runtime.redisconn import RedisSettings
from agent_runtime.tasks import Checkpoint, TaskStatus
from agent_runtime.worker import Worker
from tests.support.redis_topologies import running_cluster, running_sentinel_group


class Noop:
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
    ) -> Outcome:
        return Outcome(TaskStatus.SUCCEEDED, checkpoint, result="ok")


async def drain(client: redis.asyncio.Redis, tasks: int, concurrency: int, wait_replicas: int) -> float:
    """Submit `tasks` no-op tasks, drain them with one burst worker; end-to-end tasks/s."""
    keys = ServiceKeys("bench", uuid.uuid4().hex[:8])  # fresh keys: a Cluster has no FLUSHDB of one slot
    queue = TaskQueue(client, keys=keys, wait_replicas=wait_replicas)
    metrics = Metrics(CollectorRegistry(), service="bench", track="stable")
    worker = Worker(queue=queue, runner=Noop(), metrics=metrics, concurrency=concurrency, burst=True, block_ms=1000)
    await queue.ensure_group()
    start = time.perf_counter()
    for i in range(tasks):
        await queue.submit(f"task {i}", max_steps=1)
    await worker.run()
    elapsed = time.perf_counter() - start
    assert worker.processed == tasks and await queue.depth() == 0
    return tasks / elapsed


async def throughput(directory: Path, tasks: int, concurrency: int) -> None:
    print(f"## no-op drain, {tasks} tasks, one worker, concurrency {concurrency} (submit + drain, tasks/s)")
    # Alternated, twice each: on a shared machine one run of each side says little.
    server = LocalRedis(directory=directory / "standalone", durable=False)
    (directory / "standalone").mkdir()
    server.start()
    try:
        with running_cluster(directory / "cluster") as cluster:
            standalone, clustered = connect_redis(server.url), connect_redis(cluster.url)
            for _ in range(2):
                print(f"standalone redis-server              : {await drain(standalone, tasks, concurrency, 0):8.0f}")
                print(f"cluster 3 primaries + 3 replicas      : {await drain(clustered, tasks, concurrency, 0):8.0f}")
                print(f"cluster, wait_replicas=1              : {await drain(clustered, tasks, concurrency, 1):8.0f}")
            await standalone.aclose()
            await clustered.aclose()
    finally:
        server.kill()


async def failover_trial(directory: Path, wait_replicas: int) -> tuple[int, int, int, float]:
    """(acknowledged, lost, refused, seconds from kill to new primary named) of one failover."""
    with running_sentinel_group(directory) as group:
        client = connect_redis(group.url, RedisSettings(wait_replicas=wait_replicas))
        queue = TaskQueue(client, keys=ServiceKeys("bench", "failover"), wait_replicas=wait_replicas)
        acknowledged: list[str] = []
        refused = 0
        stop = asyncio.Event()

        async def submitter(n: int) -> None:
            nonlocal refused
            i = 0
            while not stop.is_set():
                try:
                    acknowledged.append((await queue.submit(f"{n}-{i}", max_steps=1)).task_id)
                except errors.StoreUnavailable:
                    refused += 1
                    await asyncio.sleep(0.01)
                i += 1

        runners = [asyncio.create_task(submitter(n)) for n in range(16)]
        await asyncio.sleep(0.5)
        old = group.server_at(group.primary_port())
        old.kill()
        killed = time.monotonic()
        while group.primary_port() == old.port:
            await asyncio.sleep(0.05)
        promoted = time.monotonic() - killed
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*runners)
        lost = 0
        for task_id in acknowledged:
            while True:
                try:
                    exists = await client.exists(queue.task_key(task_id))
                    break
                except redis.exceptions.RedisError:
                    await asyncio.sleep(0.05)
            lost += 0 if exists else 1
        await client.aclose()
        return len(acknowledged), lost, refused, promoted


async def failover(directory: Path, trials: int) -> None:
    print(f"\n## Sentinel failover under 16 concurrent submitters, {trials} trials each")
    print("wait_replicas | acknowledged | lost | refused (503) | kill -> new primary named")
    for wait_replicas in (0, 1):
        for trial in range(trials):
            acked, lost, refused, promoted = await failover_trial(
                directory / f"w{wait_replicas}-{trial}", wait_replicas
            )
            print(f"{wait_replicas:13d} | {acked:12d} | {lost:4d} | {refused:13d} | {promoted:5.2f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    runtime_logging.configure("error")
    with tempfile.TemporaryDirectory() as tmp:
        await throughput(Path(tmp), args.tasks, args.concurrency)
        await failover(Path(tmp), args.trials)


if __name__ == "__main__":
    asyncio.run(main())

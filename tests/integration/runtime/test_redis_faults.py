"""Redis answering but refusing commands for a while: READONLY, OOM, MASTERDOWN, BUSY, NOSCRIPT, UNBLOCKED.

Each fault is made on a real redis-server while a real worker process runs tasks:
- READONLY: `REPLICAOF` a port where nothing listens (the data stays, writes are refused);
- OOM: `maxmemory 1` with `noeviction`;
- MASTERDOWN: the same REPLICAOF with `replica-serve-stale-data no` (reads are refused too);
- BUSY: a Lua loop running past `busy-reply-threshold` on another connection, ended by SCRIPT KILL;
- NOSCRIPT: `SCRIPT FLUSH` while tasks run: no task is interrupted (redis-py reloads a script and
  retries once, and a flush between that load and that retry escaped as NoScriptError, interrupting
  a task in two of three runs; `scripts.run_script` retries the whole call);
- UNBLOCKED: REPLICAOF while the worker waits in a blocking XREADGROUP.
While a refusal lasts the API answers 503 JSON `{"error": ...}` with `retry-after` (before the fix:
a text/plain 500) and `/ready` answers 503 (before: 200, since PING still works); the worker logs the
refusal, backs off and keeps running (before: it exited with rc 1). Once the fault is cleared every
accepted task completes with its answer and the queue is empty. LOADING has no cheap real-server
trigger; its classification is checked with the others at unit level.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
import redis.exceptions
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.waiting import eventually

from agent_runtime import errors
from agent_runtime.config import RuntimeConfig
from agent_runtime.queue import TaskQueue
from tests.integration.runtime.conftest import AUTH, Fleet

Fault = Callable[[LocalRedis], Coroutine[Any, Any, Callable[[], Coroutine[Any, Any, None]]]]


def admin(server: LocalRedis) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(server.url, decode_responses=True)


async def readonly(server: LocalRedis) -> Callable[[], Coroutine[Any, Any, None]]:
    client = admin(server)
    await client.replicaof("127.0.0.1", str(free_port()))  # nobody there: it stays a cut-off replica

    async def clear() -> None:
        await client.replicaof("NO", "ONE")
        await client.aclose()

    return clear


async def out_of_memory(server: LocalRedis) -> Callable[[], Coroutine[Any, Any, None]]:
    client = admin(server)
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")

    async def clear() -> None:
        await client.config_set("maxmemory", "0")
        await client.aclose()

    return clear


async def master_down(server: LocalRedis) -> Callable[[], Coroutine[Any, Any, None]]:
    client = admin(server)
    await client.config_set("replica-serve-stale-data", "no")
    await client.replicaof("127.0.0.1", str(free_port()))

    async def clear() -> None:
        await client.replicaof("NO", "ONE")
        await client.config_set("replica-serve-stale-data", "yes")
        await client.aclose()

    return clear


async def busy(server: LocalRedis) -> Callable[[], Coroutine[Any, Any, None]]:
    client = admin(server)
    await client.config_set("busy-reply-threshold", "50")
    looping = threading.Event()

    def loop() -> None:  # blocks its own connection until SCRIPT KILL
        blocking = redis.Redis.from_url(server.url)
        looping.set()
        with contextlib.suppress(redis.exceptions.ResponseError):
            blocking.eval("local i = 0 while true do i = i + 1 end", 0)
        blocking.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    await asyncio.to_thread(looping.wait)

    async def refusing() -> bool:
        try:
            await client.get("probe")
        except redis.exceptions.ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False

    await eventually(refusing)

    async def clear() -> None:
        await client.script_kill()
        await asyncio.to_thread(thread.join, 10)
        await client.aclose()

    return clear


FAULTS: dict[str, Fault] = {
    "readonly": readonly,
    "oom": out_of_memory,
    "masterdown": master_down,
    "busy": busy,
}
REFUSAL_EVENTS = ("store_unavailable", "task_interrupted", "claim_failed", "finish_failed", "task_handed_back")


@pytest.fixture
def queue(config: RuntimeConfig, redis_client: redis.asyncio.Redis) -> TaskQueue:
    return TaskQueue.from_config(config, redis_client)


@pytest.fixture
async def worker_fleet(fleet: Fleet, config: RuntimeConfig) -> AsyncIterator[Fleet]:
    await fleet.start(config, burst=False, count=1)
    await fleet.started()
    yield fleet


async def submit_tasks(api: httpx.AsyncClient, numbers: range) -> dict[str, int]:
    made = {}
    for n in numbers:
        response = await api.post("/v1/tasks", json={"input": f"Compute {n}+1 and {n}*3."}, headers=AUTH)
        assert response.status_code == 202, response.text
        made[response.json()["task_id"]] = n
    return made


async def all_succeeded(api: httpx.AsyncClient, tasks: dict[str, int]) -> None:
    async def check() -> bool:
        views = [(await api.get(f"/v1/tasks/{t}", headers=AUTH)).json() for t in tasks]
        return all(v.get("status") == "succeeded" for v in views)

    await eventually(check, timeout=60, interval=0.1)
    for task_id, n in tasks.items():
        view = (await api.get(f"/v1/tasks/{task_id}", headers=AUTH)).json()
        assert view["result"] == f"The answer: {n}+1 = {n + 1}; {n}*3 = {n * 3}."


@pytest.fixture(params=list(FAULTS))
def fault(request: pytest.FixtureRequest, redis_server: LocalRedis) -> tuple[str, LocalRedis]:
    """The fault's name, and the server to make it on."""
    return request.param, redis_server


async def test_a_refusing_redis_is_an_outage_not_a_crash(
    fault: tuple[str, LocalRedis],
    api: httpx.AsyncClient,
    queue: TaskQueue,
    model_server: LocalModelServer,
    worker_fleet: Fleet,
) -> None:
    (worker,) = worker_fleet.processes
    model_server.faults.latency_seconds = 0.1
    accepted = await submit_tasks(api, range(3))
    await eventually(lambda: len(model_server.completed()) >= 1)  # the worker is mid-run

    logged_before = sum(worker.logs().count(event) for event in REFUSAL_EVENTS)
    name, server = fault
    clear = await FAULTS[name](server)
    try:
        refused = await api.post("/v1/tasks", json={"input": "while refused"}, headers=AUTH)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"].startswith("task store unavailable: Redis ")
        assert refused.headers["content-type"] == "application/json"
        assert refused.headers["retry-after"] == "1"
        ready = await api.get("/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        if name in ("masterdown", "busy"):  # reads are refused too
            assert (await api.get(f"/v1/tasks/{next(iter(accepted))}", headers=AUTH)).status_code == 503
        assert (await api.get("/health")).status_code == 200
        # the worker meets the refusal, and lives on
        await eventually(lambda: sum(worker.logs().count(event) for event in REFUSAL_EVENTS) > logged_before)
        assert worker.alive(), worker.logs()[-3000:]
    finally:
        await clear()

    await eventually(lambda: _ready(api), timeout=20)
    accepted |= await submit_tasks(api, range(3, 5))
    await all_succeeded(api, accepted)
    assert await queue.depth() == 0
    assert worker.alive(), worker.logs()[-3000:]
    await worker_fleet.stop()  # and it still exits 0 on SIGTERM


async def test_replicaof_while_the_worker_waits_for_tasks(
    api: httpx.AsyncClient, redis_server: LocalRedis, queue: TaskQueue, worker_fleet: Fleet
) -> None:
    """A worker blocked in XREADGROUP when its Redis turns replica gets UNBLOCKED: it backs off too."""
    (worker,) = worker_fleet.processes
    client = admin(redis_server)
    try:

        async def blocked_read() -> bool:
            return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in await client.client_list())

        await eventually(blocked_read)
        clear = await readonly(redis_server)
        try:
            await eventually(lambda: "UNBLOCKED" in worker.logs())
            await eventually(lambda: "store_unavailable" in worker.logs())
            assert worker.alive(), worker.logs()[-3000:]
        finally:
            await clear()
        await eventually(lambda: _ready(api), timeout=20)
        await all_succeeded(api, await submit_tasks(api, range(2)))
        assert await queue.depth() == 0
        await worker_fleet.stop()
    finally:
        await client.aclose()


async def _ready(api: httpx.AsyncClient) -> bool:
    return (await api.get("/ready")).status_code == 200


async def test_script_cache_flushed_while_tasks_run(
    api: httpx.AsyncClient,
    redis_client: redis.asyncio.Redis,
    queue: TaskQueue,
    model_server: LocalModelServer,
    worker_fleet: Fleet,
) -> None:
    (worker,) = worker_fleet.processes
    model_server.faults.latency_seconds = 0.05
    accepted = await submit_tasks(api, range(2))
    await eventually(lambda: len(model_server.completed()) >= 1)
    for n in range(2, 8):  # flush between submissions, claims, checkpoints and finishes
        await redis_client.script_flush()
        accepted |= await submit_tasks(api, range(n, n + 1))
        calls = 2 * n
        await eventually(lambda: len(model_server.completed()) >= calls)  # noqa: B023 (awaited in this iteration)
    await redis_client.script_flush()
    await all_succeeded(api, accepted)
    assert await queue.depth() == 0
    assert "NOSCRIPT" not in worker.logs() and worker.alive()
    await worker_fleet.stop()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
        (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"), "LOADING"),
        (redis.exceptions.ResponseError("MASTERDOWN Link with MASTER is down"), "MASTERDOWN"),
        (redis.exceptions.ResponseError("BUSY Redis is busy running a script."), "BUSY"),
        (redis.exceptions.NoScriptError("No matching script."), "NOSCRIPT"),
        (redis.exceptions.ResponseError("UNBLOCKED force unblock from blocking operation"), "UNBLOCKED"),
        (
            redis.exceptions.ResponseError(
                "Error running script (call to f_0): @user_script:1: -OOM command not allowed when used memory"
            ),
            "OOM",
        ),
    ],
)
def test_refusals_are_transient(error: redis.exceptions.RedisError, reason: str) -> None:
    refusal = errors.redis_refusal(error)
    assert refusal is not None and f"({reason}" in refusal
    mapped = errors.from_redis(error)
    assert isinstance(mapped, errors.StoreUnavailable)


@pytest.mark.parametrize(
    "message",
    [
        "BUSYGROUP Consumer Group name already exists",
        "NOGROUP No such key",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "ERR Error running script (call to f_0): @user_script:3: user_script:3: attempt to compare nil",
    ],
)
def test_other_response_errors_are_not_refusals(message: str) -> None:
    assert errors.redis_refusal(redis.exceptions.ResponseError(message)) is None
    assert not isinstance(errors.from_redis(redis.exceptions.ResponseError(message)), errors.StoreUnavailable)

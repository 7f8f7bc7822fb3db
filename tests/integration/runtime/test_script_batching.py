"""Script calls made in one turn of the event loop go to Redis in one pipeline, each with its own answer.

On a real redis-server: the server's own connection count shows one connection for 50 calls made
at once (redis-py alone opens one per concurrent call); replies and errors reach the right caller; a
flushed script cache and a caller cancelled before its batch leaves behave as the module says.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
import redis.asyncio
import redis.exceptions
from agentops_dev.localredis import LocalRedis, free_port

from agent_runtime import scripts
from agent_runtime.composition import connect_redis

# Answers its argument, or fails with a script error for the argument "fail".
ECHO = """
if ARGV[1] == 'fail' then return redis.error_reply('ERR asked to fail') end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


async def connections_received(probe: redis.asyncio.Redis) -> int:
    stats = await probe.info("stats")
    return int(stats["total_connections_received"])


async def test_fifty_calls_made_at_once_travel_on_one_connection(redis_server: LocalRedis) -> None:
    probe = redis.asyncio.Redis.from_url(redis_server.url)  # one connection of its own, opened here
    before = await connections_received(probe)
    client = connect_redis(redis_server.url)
    echo = client.register_script(ECHO)
    replies = await asyncio.gather(*(scripts.run_script(echo, ["{t}:n"], [str(i)]) for i in range(50)))
    after = await connections_received(probe)
    assert replies == [str(i) for i in range(50)]
    assert int(await client.get("{t}:n")) == 50
    assert after - before == 1, f"{after - before} connections for 50 calls made at once"
    await client.aclose()
    await probe.aclose()


async def test_each_caller_gets_its_own_reply_or_its_own_error(redis_client: redis.asyncio.Redis) -> None:
    echo = redis_client.register_script(ECHO)
    results = await asyncio.gather(
        scripts.run_script(echo, ["{t}:n"], ["a"]),
        scripts.run_script(echo, ["{t}:n"], ["fail"]),
        scripts.run_script(echo, ["{t}:n"], [7]),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[2] == "7"
    assert isinstance(results[1], redis.exceptions.ResponseError) and "asked to fail" in str(results[1])
    assert int(await redis_client.get("{t}:n")) == 2  # the failing call ran nothing


async def test_a_flushed_script_cache_is_invisible_to_a_batch(redis_client: redis.asyncio.Redis) -> None:
    echo = redis_client.register_script(ECHO)
    assert await scripts.run_script(echo, ["{t}:n"], ["loaded"]) == "loaded"
    await redis_client.script_flush()
    replies = await asyncio.gather(*(scripts.run_script(echo, ["{t}:n"], [str(i)]) for i in range(20)))
    assert replies == [str(i) for i in range(20)]
    assert int(await redis_client.get("{t}:n")) == 21


async def test_a_caller_cancelled_before_its_batch_leaves_is_not_sent(redis_client: redis.asyncio.Redis) -> None:
    echo = redis_client.register_script(ECHO)
    kept = asyncio.ensure_future(scripts.run_script(echo, ["{t}:kept"], ["x"]))
    dropped = asyncio.ensure_future(scripts.run_script(echo, ["{t}:dropped"], ["x"]))
    await asyncio.sleep(0)  # both calls are now waiting for the batch's turn
    dropped.cancel()
    assert await kept == "x"
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert await redis_client.get("{t}:kept") == "1"
    assert await redis_client.get("{t}:dropped") is None


async def test_a_dead_connection_fails_every_call_of_the_batch() -> None:
    client = connect_redis(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    echo = client.register_script(ECHO)
    results = await asyncio.gather(
        *(scripts.run_script(echo, ["{t}:n"], [str(i)]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(result, redis.exceptions.ConnectionError) for result in results), results
    await client.aclose()


async def test_a_client_is_not_kept_alive_by_its_batcher(redis_server: LocalRedis) -> None:
    client = connect_redis(redis_server.url)
    echo = client.register_script(ECHO)
    assert await scripts.run_script(echo, ["{t}:n"], ["x"]) == "x"
    gone = weakref.ref(client)
    await client.aclose()
    del client, echo
    gc.collect()
    assert gone() is None

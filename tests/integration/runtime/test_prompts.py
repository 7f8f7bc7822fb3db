"""Prompts kept under `maxInputTokens` (`prompts.py`): real redis-server, the local model server counting tokens.

Covers: the shorter versions of a history (`trim: drop`): the task and the latest turn kept, older
tool outputs replaced first, then older turns removed whole, a `tool_use` never parted from its
`tool_result`; the local model server's count-tokens endpoint (the count it bills); a long task
whose history outgrows the ceiling: every call the server answered is within it (counted by the
server), no request was refused for a split pair, the task ends; a provider without a count
endpoint (openai-compatible) is held to the byte bound; a task whose first turn alone is over the
ceiling fails with the figure and no call is made.
"""

from __future__ import annotations

import httpx
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer, input_tokens
from prometheus_client import CollectorRegistry

from agent_runtime import prompts
from agent_runtime.composition import build_worker
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskRecord, TaskStatus

MANY = "Compute " + ", then ".join(f"{n}+{n}" for n in range(1, 13)) + "."  # twelve calculator steps


def turn(n: int) -> list[dict[str, object]]:
    use = {"type": "tool_use", "id": f"t{n}", "name": "calculator", "input": {"expression": f"{n}+{n}"}}
    result = {"type": "tool_result", "tool_use_id": f"t{n}", "content": "x" * 200}
    return [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]


def test_shorter_histories_keep_the_task_the_latest_turn_and_every_pair() -> None:
    task = {"role": "user", "content": "the task"}
    messages = [task, *turn(1), *turn(2), *turn(3)]
    versions = prompts.shortened(messages)
    assert len(versions) == 2 + 2  # two older outputs dropped one by one, then two older turns removed
    for version in versions:
        assert version[0] == task and version[-2:] == messages[-2:]
        for index, message in enumerate(version):
            if message["role"] == "assistant":
                ids = {b["id"] for b in message["content"]}
                assert ids == {b["tool_use_id"] for b in version[index + 1]["content"]}
    assert versions[0][2]["content"][0]["content"] == prompts.DROPPED
    assert versions[0][4]["content"][0]["content"] == "x" * 200
    assert versions[1][4]["content"][0]["content"] == prompts.DROPPED
    assert [m["content"][0].get("id") for m in versions[2][1::2]] == ["t2", "t3"]
    assert versions[3] == [task, *messages[-2:]]
    assert prompts.shortened([task, *turn(1)]) == []


async def test_the_local_model_server_counts_what_it_bills(model_server: LocalModelServer) -> None:
    body = {"model": "m", "system": "s", "messages": [{"role": "user", "content": "What is 6*7?"}], "tools": []}
    async with httpx.AsyncClient(base_url=model_server.url) as client:
        counted = (await client.post("/v1/messages/count_tokens", json=body)).json()["input_tokens"]
        billed = (await client.post("/v1/messages", json={**body, "max_tokens": 64})).json()["usage"]["input_tokens"]
        split = {
            **body,
            "max_tokens": 64,
            "messages": [body["messages"][0], *turn(1)[:1], {"role": "user", "content": "?"}],
        }
        refused = await client.post("/v1/messages", json=split)
    assert counted == billed == input_tokens(body) and model_server.counted == 1
    assert refused.status_code == 400 and "without tool_result blocks" in refused.text


async def run(cfg: RuntimeConfig, redis_client: redis.asyncio.Redis, text: str) -> TaskRecord:
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit(text, max_steps=20)).task_id
    parts = build_worker(cfg, redis_client=redis_client, registry=CollectorRegistry(), burst=True)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    return await queue.get(task_id)


async def test_every_call_of_a_long_task_stays_under_the_ceiling(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    unbounded = await run(config.model_copy(update={"max_steps_per_task": 20}), redis_client, MANY)
    assert unbounded.status == TaskStatus.SUCCEEDED and unbounded.checkpoint.step == 13
    biggest = max(c.input_tokens for c in model_server.completed())
    model_server.calls.clear()

    ceiling = biggest - 150  # the later calls of the task would be over it
    cfg = config.model_copy(update={"max_input_tokens": ceiling, "max_steps_per_task": 20})
    record = await run(cfg, redis_client, MANY)
    calls = model_server.completed()
    assert record.status == TaskStatus.SUCCEEDED and record.checkpoint.step == 13
    assert all(c.outcome == "ok" for c in model_server.calls)  # no request refused (a split pair is a 400)
    assert max(c.input_tokens for c in calls) <= ceiling < biggest
    assert model_server.counted >= len(calls)  # each call counted first
    # the checkpoint keeps the whole transcript; only what was sent was shortened
    assert len(record.checkpoint.messages) == len(unbounded.checkpoint.messages)
    assert record.checkpoint.usage.input_tokens < unbounded.checkpoint.usage.input_tokens


async def test_without_a_count_endpoint_the_byte_bound_holds_the_ceiling(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    openai = ProviderConfig(
        name="compat", kind="openai-compatible", model="claude-sonnet-5-5", base_url=model_server.url + "/v1"
    )
    cfg = config.model_copy(update={"providers": [openai], "max_input_tokens": 2_500, "max_steps_per_task": 20})
    record = await run(cfg, redis_client, MANY)
    assert record.status == TaskStatus.SUCCEEDED and model_server.counted == 0
    assert max(c.input_tokens for c in model_server.completed()) <= 2_500


async def test_a_first_turn_over_the_ceiling_fails_the_task_without_a_call(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    cfg = config.model_copy(update={"max_input_tokens": 300})
    record = await run(cfg, redis_client, "Summarise this: " + "words " * 300)
    assert record.status == TaskStatus.FAILED and not model_server.calls
    assert record.error is not None and "the ceiling is 300 (model.maxInputTokens)" in record.error
    assert "counted by provider local" in record.error and "the call was not made" in record.error

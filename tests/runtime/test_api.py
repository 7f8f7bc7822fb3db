"""The task API against a real redis-server and the local model server, through the real anthropic client.

Covers: submit → 202 with task id and status URL → a burst worker → succeeded with the answer and usage;
multi-step tool use (one calculator call per expression, then the answer); cancel of a queued task (never
runs) and of a finished one (409); idempotent resubmit (same task, one queue entry); bearer auth (401
on /v1 without or with a wrong token, probes open); bad input with clear messages (invalid JSON, body
over the limit with and without content-length, input over max_input_chars, unknown priority, unknown
field, unknown task id); /health and /ready; the request id echoed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from agent_runtime.localmodel import LocalModelServer
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus
from tests.runtime.conftest import AUTH, MakeWorker


async def submit(api: httpx.AsyncClient, text: str, **extra: object) -> dict[str, object]:
    response = await api.post("/v1/tasks", json={"input": text, **extra}, headers=AUTH)
    assert response.status_code in (200, 202), response.text
    body: dict[str, object] = response.json()
    return body


async def test_submit_then_result(
    api: httpx.AsyncClient, make_worker: MakeWorker, model_server: LocalModelServer
) -> None:
    response = await api.post("/v1/tasks", json={"input": "What is 6*7?"}, headers=AUTH)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["status_url"] == f"http://api/v1/tasks/{body['task_id']}"
    assert response.headers["location"] == body["status_url"]

    queued = (await api.get(f"/v1/tasks/{body['task_id']}", headers=AUTH)).json()
    assert queued["status"] == "queued"
    assert queued["progress"] == {"step": 0, "max_steps": 6}

    await make_worker().worker.run()

    done = (await api.get(f"/v1/tasks/{body['task_id']}", headers=AUTH)).json()
    assert done["status"] == "succeeded", done
    assert done["result"] == "The answer: 6*7 = 42."
    assert done["progress"] == {"step": 2, "max_steps": 6}
    calls = model_server.completed()
    assert [c.step for c in calls] == [0, 1]
    assert {c.task_id for c in calls} == {body["task_id"]}
    assert done["usage"]["input_tokens"] == sum(c.input_tokens for c in calls)
    assert done["usage"]["output_tokens"] == sum(c.output_tokens for c in calls)
    expected_cost = sum(c.input_tokens * 2.0 + c.output_tokens * 10.0 for c in calls) / 1e6
    assert abs(done["usage"]["cost_usd"] - expected_cost) < 1e-9
    assert done["attempts"] == 1
    assert done["error"] is None


async def test_multi_step_tool_use(
    api: httpx.AsyncClient, make_worker: MakeWorker, model_server: LocalModelServer
) -> None:
    task = await submit(api, "First 12*7+3, then 100/8, and finally 2**10 - 24.")
    await make_worker().worker.run()
    done = (await api.get(f"/v1/tasks/{task['task_id']}", headers=AUTH)).json()
    assert done["status"] == "succeeded"
    assert done["result"] == "The answer: 12*7+3 = 87; 100/8 = 12.5; 2**10 - 24 = 1000."
    assert done["progress"]["step"] == 4  # three tool turns and the answer
    assert [c.step for c in model_server.calls] == [0, 1, 2, 3]


async def test_step_limit_fails_with_message(api: httpx.AsyncClient, make_worker: MakeWorker, config: object) -> None:
    task = await submit(api, " ".join(f"{i}+{i}" for i in range(1, 10)))  # nine calculations, limit six steps
    await make_worker().worker.run()
    done = (await api.get(f"/v1/tasks/{task['task_id']}", headers=AUTH)).json()
    assert done["status"] == "failed"
    assert done["error"] == "reached maxStepsPerTask (6) without a final answer"
    assert done["progress"] == {"step": 6, "max_steps": 6}


async def test_cancel_queued_task_never_runs(
    api: httpx.AsyncClient, make_worker: MakeWorker, model_server: LocalModelServer, redis_client: object
) -> None:
    task = await submit(api, "What is 1+1?")
    response = await api.delete(f"/v1/tasks/{task['task_id']}", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"task_id": task["task_id"], "status": "cancelled"}
    again = await api.delete(f"/v1/tasks/{task['task_id']}", headers=AUTH)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    parts = make_worker()
    assert await parts.queue.depth() == 0  # the entry went with the cancel
    await parts.worker.run()
    assert model_server.calls == []
    assert (await api.get(f"/v1/tasks/{task['task_id']}", headers=AUTH)).json()["status"] == "cancelled"


async def test_cancel_finished_task_is_a_conflict(api: httpx.AsyncClient, make_worker: MakeWorker) -> None:
    task = await submit(api, "Say hello.")
    await make_worker().worker.run()
    response = await api.delete(f"/v1/tasks/{task['task_id']}", headers=AUTH)
    assert response.status_code == 409
    assert response.json() == {
        "error": f"task {task['task_id']} already succeeded; only queued or running tasks can be cancelled"
    }


async def test_idempotent_resubmit(
    api: httpx.AsyncClient, make_worker: MakeWorker, model_server: LocalModelServer
) -> None:
    first = await api.post("/v1/tasks", json={"input": "What is 2+3?", "idempotency_key": "order-17"}, headers=AUTH)
    second = await api.post("/v1/tasks", json={"input": "What is 2+3?", "idempotency_key": "order-17"}, headers=AUTH)
    other = await api.post("/v1/tasks", json={"input": "What is 2+3?", "idempotency_key": "order-18"}, headers=AUTH)
    assert first.status_code == 202 and second.status_code == 200 and other.status_code == 202
    assert second.json()["task_id"] == first.json()["task_id"]
    assert second.json()["duplicate"] is True
    assert other.json()["task_id"] != first.json()["task_id"]
    parts = make_worker()
    assert await parts.queue.depth() == 2
    await parts.worker.run()
    assert len({c.task_id for c in model_server.calls}) == 2
    after = await api.post("/v1/tasks", json={"input": "What is 2+3?", "idempotency_key": "order-17"}, headers=AUTH)
    assert after.status_code == 200
    assert after.json()["task_id"] == first.json()["task_id"] and after.json()["status"] == "succeeded"


async def test_auth_required_except_probes(api: httpx.AsyncClient) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic dGVzdA=="}):
        response = await api.post("/v1/tasks", json={"input": "hi"}, headers=headers)
        assert response.status_code == 401
        assert "bearer token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
        assert (await api.get("/v1/tasks/x", headers=headers)).status_code == 401
    for path in ("/health", "/ready", "/metrics"):
        assert (await api.get(path)).status_code == 200, path
    assert (await api.get("/ready")).json() == {"ready": True}


async def test_bad_input_gets_a_clear_4xx(api: httpx.AsyncClient) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    invalid = await api.post("/v1/tasks", content=b'{"input": "hi",', headers=headers)
    assert invalid.status_code == 422
    assert invalid.json()["error"].startswith("request body is not valid JSON")

    too_long = await api.post("/v1/tasks", json={"input": "x" * 2001}, headers=AUTH)
    assert too_long.status_code == 422
    assert too_long.json() == {"error": "input is 2001 characters; the limit is 2000 (max_input_chars)"}

    oversize = await api.post("/v1/tasks", content=json.dumps({"input": "y" * 9000}).encode(), headers=headers)
    assert oversize.status_code == 413
    assert "larger than 8192 bytes (max_body_bytes)" in oversize.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    streamed = await api.post("/v1/tasks", content=chunks(), headers=headers)
    assert streamed.status_code == 413

    priority = await api.post("/v1/tasks", json={"input": "hi", "priority": "urgent"}, headers=AUTH)
    assert priority.status_code == 422
    assert priority.json()["error"] == "invalid request: priority: Input should be 'high', 'normal' or 'low'"

    unknown_field = await api.post("/v1/tasks", json={"input": "hi", "prio": "high"}, headers=AUTH)
    assert unknown_field.status_code == 422
    assert "prio: Extra inputs are not permitted" in unknown_field.json()["error"]

    empty = await api.post("/v1/tasks", json={"input": ""}, headers=AUTH)
    assert empty.status_code == 422 and "input:" in empty.json()["error"]

    missing = await api.get("/v1/tasks/does-not-exist", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": "no task 'does-not-exist' (unknown id, or its record expired)"}
    assert (await api.delete("/v1/tasks/does-not-exist", headers=AUTH)).status_code == 404


async def test_request_id_is_echoed(api: httpx.AsyncClient) -> None:
    response = await api.get("/health", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len((await api.get("/health")).headers["x-request-id"]) == 32


async def test_submission_survives_in_redis(api: httpx.AsyncClient, redis_client: object, config: object) -> None:
    """The record is what GET shows: written once, with the task's stream entry."""
    task = await submit(api, "hello", priority="high", metadata={"intent": "greeting"})
    queue: TaskQueue = api._transport.app.state.queue  # type: ignore[attr-defined]
    record = await queue.get(str(task["task_id"]))
    assert record.status == TaskStatus.QUEUED
    assert record.priority == "high" and record.metadata == {"intent": "greeting"}
    assert record.stream == "agent:{default/svc}:tasks:high"
    assert await queue.depth() == 1

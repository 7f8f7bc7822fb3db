"""The task API against a real redis-server and the local model server, through the real anthropic client.

Covers: submit → 202 with task id and status URL → a burst worker → succeeded with the answer and usage;
multi-step tool use (one calculator call per expression, then the answer); cancel of a queued task (never
runs) and of a finished one (409); idempotent resubmit (same task, one queue entry); bearer auth (401
on /v1 without or with a wrong token, probes open, checked before the body is parsed); a header that
is not UTF-8 (400); bad input with clear messages (invalid JSON, body
over the limit with and without content-length, input over max_input_chars, unknown priority, unknown
field, unknown task id); /health and /ready; the request id echoed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime.api import create_app
from agent_runtime.config import RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus
from tests.integration.runtime.conftest import AUTH, TOKEN, MakeWorker


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
    assert body["status_url"] == f"/v1/tasks/{body['task_id']}"  # relative: never built from the Host header
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
    response = await api.post(f"/v1/tasks/{task['task_id']}/cancel", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {"task_id": task["task_id"], "status": "cancelled"}
    again = await api.post(f"/v1/tasks/{task['task_id']}/cancel", headers=AUTH)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    parts = make_worker()
    assert await parts.queue.depth() == 0  # the entry went with the cancel
    await parts.worker.run()
    assert model_server.calls == []
    assert (await api.get(f"/v1/tasks/{task['task_id']}", headers=AUTH)).json()["status"] == "cancelled"


async def test_cancel_finished_task_is_a_conflict(api: httpx.AsyncClient, make_worker: MakeWorker) -> None:
    task = await submit(api, "Say hello.")
    await make_worker().worker.run()
    response = await api.post(f"/v1/tasks/{task['task_id']}/cancel", headers=AUTH)
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
    assert (await api.post("/v1/tasks/does-not-exist/cancel", headers=AUTH)).status_code == 404
    assert (await api.delete("/v1/tasks/does-not-exist", headers=AUTH)).status_code == 404


async def test_the_token_is_checked_before_the_body_is_read(api: httpx.AsyncClient) -> None:
    """Issue 27: bad JSON without a token is 401, not 422 (a 422 told a stranger how its JSON was wrong)."""
    for headers in ({}, {"authorization": "Bearer wrong"}):
        bad = await api.post(
            "/v1/tasks", content=b'{"input": "hi",', headers={**headers, "content-type": "application/json"}
        )
        assert bad.status_code == 401, bad.text
        invalid = await api.post("/v1/tasks", json={"input": "", "prio": 1}, headers=headers)
        assert invalid.status_code == 401, invalid.text


async def test_a_header_that_is_not_utf8_is_a_400(api: httpx.AsyncClient) -> None:
    """Issue 27: a non-UTF-8 `x-request-id` (or any header) is the client's fault, named, not a 500."""
    for name in ("x-request-id", "x-custom"):
        response = await api.get("/health", headers=[(name.encode(), b"\xff\xfe-id")])
        assert response.status_code == 400, response.text
        assert response.json() == {"error": f"header {name!r} is not UTF-8 text"}
        submitted = await api.post("/v1/tasks", json={"input": "hi"}, headers=[*AUTH.items(), (name, b"\xc3\x28")])
        assert submitted.status_code == 400, submitted.text
    # Control characters never reach the echoed id (nor the log lines that carry it).
    response = await api.get("/health", headers={"x-request-id": "ab\tc\x1b[31m"})
    assert response.headers["x-request-id"] == "abc[31m"


async def test_delete_is_the_deprecated_alias_of_cancel(api: httpx.AsyncClient) -> None:
    task = await submit(api, "What is 1+1?")
    response = await api.delete(f"/v1/tasks/{task['task_id']}", headers=AUTH)
    assert (response.status_code, response.json()) == (200, {"task_id": task["task_id"], "status": "cancelled"})
    # a cancel, not a deletion: the record stays readable
    assert (await api.get(f"/v1/tasks/{task['task_id']}", headers=AUTH)).json()["status"] == "cancelled"
    document = (await api.get("/openapi.json")).json()
    assert document["paths"]["/v1/tasks/{task_id}"]["delete"]["deprecated"] is True
    assert "deprecated" not in document["paths"]["/v1/tasks/{task_id}/cancel"]["post"]


async def test_405_lists_every_method_of_the_path(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/tasks/some-id", headers=AUTH)
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    cancel = await api.get("/v1/tasks/some-id/cancel", headers=AUTH)
    assert (cancel.status_code, cancel.headers["allow"]) == (405, "POST")


async def test_openapi_documents_every_answer(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/openapi.json")).json()["paths"]
    submit_codes = set(paths["/v1/tasks"]["post"]["responses"])
    assert submit_codes == {"200", "202", "400", "401", "409", "413", "422", "429", "503"}
    assert set(paths["/v1/tasks/{task_id}"]["get"]["responses"]) == {"200", "401", "404", "422", "503"}
    assert set(paths["/v1/tasks/{task_id}/cancel"]["post"]["responses"]) == {"200", "401", "404", "409", "422", "503"}
    assert paths["/v1/tasks"]["post"]["security"] == [{"bearer": []}]
    error = paths["/v1/tasks"]["post"]["responses"]["409"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


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


def nested(depth: int) -> dict[str, object]:
    """An object nesting `depth` levels deep (itself included)."""
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@contextlib.asynccontextmanager
async def api_with(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, **changes: object
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        config.model_copy(update=changes), redis=redis_client, registry=CollectorRegistry(), auth_token=TOKEN
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client


@pytest.mark.parametrize("depth", [33, 500, 950, 1200])
async def test_deep_metadata_is_refused_naming_the_bound(api: httpx.AsyncClient, depth: int) -> None:
    """Before the bound, depth 500-950 got 202 and then every GET of the task answered 500, forever."""
    body = '{"input":"hi","metadata":' + '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1) + "}"
    response = await api.post("/v1/tasks", content=body, headers={**AUTH, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    if depth <= 500:
        assert response.json() == {
            "error": f"invalid request: metadata: metadata nests {depth} levels deep; the limit is 32 levels "
            "(metadata depth)"
        }
    else:  # near or past the JSON parser's own recursion limit, where it may refuse before any field is read
        assert set(response.json()) == {"error"}
        assert "32 levels (metadata depth)" in response.json()["error"]


async def test_metadata_at_the_bounds_is_kept_and_readable(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis
) -> None:
    async with api_with(config, redis_client, max_body_bytes=1_000_000) as client:
        made = await submit(client, "hi", metadata=nested(32))
        view = await client.get(f"/v1/tasks/{made['task_id']}", headers=AUTH)
        assert view.status_code == 200 and view.json()["metadata"] == nested(32)

        big = {"blob": "x" * 65_600}
        refused = await client.post("/v1/tasks", json={"input": "hi", "metadata": big}, headers=AUTH)
        assert refused.status_code == 422
        assert "metadata is 65611 bytes as JSON; the limit is 65536 bytes (metadata size)" in refused.json()["error"]


async def test_a_stored_task_is_always_readable(api: httpx.AsyncClient, redis_client: redis.asyncio.Redis) -> None:
    """A record written before the bound (or by hand) with metadata too deep to serialise still answers 200."""
    made = await submit(api, "hi")
    queue: TaskQueue = api._transport.app.state.queue  # type: ignore[attr-defined]
    key = queue.task_key(str(made["task_id"]))
    for stored in (json.dumps(nested(600)), "{not json", "[1, 2]"):
        await redis_client.hset(key, "metadata", stored)  # type: ignore[misc]
        view = await api.get(f"/v1/tasks/{made['task_id']}", headers=AUTH)
        assert view.status_code == 200, view.text
        assert view.json()["status"] == "queued"
        assert "not shown" in view.json()["metadata"]["unreadable"]


async def test_every_error_body_is_an_error_object(api: httpx.AsyncClient) -> None:
    unknown_path = await api.get("/v2/nothing")
    assert unknown_path.status_code == 404 and unknown_path.json() == {"error": "Not Found"}
    wrong_method = await api.put("/v1/tasks/abc", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.json() == {"error": "Method Not Allowed"}
    assert "GET" in wrong_method.headers["allow"]
    missing_input = await api.post("/v1/tasks", json={}, headers=AUTH)
    assert missing_input.status_code == 422 and missing_input.json() == {
        "error": "invalid request: input: Field required"
    }
    not_an_object = await api.post("/v1/tasks", json={"input": "hi", "metadata": [1]}, headers=AUTH)
    assert not_an_object.status_code == 422 and set(not_an_object.json()) == {"error"}


async def test_location_never_reflects_the_host_header(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/tasks", json={"input": "hi"}, headers={**AUTH, "host": "evil.example"})
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert response.headers["location"] == response.json()["status_url"] == f"/v1/tasks/{task_id}"


async def test_idempotency_key_reused_for_another_request_is_a_conflict(api: httpx.AsyncClient) -> None:
    request = {"input": "What is 2+3?", "priority": "normal", "idempotency_key": "order-9"}
    first = await api.post("/v1/tasks", json=request, headers=AUTH)
    assert first.status_code == 202
    task_id = first.json()["task_id"]
    for changed in ({"input": "What is 2+4?"}, {"priority": "high"}):
        conflict = await api.post("/v1/tasks", json={**request, **changed}, headers=AUTH)
        assert conflict.status_code == 409, changed
        assert conflict.json() == {
            "error": f"idempotency_key 'order-9' was used for task {task_id} with a different input or priority; "
            "use a new key for a new task"
        }
    again = await api.post("/v1/tasks", json=request, headers=AUTH)  # the first request is the one kept
    assert again.status_code == 200 and again.json()["task_id"] == task_id and again.json()["duplicate"] is True
    queue: TaskQueue = api._transport.app.state.queue  # type: ignore[attr-defined]
    assert await queue.depth() == 1


async def test_queued_bytes_are_capped_per_service_and_freed_when_tasks_end(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, make_worker: MakeWorker
) -> None:
    """Issue 27, point 7: the bytes a service's tasks hold in a shared Redis until they end are
    capped; the submission that would pass the cap gets 429 and retry-after naming the figure, and
    the bytes of a task that ended (finished, cancelled) are given back, once."""
    async with api_with(config, redis_client, max_queued_input_bytes=6000) as client:
        queue: TaskQueue = client._transport.app.state.queue  # type: ignore[attr-defined]
        first = await submit(client, "What is 1+1? " + "x" * 1800)
        held = int(await redis_client.get(queue.queued_bytes))
        assert 1800 < held < 2400
        second = await submit(client, "What is 2+2? " + "y" * 1800)
        both = int(await redis_client.get(queue.queued_bytes))
        full = await client.post("/v1/tasks", json={"input": "What is 3+3? " + "z" * 1800}, headers=AUTH)
        assert full.status_code == 429, full.text
        assert full.headers["retry-after"] == "5"
        message = full.json()["error"]
        assert message.startswith(f"queue full: the tasks queued or running hold {both} bytes, this one ")
        assert message.endswith("the limit is 6000 (limits.maxQueuedInputBytes); retry later")
        assert await queue.depth() == 2

        cancelled = await client.delete(f"/v1/tasks/{second['task_id']}", headers=AUTH)
        assert cancelled.status_code == 200
        assert int(await redis_client.get(queue.queued_bytes)) == held
        await client.delete(f"/v1/tasks/{second['task_id']}", headers=AUTH)  # a second cancel gives back nothing
        assert int(await redis_client.get(queue.queued_bytes)) == held
        await make_worker().worker.run()  # the first task finishes
        assert (await queue.get(str(first["task_id"]))).status == TaskStatus.SUCCEEDED
        assert int(await redis_client.get(queue.queued_bytes)) == 0
        assert await redis_client.hlen(queue.queued_sizes) == 0
        assert (await client.post("/v1/tasks", json={"input": "What is 3+3?"}, headers=AUTH)).status_code == 202


def test_a_service_is_bounded_by_default() -> None:
    """Issue 27, point 7: without a setting, queued tasks and their bytes are capped (they were not)."""
    defaults = RuntimeConfig()
    assert defaults.max_queued_tasks == 10_000
    assert defaults.max_queued_input_bytes == 64 * 1024 * 1024


async def test_max_queued_tasks_refuses_with_the_figure(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, make_worker: MakeWorker
) -> None:
    async with api_with(config, redis_client, max_queued_tasks=2) as client:
        first = await submit(client, "What is 1+1?", idempotency_key="k1")
        await submit(client, "What is 2+2?")
        full = await client.post("/v1/tasks", json={"input": "What is 3+3?"}, headers=AUTH)
        assert full.status_code == 429
        assert full.json() == {
            "error": "queue full: 2 tasks queued or running, the limit is 2 (limits.maxQueuedTasks); retry later"
        }
        assert full.headers["retry-after"] == "5"
        # a retry of an accepted submission still gets its task, full queue or not
        retried = await client.post("/v1/tasks", json={"input": "What is 1+1?", "idempotency_key": "k1"}, headers=AUTH)
        assert retried.status_code == 200 and retried.json()["task_id"] == first["task_id"]
        await make_worker().worker.run()
        assert (await client.post("/v1/tasks", json={"input": "What is 3+3?"}, headers=AUTH)).status_code == 202

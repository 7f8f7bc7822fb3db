"""OpenTelemetry traces of the API and worker processes, received by a real OTLP/HTTP endpoint.

Covers, with `agent-runtime api` and `agent-runtime worker --burst` processes exporting through the
real SDK and OTLP/HTTP exporter to a local receiver (aiohttp, `POST /v1/traces`, protobuf decoded
with `opentelemetry-proto`), on a real redis-server and the local model server:
- span names and kinds: `POST /v1/tasks` and `GET /v1/tasks/{task_id}` (server, route template,
  method, status code, task id), `task.run` (consumer), `agent.step` per model call (provider,
  model, token usage, cost) and `agent.tool` per tool call (tool name);
- one trace per task: the client's `traceparent` is continued by the submit span, the worker's
  `task.run` is a child of the submit span (context stored with the task), steps and tools are
  children of `task.run`; the stored context never shows in the task's metadata;
- resource attributes: `service.name` per component, service, track;
- no attribute, event or resource value contains the task input or the bearer token;
- spans are flushed on exit: the batch delay is set far beyond the test, so only the shutdown
  flush of each process can deliver them;
- tracing off (in-process API): a client cannot plant a trace context in the task metadata.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from agent_runtime import constants, tracing
from agent_runtime.config import RuntimeConfig
from tests.integration.runtime.conftest import AUTH

TOKEN = "tok-9f3c1e7d-never-in-traces"
INPUT = "Confidential memo mauve-walrus-8821: what is 6*7?"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class ReceivedSpan:
    service: str
    resource: dict[str, Any]
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status_code: int
    texts: list[str] = field(default_factory=list)  # every string the span carries (attributes, events)


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


class Receiver:
    """An OTLP/HTTP trace endpoint: decodes every export request into `ReceivedSpan`s."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.requests += 1
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(self._decode(resource, span))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    @staticmethod
    def _decode(resource: dict[str, Any], span: trace_pb2.Span) -> ReceivedSpan:
        attributes = _attributes(span.attributes)
        texts = [str(v) for v in attributes.values()] + [str(v) for v in resource.values()]
        texts += [span.status.message]
        for event in span.events:
            texts += [event.name, *(str(v) for v in _attributes(event.attributes).values())]
        return ReceivedSpan(
            service=str(resource.get("service.name")),
            resource=resource,
            name=span.name,
            kind=span.kind,
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_id=span.parent_span_id.hex(),
            attributes=attributes,
            status_code=span.status.code,
            texts=texts,
        )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    await made.start()
    yield made
    await made.stop()


async def test_task_traced_across_api_and_worker(
    tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis, receiver: Receiver
) -> None:
    path = write_config(tmp_path, config.model_dump(mode="json"))
    env = {
        tracing.ENDPOINT_ENV: f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # no periodic export: only the shutdown flush can deliver
        constants.TRACK_ENV: "canary",
        constants.AUTH_TOKEN_ENV: TOKEN,
    }
    auth = {"authorization": f"Bearer {TOKEN}"}
    port = free_port()
    api = ForkedRuntime(
        ["api", "--host", "127.0.0.1", "--port", str(port)], config_path=path, redis_url=redis_server.url, env=env
    )
    worker = ForkedRuntime(
        ["worker", "--burst", "--metrics-port", "0"], config_path=path, redis_url=redis_server.url, env=env
    )
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            made = await client.post(
                "/v1/tasks",
                json={"input": INPUT, "metadata": {"intent": "math"}},
                headers={**auth, "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
            )
            assert made.status_code == 202, made.text
            task_id = made.json()["task_id"]
            await worker.start()
            assert await worker.wait(30) == 0, worker.logs()
            view = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
            assert (view["status"], view["result"]) == ("succeeded", "The answer: 6*7 = 42."), view
            assert view["metadata"] == {"intent": "math"}  # the stored trace context is not the client's
            # only the exited worker has exported (its shutdown flush); the API holds its spans until it exits
            assert {span.service for span in receiver.spans} == {"svc-worker"}
        api.signal(signal.SIGTERM)
        assert await api.wait(15) == 0, api.logs()
    finally:
        await api.kill()
        await worker.kill()

    spans = receiver.spans
    by_name: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == ["GET /v1/tasks/{task_id}", "POST /v1/tasks", "agent.step", "agent.tool", "task.run"]
    assert [len(by_name[name]) for name in ("POST /v1/tasks", "task.run", "agent.step", "agent.tool")] == [1, 1, 2, 1]

    # resources: one service.name per component, with the service and the track
    for span in spans:
        component = "api" if span.name.startswith(("POST", "GET")) else "worker"
        assert span.service == f"svc-{component}"
        assert span.resource["agent.service"] == "svc"
        assert span.resource["agent.track"] == "canary"
        assert span.resource["agent.component"] == component

    # the API's spans
    (submit,) = by_name["POST /v1/tasks"]
    (status,) = by_name["GET /v1/tasks/{task_id}"]
    assert submit.kind == status.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert submit.attributes == {
        "http.request.method": "POST",
        "url.path": "/v1/tasks",
        "http.route": "/v1/tasks",
        "http.response.status_code": 202,
        "task.id": task_id,
        "task.priority": "normal",
    }
    assert status.attributes["http.route"] == "/v1/tasks/{task_id}"
    assert status.attributes["task.id"] == task_id
    assert status.attributes["http.response.status_code"] == 200
    # the client's trace continues: submit is a child of the client's span
    assert (submit.trace_id, submit.parent_id) == (CLIENT_TRACE, CLIENT_SPAN)

    # the worker's spans: task.run is a child of the submit span, steps and tools of task.run
    (run,) = by_name["task.run"]
    assert run.kind == trace_pb2.Span.SPAN_KIND_CONSUMER
    assert (run.trace_id, run.parent_id) == (CLIENT_TRACE, submit.span_id)
    assert run.attributes == {
        "task.id": task_id,
        "task.priority": "normal",
        "task.delivery": 1,
        "task.status": "succeeded",
        "task.steps": 2,
    }
    steps = sorted(by_name["agent.step"], key=lambda s: s.attributes["agent.step"])
    (tool,) = by_name["agent.tool"]
    for span in [*steps, tool]:
        assert (span.trace_id, span.parent_id) == (CLIENT_TRACE, run.span_id)
    assert [s.attributes["gen_ai.response.finish_reasons"] for s in steps] == [["tool_use"], ["end_turn"]]
    for number, step in enumerate(steps, start=1):
        assert step.attributes["agent.step"] == number
        assert step.attributes["gen_ai.provider.name"] == "local"
        assert step.attributes["gen_ai.response.model"] == "claude-sonnet-5-5"
        assert step.attributes["gen_ai.usage.input_tokens"] > 0
        assert step.attributes["gen_ai.usage.output_tokens"] > 0
        assert step.attributes["agent.cost_usd"] > 0
        assert step.attributes["agent.cached"] is False
    total_in = sum(s.attributes["gen_ai.usage.input_tokens"] for s in steps)
    total_out = sum(s.attributes["gen_ai.usage.output_tokens"] for s in steps)
    assert (total_in, total_out) == (view["usage"]["input_tokens"], view["usage"]["output_tokens"])
    assert tool.attributes == {"gen_ai.tool.name": "calculator"}
    assert all(span.status_code != trace_pb2.Status.STATUS_CODE_ERROR for span in spans)

    # nothing secret or user-written in any attribute, event or resource value
    for span in spans:
        for text in span.texts:
            assert TOKEN not in text and "mauve-walrus" not in text and "6*7" not in text, (span.name, text)


async def test_client_cannot_plant_a_stored_trace_context(api: httpx.AsyncClient) -> None:
    assert not tracing.enabled()
    metadata = {tracing.CONTEXT_KEY: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "intent": "math"}
    made = await api.post("/v1/tasks", json={"input": "hello", "metadata": metadata}, headers=AUTH)
    assert made.status_code == 202, made.text
    view = (await api.get(made.json()["status_url"], headers=AUTH)).json()
    assert view["metadata"] == {"intent": "math"}

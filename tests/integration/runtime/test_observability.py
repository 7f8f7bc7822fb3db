"""Metrics, logs and traces of the runtime.

Covers: exact metric values on a fresh registry after real tasks (requests by status and bounded
intent, latency and steps histograms, cost, tool calls, active tasks, provider health, queue depth,
cancellations counted once by the API); the exposition on the API's and the worker's /metrics over
HTTP carries every series the alert rules, dashboards and canary analysis query (names from
`constants`), each sample labelled with service and track (here track=canary); the worker's /health
and /ready (503 once it is shutting down); JSON log lines bound to the task id and the request id;
tracing stays off without an OTLP endpoint and without the `otel` extra.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator

import httpx
import pytest
import structlog
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import free_port
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent_runtime import constants, tracing
from agent_runtime import logging as runtime_logging
from agent_runtime.config import RuntimeConfig, Track
from agent_runtime.worker import serve_probes
from tests.integration.runtime.conftest import AUTH, MakeWorker


@pytest.fixture
def canary(config: RuntimeConfig) -> RuntimeConfig:
    return config.model_copy(update={"track": Track.CANARY, "known_intents": ["billing"]})


async def test_exact_values_after_tasks(
    canary: RuntimeConfig, make_worker: MakeWorker, model_server: LocalModelServer, api: httpx.AsyncClient
) -> None:
    registry = CollectorRegistry()
    parts = make_worker(cfg=canary, registry=registry, concurrency=1)
    queue = parts.queue
    ok = await queue.submit("What is 2+2?", metadata={"intent": "billing"}, max_steps=6)
    await queue.submit("Say hi", metadata={"intent": "free text, unbounded"}, max_steps=6)
    model_server.faults.script = ["ok", "ok", "malformed"]  # the first task's two steps, then the second fails
    await parts.worker.run()
    await parts.worker.refresh_depth()

    labels = {"service": "svc", "track": "canary"}

    def value(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(name, {**labels, **extra})

    assert value("agent_requests_total", status="succeeded", intent="billing") == 1
    assert value("agent_requests_total", status="failed", intent="other") == 1
    assert value("agent_requests_total", status="succeeded", intent="default") == 0
    assert value("agent_steps_count_count") == 2
    assert value("agent_steps_count_sum") == 2  # two steps, then zero steps for the failed task
    assert value("agent_latency_seconds_count") == 2
    assert value("agent_tool_calls_total", tool_name="calculator", status="ok") == 1
    assert value("active_agents") == 0
    assert value("agent_queue_depth") == 0
    assert value("llm_provider_healthy", provider="local") == 1
    record = await queue.get(ok.task_id)
    assert value("agent_cost_usd_total") == pytest.approx(record.checkpoint.usage.cost_usd)
    assert record.checkpoint.usage.cost_usd > 0

    # the API counts a cancellation once, however often it is requested
    task_id = (await api.post("/v1/tasks", json={"input": "x"}, headers=AUTH)).json()["task_id"]
    await api.delete(f"/v1/tasks/{task_id}", headers=AUTH)
    await api.delete(f"/v1/tasks/{task_id}", headers=AUTH)
    families = {f.name: f for f in text_string_to_metric_families((await api.get("/metrics")).text)}
    cancelled = [s for s in families["agent_requests"].samples if s.labels.get("status") == "cancelled"]
    assert [(s.name, s.value) for s in cancelled] == [("agent_requests_total", 1.0)]


QUERIED_SERIES = (
    constants.SERIES_REQUESTS,
    constants.SERIES_LATENCY_BUCKET,
    constants.SERIES_COST,
    constants.SERIES_FALLBACKS,
    constants.METRIC_PROVIDER_HEALTHY,
    constants.METRIC_QUEUE_DEPTH,
    constants.METRIC_ACTIVE,
    constants.METRIC_TOOL_CALLS,
    "agent_steps_count_bucket",
)


async def test_worker_metrics_endpoint_serves_every_queried_series(
    canary: RuntimeConfig, make_worker: MakeWorker
) -> None:
    parts = make_worker(cfg=canary)
    await parts.queue.submit("What is 5*5?", max_steps=6)
    await parts.worker.run()
    parts.metrics.provider_fallback("local")  # no fallback happened; make the series exist to check its labels
    port = free_port()
    runner = await serve_probes(parts.queue, parts.metrics, parts.worker, host="127.0.0.1", port=port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            text = (await client.get(constants.METRICS_PATH)).text
            assert (await client.get(constants.HEALTH_PATH)).json()["status"] == "ok"
            assert (await client.get(constants.READY_PATH)).json() == {"ready": True}
            parts.worker.stop()
            stopping = await client.get(constants.READY_PATH)
            assert stopping.status_code == 503 and stopping.json() == {"ready": False, "reason": "shutting down"}
    finally:
        await runner.cleanup()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    names = {s.name for s in samples}
    assert set(QUERIED_SERIES) <= names, set(QUERIED_SERIES) - names
    ours = [s for s in samples if s.name.startswith(("agent_", "active_agents", "llm_"))]
    assert ours and all(s.labels.get("service") == "svc" and s.labels.get("track") == "canary" for s in ours)
    assert all("task_id" not in s.labels for s in ours)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    runtime_logging.configure("info", stream=stream)
    yield stream
    structlog.reset_defaults()


async def test_json_logs_bound_to_task_and_request(
    captured_logs: io.StringIO, make_worker: MakeWorker, api: httpx.AsyncClient
) -> None:
    response = await api.post("/v1/tasks", json={"input": "What is 9-4?"}, headers={**AUTH, "x-request-id": "req-42"})
    task_id = response.json()["task_id"]
    await make_worker().worker.run()
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    submitted = [line for line in lines if line["event"] == "task_submitted"]
    assert submitted == [
        {
            "event": "task_submitted",
            "level": "info",
            "module": "agent_runtime.api",
            "priority": "normal",
            "request_id": "req-42",
            "task_id": task_id,
            "timestamp": submitted[0]["timestamp"],
        }
    ]
    steps = [line for line in lines if line["event"] == "step_completed"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["task_id"] == task_id for s in steps)
    finished = [line for line in lines if line["event"] == "task_finished"]
    assert finished and finished[0]["task_id"] == task_id and finished[0]["status"] == "succeeded"


def test_tracing_is_off_without_endpoint_or_extra() -> None:
    assert tracing.configure("svc", environ={}) is False
    assert not tracing.enabled()
    with tracing.span("noop", step=1):
        pass
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        assert tracing.configure("svc", environ={tracing.ENDPOINT_ENV: "http://127.0.0.1:4318"}) is False
        assert not tracing.enabled()

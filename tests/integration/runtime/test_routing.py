"""Model routing (`routing.py`, `spec.model.routing`): three local model servers as three models, real redis-server.

Covers: the pure choice (budget fallback first, rules by complexity and intent, the default,
no routing at all), the classifier's label, the routed provider tried first with the strategy's
order after it; a mixed burst: tasks carrying `metadata.complexity` go to their rule's model,
those without one are labelled by one classifier call (charged to the task, in its calls, asked
once) and routed by the label — each server receiving exactly the calls routed to it — with the
route and model of every call in the checkpoint, the metrics by model and route, and the cost
report by model; below `budgetFallback.belowRemainingUSD` every call goes to the fallback; a
dead routed provider fails over to the others, the task succeeding on its route.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime import budget, routing
from agent_runtime.composition import build_worker
from agent_runtime.config import ProviderConfig, RouteRule, RoutingConfig, RuntimeConfig
from agent_runtime.metrics import Metrics
from agent_runtime.providers import build_providers
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskRecord, TaskStatus

CHEAP, MID, STRONG = "claude-haiku-4-5", "claude-sonnet-5-5", "claude-opus-4-6"
ROUTES = RoutingConfig(
    rules=[
        RouteRule(name="simple", complexity="simple", provider="cheap"),
        RouteRule(name="medium", complexity="medium", provider="mid"),
        RouteRule(name="complex", complexity="complex", provider="strong"),
        RouteRule(name="support", intent="support", provider="cheap"),
    ],
    default="mid",
    classifier="cheap",
    fallback_below_usd=1.0,
    fallback_provider="cheap",
)
ONE, TWO, THREE = "What is 6*7?", "Compute 1+2, then 3+4.", "Compute 1+2, then 3+4, then 5+6."


def test_the_choice() -> None:
    def choose(complexity: str | None, intent: object = None, remaining: float | None = None) -> routing.Route:
        return routing.choose(ROUTES, complexity=complexity, intent=intent, remaining_usd=remaining)

    assert choose("complex") == routing.Route("complex", "strong")
    assert choose("simple", remaining=5.0) == routing.Route("simple", "cheap")
    assert choose("complex", remaining=0.99) == routing.Route("fallback", "cheap")  # the seed's rule first
    assert choose(None, intent="support") == routing.Route("support", "cheap")
    assert choose(None, intent="sales") == routing.Route("default", "mid")
    assert routing.choose(None, complexity="complex", intent=None, remaining_usd=0) == routing.Route("default", None)
    no_default = ROUTES.model_copy(update={"default": None, "rules": []})
    assert routing.choose(no_default, complexity=None, intent=None, remaining_usd=None).provider is None


def test_labels() -> None:
    assert routing.label_of("Complex.") == "complex"
    assert routing.label_of("I would say simple") == "simple"
    assert routing.label_of("no idea") == "medium"
    assert routing.complexity_of({"complexity": "simple"}) == "simple"
    assert routing.complexity_of({"complexity": "SIMPLE"}) is None
    assert routing.complexity_of({"complexity": ["complex"]}) is None


@pytest.fixture
async def servers(model_server: LocalModelServer) -> AsyncIterator[dict[str, LocalModelServer]]:
    async with LocalModelServer() as mid, LocalModelServer() as strong:
        yield {"cheap": model_server, "mid": mid, "strong": strong}


def routed(config: RuntimeConfig, servers: dict[str, LocalModelServer], **update: object) -> RuntimeConfig:
    models = {"cheap": CHEAP, "mid": MID, "strong": STRONG}
    providers = [ProviderConfig(name=name, model=models[name], base_url=s.url) for name, s in servers.items()]
    return config.model_copy(update={"providers": providers, "routing": ROUTES, **update})


def test_the_routed_provider_goes_first_then_the_strategys_order(
    config: RuntimeConfig, servers: dict[str, LocalModelServer]
) -> None:
    cfg = routed(config, servers)
    providers = build_providers(cfg, metrics=Metrics(CollectorRegistry(), service="svc", track="stable"))
    assert [p.name for p in providers.order("strong")] == ["strong", "cheap", "mid"]
    assert [p.name for p in providers.order()] == ["cheap", "mid", "strong"]
    weighted = build_providers(
        cfg.model_copy(update={"strategy": "weighted"}),
        metrics=Metrics(CollectorRegistry(), service="svc", track="stable"),
    )
    assert {weighted.order("mid")[0].name for _ in range(20)} == {"mid"}
    assert {tuple(p.name for p in weighted.order("mid")[1:]) for _ in range(200)} == {
        ("cheap", "strong"), ("strong", "cheap"),
    }  # fmt: skip


async def run_tasks(
    cfg: RuntimeConfig, redis_client: redis.asyncio.Redis, tasks: list[tuple[str, dict[str, str]]]
) -> tuple[list[TaskRecord], CollectorRegistry]:
    queue = TaskQueue.from_config(cfg, redis_client)
    ids = [(await queue.submit(text, metadata=metadata, max_steps=8)).task_id for text, metadata in tasks]
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    return [await queue.get(task_id) for task_id in ids], registry


async def test_a_mixed_burst_goes_to_the_models_its_tasks_call_for(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, servers: dict[str, LocalModelServer]
) -> None:
    cfg = routed(config, servers)
    tasks = [
        (ONE, {"complexity": "simple"}),
        (THREE, {"complexity": "complex"}),
        (ONE, {"complexity": "medium"}),  # its own label wins over what the classifier would say
        (ONE, {}),  # labelled simple by the classifier
        (TWO, {}),  # medium
        (THREE, {}),  # complex
        (ONE, {"intent": "support", "complexity": "oops"}),  # not a complexity: labelled, then simple
    ]
    records, registry = await run_tasks(cfg, redis_client, tasks)
    assert [r.status for r in records] == [TaskStatus.SUCCEEDED] * len(tasks)
    assert records[1].result == "The answer: 1+2 = 3; 3+4 = 7; 5+6 = 11."

    def routes(record: TaskRecord) -> list[tuple[str, str]]:
        return [(call.route, call.model) for call in record.checkpoint.calls]

    assert routes(records[0]) == [("simple", CHEAP)] * 2
    assert routes(records[1]) == [("complex", STRONG)] * 4
    assert routes(records[2]) == [("medium", MID)] * 2
    assert routes(records[3]) == [("classifier", CHEAP)] + [("simple", CHEAP)] * 2
    assert routes(records[4]) == [("classifier", CHEAP)] + [("medium", MID)] * 3
    assert routes(records[5]) == [("classifier", CHEAP)] + [("complex", STRONG)] * 4
    assert routes(records[6]) == [("classifier", CHEAP)] + [("simple", CHEAP)] * 2
    assert [r.checkpoint.complexity for r in records] == [None, None, None, "simple", "medium", "complex", "simple"]
    for record in records:
        assert record.checkpoint.step == sum(c.route != "classifier" for c in record.checkpoint.calls)
        # the classifier's call is the task's: in its usage and its cost
        assert record.checkpoint.usage.input_tokens == sum(c.input_tokens for c in record.checkpoint.calls)
    # each server received exactly the calls routed to it (no failover happened)
    calls = [call for r in records for call in r.checkpoint.calls]
    for name, model in (("cheap", CHEAP), ("mid", MID), ("strong", STRONG)):
        assert len(servers[name].completed()) == sum(c.model == model for c in calls), name
    labels = {"service": "svc", "track": "stable"}
    assert registry.get_sample_value("agent_model_calls_total", {**labels, "model": CHEAP, "route": "classifier"}) == 4
    assert registry.get_sample_value("agent_model_calls_total", {**labels, "model": STRONG, "route": "complex"}) == 8


async def test_below_the_fallback_threshold_every_call_goes_to_the_cheap_model(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, servers: dict[str, LocalModelServer]
) -> None:
    cfg = routed(config, servers, daily_budget_usd=1.5)
    # $0.60 of $1.50 spent: $0.90 left, under the $1.00 threshold
    await redis_client.set(cfg.keys().budget_spent(budget.day_of(time.time())), 600_000)
    records, _ = await run_tasks(cfg, redis_client, [(THREE, {"complexity": "complex"}), (TWO, {})])
    assert [r.status for r in records] == [TaskStatus.SUCCEEDED] * 2
    assert {(c.route, c.model) for r in records for c in r.checkpoint.calls} == {
        ("fallback", CHEAP),
        ("classifier", CHEAP),
    }
    assert not servers["mid"].completed() and not servers["strong"].completed()


async def test_a_dead_routed_provider_fails_over_to_the_others(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, servers: dict[str, LocalModelServer]
) -> None:
    cfg = routed(config, servers)
    servers["strong"].faults.error_ratio = 1.0  # every request answered 500
    records, registry = await run_tasks(cfg, redis_client, [(THREE, {"complexity": "complex"})])
    (record,) = records
    assert record.status == TaskStatus.SUCCEEDED
    assert {c.route for c in record.checkpoint.calls} == {"complex"}
    assert {c.model for c in record.checkpoint.calls} == {CHEAP}  # the next in the failover order
    assert servers["strong"].calls and not servers["strong"].completed()
    fallbacks = registry.get_sample_value(
        "agent_provider_fallbacks_total", {"service": "svc", "track": "stable", "provider": "cheap"}
    )
    assert fallbacks is not None and fallbacks >= 1

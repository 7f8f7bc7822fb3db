"""The providers' connection pools, as the local model server sees them (real HTTP, real connections).

Each provider has one client, hence one pool, shared by every call of the process, and the pool
holds as many connections as the worker runs tasks (`build_providers(concurrency=…)`):
- anthropic: two waves of `concurrency` calls at once go over exactly `concurrency` connections
  (with the SDK's default pool, which keeps 100 idle connections, the second wave opened new ones);
- openai-compatible (httpx): `concurrency` calls are in flight at once (httpx's default pool allows
  100). httpcore's pool does not reuse them all on the next burst (it churns idle connections when
  many requests arrive together), so only the pool's size is asserted there.
"""

from __future__ import annotations

import asyncio

from agentops_dev.localmodel import LocalModelServer
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.metrics import Metrics
from agent_runtime.providers import ProviderSet, build_providers

CONCURRENCY = 110  # above both default keep-alive limits and httpx's default pool size


async def wave(providers: ProviderSet, server: LocalModelServer, first: int) -> None:
    """`CONCURRENCY` calls in flight at once (the server holds them until all are in), then answered."""
    server.faults.hold = True
    calls = [
        asyncio.create_task(
            providers.complete(
                system="Be brief.",
                messages=[{"role": "user", "content": f"Say hello to number {i}."}],
                tools=[],
                max_tokens=64,
                task_id=f"task-{i}",
            )
        )
        for i in range(first, first + CONCURRENCY)
    ]
    await eventually(lambda: len(server.inflight()) == CONCURRENCY, timeout=30)
    server.faults.hold = False
    await asyncio.gather(*calls)


def providers_of(config: RuntimeConfig, kind: str, url: str) -> ProviderSet:
    cfg = config.model_copy(update={"providers": [ProviderConfig(name="local", kind=kind, model="m", base_url=url)]})
    metrics = Metrics(CollectorRegistry(), service="svc", track="stable")
    return build_providers(cfg, metrics=metrics, concurrency=CONCURRENCY)


async def test_anthropic_calls_reuse_the_providers_pooled_connections(
    config: RuntimeConfig, model_server: LocalModelServer
) -> None:
    providers = providers_of(config, "anthropic", model_server.url)
    try:
        await wave(providers, model_server, 0)
        await wave(providers, model_server, CONCURRENCY)
    finally:
        await providers.aclose()

    assert [call.outcome for call in model_server.calls] == ["ok"] * 2 * CONCURRENCY
    connections = {call.connection for call in model_server.calls}
    assert "" not in connections
    assert len(connections) == CONCURRENCY  # the first wave opened them all, the second reused every one


async def test_openai_compatible_pool_holds_the_workers_concurrency(
    config: RuntimeConfig, model_server: LocalModelServer
) -> None:
    providers = providers_of(config, "openai-compatible", model_server.url + "/v1")
    try:
        await wave(providers, model_server, 0)  # all CONCURRENCY calls at the server at once
    finally:
        await providers.aclose()

    assert [call.outcome for call in model_server.calls] == ["ok"] * CONCURRENCY
    assert len({call.connection for call in model_server.calls}) == CONCURRENCY

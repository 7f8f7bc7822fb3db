"""Fixtures of the end-to-end tests: Redis, a discovering Prometheus, and a `Stack` per test.

The stack itself (`agentops_dev.stack`) is the dev cluster with the real operator (analysing against
Prometheus, 1 s scrapes and 1 s budget refreshes) and a kubelet running its Deployments as runtime
processes; `agentctl demo` runs on the same. Model servers belong to each test (each track its own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentops_dev import waiting
from agentops_dev.localprometheus import DiscoveringPrometheus, serving
from agentops_dev.localredis import LocalRedis
from agentops_dev.stack import Stack, running_stack

from tests.support.redis_server import running_redis


async def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """`agentops_dev.waiting.eventually` with the longer default a whole stack needs."""
    return await waiting.eventually(check, timeout, interval)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    with running_redis(tmp_path_factory.mktemp("redis"), durable=False) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiscoveringPrometheus]:
    with serving(DiscoveringPrometheus(tmp_path_factory.mktemp("prometheus"))) as server:
        yield server


@pytest.fixture
async def stack(tmp_path: Path, redis_server: LocalRedis, prometheus: DiscoveringPrometheus) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, redis_server.url, prometheus) as running:
        yield running

"""The I/O edge of `status.budget` (`budgetreport.BudgetReporter`) against a silent Prometheus.

A loopback server accepts connections and never answers (a blackholed Prometheus); the reporter
writes to the dev cluster over HTTP with the operator's own client.
Covers:
- a Prometheus that times out costs one attempt, not one per service: the next service's refresh
  shares the error without connecting, and both statuses say why;
- a restarted operator (a fresh reporter) that finds the same status on the body writes nothing.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from agent_operator import budgetreport, opmetrics
from agent_operator.canary.prometheus import Prometheus
from agent_operator.kube import client as kube_client
from agentops_dev import devcluster

from tests.integration.operator.conftest import AGSVC, agent_service

MODEL = {"providers": [{"name": "primary", "model": "claude-sonnet-4-5", "baseURL": "http://127.0.0.1:9/"}]}


class Silent:
    """Accepts TCP connections, reads nothing and answers nothing; counts the connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self._held: list[asyncio.StreamWriter] = []

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._held.append(writer)

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *_: object) -> None:
        for writer in self._held:
            writer.close()
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def client(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[kube_client.Client]:
    _, url = cluster

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    connected = kube_client.Client(login, opmetrics.create())
    try:
        yield connected
    finally:
        await connected.close()


async def create(emulator: devcluster.DevCluster, name: str) -> dict[str, Any]:
    return copy.deepcopy(await emulator.put_object(AGSVC, agent_service(name, model=MODEL, budget={"dailyUSD": 5.0})))


def message(emulator: devcluster.DevCluster, name: str) -> str:
    live = emulator.live(AGSVC, "default", name) or {}
    return str(((live.get("status") or {}).get("budget") or {}).get("message", ""))


async def test_a_silent_prometheus_costs_one_attempt_and_a_restart_writes_nothing(
    cluster: tuple[devcluster.DevCluster, str], client: kube_client.Client
) -> None:
    emulator, _ = cluster
    first, second = await create(emulator, "first"), await create(emulator, "second")
    silent = Silent()
    async with silent as url:
        prometheus = Prometheus(url, timeout_seconds=1, retries=0)
        try:
            reporter = budgetreport.BudgetReporter(client, opmetrics.create(), prometheus=prometheus)
            assert await reporter.refresh("first", first)
            assert await reporter.refresh("second", second)
            assert silent.accepted == 1  # the second service did not wait for a timeout of its own
            for name in ("first", "second"):
                assert message(emulator, name).startswith(
                    f"Prometheus could not give today's spend: Prometheus at {url} is unreachable"
                ), message(emulator, name)

            restarted = budgetreport.BudgetReporter(client, opmetrics.create(), prometheus=prometheus)
            mark = emulator.request_count
            body = copy.deepcopy(emulator.live(AGSVC, "default", "first"))
            assert body is not None
            assert not await restarted.refresh("first", body)
            assert emulator.writes(mark) == []
            assert silent.accepted == 2  # the restarted operator asked once, found the same, wrote nothing
        finally:
            prometheus.close()

"""A stale body reconciled after our own status write must not rewrite the status (regression).

Covers: the resync pass or a late watch event hands the reconciler a body older than its own last
status write; fresh timestamps must not be mistaken for a change (that rewrote every status once
per service in the 1,000-service bench, with wrong lastTransitionTimes).
"""

from __future__ import annotations

import copy

import kopf
from agent_operator import opmetrics, reconcile
from agent_operator.kube import client as kube_client
from agentops_dev import devcluster

from tests.integration.operator.conftest import AGSVC, agent_service


async def test_stale_body_after_own_status_write_writes_nothing(cluster: tuple[devcluster.DevCluster, str]) -> None:
    emulator, url = cluster
    times = iter(["2026-01-01T00:00:00Z", "2026-01-01T00:00:07Z"])
    metrics = opmetrics.create()

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    client = kube_client.Client(login, metrics)
    reconciler = reconcile.Reconciler(client, metrics, clock=lambda: next(times))
    try:
        body = copy.deepcopy(await emulator.put_object(AGSVC, agent_service()))  # a snapshot: version V1, no status
        first = await reconciler.reconcile(body)
        assert first.status_written
        mark = emulator.request_count
        again = await reconciler.reconcile(body)  # the same (stale) body, seven seconds later
        assert not again.status_written, emulator.writes(mark)
        assert emulator.writes(mark) == []
    finally:
        await client.close()

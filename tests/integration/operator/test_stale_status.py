"""A stale body reconciled after our own writes must not rewrite the status nor act again (regression).

Covers: the resync pass or a late watch event hands the reconciler a body older than its own last
status write; fresh timestamps must not be mistaken for a change (that rewrote every status once
per service in the 1,000-service bench, with wrong lastTransitionTimes). A body still carrying a
one-shot gate (abort) that the reconciler already acted on and removed does not act again (the
repair loop, which runs right after a rollback deleted the canary Deployments, recorded a second
rollback).
"""

from __future__ import annotations

import copy

from agent_operator import opmetrics, reconcile
from agentops_dev import devcluster

from tests.integration.operator.conftest import AGSVC, agent_service, direct_client
from tests.integration.operator.test_canary_rollout import NEW_IMAGE, OLD_IMAGE, canary_service


async def test_stale_body_after_own_status_write_writes_nothing(cluster: tuple[devcluster.DevCluster, str]) -> None:
    emulator, url = cluster
    times = iter(["2026-01-01T00:00:00Z", "2026-01-01T00:00:07Z"])
    metrics = opmetrics.create()

    async with direct_client(url, metrics) as client:
        reconciler = reconcile.Reconciler(client, metrics, clock=lambda: next(times))
        body = copy.deepcopy(await emulator.put_object(AGSVC, agent_service()))  # a snapshot: version V1, no status
        first = await reconciler.reconcile(body)
        assert first.status_written
        mark = emulator.request_count
        again = await reconciler.reconcile(body)  # the same (stale) body, seven seconds later
        assert not again.status_written, emulator.writes(mark)
        assert emulator.writes(mark) == []


async def test_stale_body_with_a_gate_already_acted_on_does_not_act_again(
    cluster: tuple[devcluster.DevCluster, str],
) -> None:
    """The abort gate is acted on and removed; the same body, handed over again before the removal's
    watch event (the repair loop runs right after), must not roll the rollout back a second time."""
    emulator, url = cluster
    metrics = opmetrics.create()

    def rollouts() -> list[tuple[str, str]]:
        canary = ((emulator.live(AGSVC, "default", "demo") or {}).get("status") or {}).get("canary") or {}
        return [(r["outcome"], r["reason"]) for r in canary.get("rollouts") or []]

    async with direct_client(url, metrics) as client:
        reconciler = reconcile.Reconciler(client, metrics)
        body = canary_service()
        body["spec"]["image"] = OLD_IMAGE
        await reconciler.reconcile(await emulator.put_object(AGSVC, body))
        await emulator.simulate_rollouts("default")
        await reconciler.reconcile(copy.deepcopy(emulator.live(AGSVC, "default", "demo")))
        body["spec"]["image"] = NEW_IMAGE
        await emulator.put_object(AGSVC, body)
        await reconciler.reconcile(copy.deepcopy(emulator.live(AGSVC, "default", "demo")))  # the rollout starts
        live = copy.deepcopy(emulator.live(AGSVC, "default", "demo"))
        assert live is not None and live["status"]["canary"]["phase"] == "Progressing"
        live["metadata"].setdefault("annotations", {})["agentops.dev/abort"] = "true"
        stale = copy.deepcopy(await emulator.put_object(AGSVC, live))

        await reconciler.reconcile(stale)  # rolls back, removes the gate
        assert rollouts() == [("RolledBack", "Aborted")]
        assert "agentops.dev/abort" not in (emulator.live(AGSVC, "default", "demo") or {})["metadata"]["annotations"]
        mark = emulator.request_count
        await reconciler.reconcile(stale)  # the same body again, gate and all
        assert rollouts() == [("RolledBack", "Aborted")]
        assert emulator.writes(mark) == []


async def test_a_body_older_than_the_last_two_writes_writes_nothing(cluster: tuple[devcluster.DevCluster, str]) -> None:
    """A loop took a body, then waited for the object's lock while a handler wrote the status twice.

    The body predates both writes (not only the last one): it must not rewrite the status nor post
    the Ready Event again (the loaded suite saw a second Ready Event from the repair loop).
    """
    emulator, url = cluster
    metrics = opmetrics.create()

    async with direct_client(url, metrics) as client:
        reconciler = reconcile.Reconciler(client, metrics)
        oldest = copy.deepcopy(await emulator.put_object(AGSVC, agent_service()))  # V1, no status
        assert (await reconciler.reconcile(oldest)).status_written  # Progressing: the pods are not ready
        await emulator.simulate_rollouts("default")
        newer = copy.deepcopy(emulator.live(AGSVC, "default", "demo"))
        assert (await reconciler.reconcile(newer)).status_written  # Ready
        mark = emulator.request_count
        again = await reconciler.reconcile(oldest)
        assert not again.status_written, emulator.writes(mark)
        assert emulator.writes(mark) == []


async def test_a_body_of_another_writers_version_older_than_our_write_writes_nothing(
    cluster: tuple[devcluster.DevCluster, str],
) -> None:
    """The budget report wrote `status.budget` (a version of its own) just before the reconcile's
    status write; a loop that took that body must not rewrite the status nor post the Ready Event
    again. No version of ours says that body is older (versions are opaque): what we wrote last does.
    The loaded suite saw this twice (test_budget_status: a second status write and Ready Event).
    """
    emulator, url = cluster
    metrics = opmetrics.create()

    async with direct_client(url, metrics) as client:
        reconciler = reconcile.Reconciler(client, metrics)
        await emulator.put_object(AGSVC, agent_service())
        await emulator.simulate_rollouts("default")  # no-op until the Deployments exist
        created = copy.deepcopy(emulator.live(AGSVC, "default", "demo"))
        assert created is not None
        await client.patch_status(created, {"budget": {"dailyUSD": 5.0, "message": "no Prometheus"}})
        other = copy.deepcopy(emulator.live(AGSVC, "default", "demo"))  # the budget report's version
        assert other is not None and other["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
        assert (await reconciler.reconcile(created)).status_written
        mark = emulator.request_count
        again = await reconciler.reconcile(other)
        assert not again.status_written, emulator.writes(mark)
        assert emulator.writes(mark) == []

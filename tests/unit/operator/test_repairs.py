"""The repair loop of `Reconciler` (what the child watches poke), with the reconcile itself recorded.

Covers: pokes of one object in a burst make one reconcile; a poke of an object the reconciler does
not know (not observed yet, or deleted) is ignored; a poke that arrives while the object is being
repaired makes one more reconcile after it, never two at once; two repairs of one object are at
least `spacing` apart; a resync pass starts no reconcile while a repair is due or running, but a
repair waiting out its spacing does not hold it; the budget loop looks only at services with a
daily budget or a status.budget to clear. `reconcile` is replaced by a recorder (these are
the loop's rules, not the reconcile's); each wait is for the recorded call it asserts on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf
import pytest
from agent_operator import budgetreport, opmetrics, reconcile
from agent_operator.api import models
from agent_operator.kube.client import Client
from agentops_dev.waiting import eventually


class Recording(reconcile.Reconciler):
    def __init__(self) -> None:
        async def login() -> kopf.ConnectionInfo:
            raise AssertionError("no request is made")

        metrics = opmetrics.create()
        super().__init__(Client(login, metrics), metrics)
        self.calls: list[tuple[str, float]] = []
        self.running: set[str] = set()
        self.overlapped = False
        self.hold = asyncio.Event()
        self.hold.set()

    async def reconcile(self, body: Mapping[str, Any]) -> reconcile.Outcome:
        uid = body["metadata"]["uid"]
        self.overlapped |= uid in self.running
        self.running.add(uid)
        self.calls.append((uid, asyncio.get_running_loop().time()))
        await self.hold.wait()
        self.running.discard(uid)
        return reconcile.Outcome(models.Phase.READY)

    def known(self, *uids: str) -> None:
        for uid in uids:
            self.observe({"metadata": {"uid": uid, "name": uid}})

    def uids(self) -> list[str]:
        return [uid for uid, _ in self.calls]


@contextlib.asynccontextmanager
async def repairing(recorder: Recording, **options: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(recorder.repair_forever(debounce=0.05, **options))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def recorder() -> Recording:
    return Recording()


async def test_a_burst_is_one_reconcile_and_unknown_objects_are_ignored(recorder: Recording) -> None:
    recorder.known("a", "b", "c")
    async with repairing(recorder, spacing=0.0):
        for _ in range(5):
            recorder.poke("a")
        recorder.poke("b")
        recorder.poke("stranger")
        await eventually(lambda: len(recorder.calls) >= 2)
        recorder.poke("c")
        await eventually(lambda: "c" in recorder.uids())
    assert sorted(recorder.uids()[:2]) == ["a", "b"]
    assert recorder.uids().count("a") == 1 and "stranger" not in recorder.uids()


async def test_a_poke_during_a_repair_runs_once_more_after_it(recorder: Recording) -> None:
    recorder.known("a")
    recorder.hold.clear()
    async with repairing(recorder, spacing=0.0):
        recorder.poke("a")
        await eventually(lambda: recorder.uids() == ["a"])  # under way, held
        recorder.poke("a")
        recorder.poke("a")
        recorder.hold.set()
        await eventually(lambda: recorder.uids() == ["a", "a"])
        recorder.known("b")
        recorder.poke("b")
        await eventually(lambda: "b" in recorder.uids())
    assert recorder.uids() == ["a", "a", "b"]
    assert not recorder.overlapped


async def test_repairs_of_one_object_are_spaced(recorder: Recording) -> None:
    recorder.known("a")
    async with repairing(recorder, spacing=0.5):
        recorder.poke("a")
        await eventually(lambda: len(recorder.calls) == 1)
        recorder.poke("a")
        await eventually(lambda: len(recorder.calls) == 2)
    (_, first), (_, second) = recorder.calls
    assert second - first >= 0.5


async def test_a_forgotten_object_is_not_repaired(recorder: Recording) -> None:
    recorder.known("a", "b")
    async with repairing(recorder, spacing=0.0):
        recorder.poke("a")
        recorder.forget("a")  # deleted before the burst was taken
        recorder.poke("b")
        await eventually(lambda: "b" in recorder.uids())
    assert recorder.uids() == ["b"]


class Held(Recording):
    """Records starts and ends; the reconcile of a uid in `held` waits until it is released."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.held: dict[str, asyncio.Event] = {}

    async def reconcile(self, body: Mapping[str, Any]) -> reconcile.Outcome:
        uid = body["metadata"]["uid"]
        self.events.append(("start", uid))
        if uid in self.held:
            await self.held[uid].wait()
        self.events.append(("end", uid))
        return reconcile.Outcome(models.Phase.READY)


async def test_a_resync_pass_lets_a_repair_go_first() -> None:
    """A pass under way starts no further reconcile while a repair is due or running."""
    recorder = Held()
    recorder.known("p0", "p1", "p2", "x")
    recorder.held = {"p0": asyncio.Event(), "x": asyncio.Event()}
    resync = asyncio.create_task(recorder.resync_forever(0.01, concurrency=1))
    try:
        async with repairing(recorder, spacing=0.0):
            await eventually(lambda: ("start", "p0") in recorder.events)  # the pass is under way, held
            recorder.poke("x")
            await eventually(lambda: ("start", "x") in recorder.events)  # the repair, held
            recorder.held["p0"].set()
            await eventually(lambda: ("end", "p0") in recorder.events)
            for _ in range(20):  # loop turns, not time: a pass that did not defer starts p1 within a few
                await asyncio.sleep(0)
            assert ("start", "p1") not in recorder.events
            recorder.held["x"].set()
            await eventually(lambda: ("end", "p2") in recorder.events)
    finally:
        resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resync
    assert recorder.events.index(("end", "x")) < recorder.events.index(("start", "p1"))


async def test_a_repair_waiting_out_its_spacing_does_not_hold_a_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child fought over (a repair every `spacing`) must not stall the safety net."""
    monkeypatch.setattr(reconcile, "RESYNC_DEFERENCE", 3600.0)  # only the repair's state may let the pass go
    recorder = Held()
    recorder.known("p0", "p1", "x")
    recorder.held = {"p0": asyncio.Event()}
    resync = asyncio.create_task(recorder.resync_forever(0.01, concurrency=1))
    try:
        async with repairing(recorder, spacing=30.0):
            recorder.poke("x")
            await eventually(lambda: ("end", "x") in recorder.events)
            recorder.poke("x")  # due again only in 30 s
            await eventually(lambda: ("start", "p0") in recorder.events)
            recorder.held["p0"].set()
            await eventually(lambda: ("end", "p1") in recorder.events)
    finally:
        resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await resync


class Budgets(budgetreport.BudgetReporter):
    """Records the services refreshed; never measures nor writes."""

    def __init__(self, client: Client, metrics: opmetrics.Metrics) -> None:
        super().__init__(client, metrics, prometheus=None)
        self.refreshed: list[str] = []

    async def refresh(self, uid: str, body: Mapping[str, Any]) -> bool:
        self.refreshed.append(uid)
        return False


async def test_the_budget_loop_looks_only_at_services_with_a_budget() -> None:
    """A daily budget, or a `status.budget` left to clear, is refreshed; a service with neither is not looked at."""

    async def login() -> kopf.ConnectionInfo:
        raise AssertionError("no request is made")

    metrics = opmetrics.create()
    budgets = Budgets(Client(login, metrics), metrics)
    reconciler = reconcile.Reconciler(Client(login, metrics), metrics, budgets=budgets)
    reconciler.observe({"metadata": {"uid": "plain", "name": "plain"}, "spec": {}})
    reconciler.observe({"metadata": {"uid": "daily", "name": "daily"}, "spec": {"budget": {"dailyUSD": 5}}})
    left = {"metadata": {"uid": "left", "name": "left"}, "spec": {}, "status": {"budget": {"dailyUSD": 5}}}
    reconciler.observe(left)
    loop = asyncio.create_task(reconciler.budgets_forever(0.01))
    try:
        await eventually(lambda: {"daily", "left"} <= set(budgets.refreshed))  # one tick refreshes all that are due
        assert "plain" not in budgets.refreshed
        reconciler.observe({**left, "status": {}})  # cleared: no longer looked at
        reconciler.observe({"metadata": {"uid": "plain", "name": "plain"}, "spec": {"budget": {"dailyUSD": 1}}})
        await eventually(lambda: "plain" in budgets.refreshed)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_the_backlog_gauge_counts_a_repair_from_its_poke_until_its_reconcile_is_done(recorder: Recording) -> None:
    def backlog() -> float | None:
        return recorder._metrics.registry.get_sample_value("agentservice_operator_repairs_pending")

    recorder.known("a", "b")
    recorder.hold.clear()
    async with repairing(recorder, spacing=0.0):
        recorder.poke("a")
        recorder.poke("b")
        assert backlog() == 2  # asked for, not taken yet
        await eventually(lambda: len(recorder.running) == 2)
        assert backlog() == 2  # being reconciled
        recorder.poke("a")  # again, while it runs: one more after it
        recorder.hold.set()
        await eventually(lambda: len(recorder.calls) == 3 and not recorder.running)
        await eventually(lambda: backlog() == 0)
    recorder.poke("b")
    recorder.forget("b")  # deleted before its repair ran
    assert backlog() == 0

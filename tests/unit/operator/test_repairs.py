"""The repair loop of `Reconciler` (what the child watches poke), with the reconcile itself recorded.

Covers: pokes of one object in a burst make one reconcile; a poke of an object the reconciler does
not know (not observed yet, or deleted) is ignored; a poke that arrives while the object is being
repaired makes one more reconcile after it, never two at once; two repairs of one object are at
least `spacing` apart. `reconcile` is replaced by a recorder (these are the loop's rules, not the
reconcile's); each wait is for the recorded call it asserts on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kopf
import pytest
from agent_operator import opmetrics, reconcile
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

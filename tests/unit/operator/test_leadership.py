"""High availability: the operator's own loops follow kopf's pause (`leadership`).

Covers: the loops start while the replica is active, are cancelled when kopf pauses it (a peer with
a higher priority, or the same one) and start again when kopf resumes it, and the replica's memory
of the objects is dropped on the way to standby; a loop that fails leaves the others running;
`kopf_paused` finds the pause state inside a real kopf operator's tasks, and the peering toggle
`kopf_peering_started` waits for is the one kopf's orchestrator creates, paused (these fail when a
kopf release moves them: leadership.py reads kopf internals); at equal priorities kopf pauses every
replica, which is why default priorities differ; the default priority falls with the start time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable

import kopf
import pytest
from agent_operator import leadership
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.structs import references
from kopf._core.engines import peering
from kopf._core.reactor import orchestration

TIMEOUT = 10.0


class Recorder:
    """Loops that record their starts and cancellations."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.starts: list[str] = []
        self.changed = asyncio.Event()

    def loop(self, name: str, *, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            self.running.add(name)
            self.starts.append(name)
            self.changed.set()
            try:
                if fail:
                    raise RuntimeError("boom")
                await asyncio.Event().wait()
            finally:
                self.running.discard(name)
                self.changed.set()

        return run

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not check():
                self.changed.clear()
                await self.changed.wait()


async def test_loops_run_only_while_active() -> None:
    paused = aiotoggles.ToggleSet(any)
    peer = await paused.make_toggle(True, name="peering")  # as kopf starts with mandatory peering
    recorder = Recorder()
    standby_calls: list[None] = []
    supervisor = asyncio.create_task(
        leadership.run_while_active(
            paused,
            {"resync": recorder.loop("resync"), "repair": recorder.loop("repair")},
            on_standby=lambda: standby_calls.append(None),
        )
    )
    try:
        await asyncio.sleep(0.05)  # a paused replica starts nothing (nothing to wait for: it must not happen)
        assert recorder.starts == []

        await peer.turn_to(False)  # kopf resumes: this replica is the active one
        await recorder.until(lambda: recorder.running == {"resync", "repair"})

        await peer.turn_to(True)  # a live peer with a higher priority: kopf pauses this replica
        await recorder.until(lambda: not recorder.running)
        async with asyncio.timeout(TIMEOUT):
            while not standby_calls:
                await asyncio.sleep(0.01)

        await peer.turn_to(False)  # that peer died: active again, the loops start afresh
        await recorder.until(lambda: recorder.running == {"resync", "repair"})
        assert sorted(recorder.starts) == ["repair", "repair", "resync", "resync"]
        assert len(standby_calls) == 1
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
    assert not recorder.running


async def test_a_failed_loop_leaves_the_others_running() -> None:
    recorder = Recorder()
    supervisor = asyncio.create_task(
        leadership.run_while_active(
            leadership.AlwaysActive(), {"ok": recorder.loop("ok"), "bad": recorder.loop("bad", fail=True)}
        )
    )
    try:
        await recorder.until(lambda: "bad" in recorder.starts and "bad" not in recorder.running)
        assert recorder.running == {"ok"}
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor


async def test_kopf_paused_is_the_state_of_a_real_kopf_operator() -> None:
    """The kopf internal `leadership.kopf_paused` reads: present, a ToggleSet, and off when standalone."""
    with pytest.raises(LookupError):
        leadership.kopf_paused()  # no operator in this loop
    stop = asyncio.Event()
    tasks = await kopf.spawn_tasks(registry=kopf.OperatorRegistry(), standalone=True, clusterwide=True, stop_flag=stop)
    try:
        paused = leadership.kopf_paused()
        assert isinstance(paused, aiotoggles.ToggleSet)
        assert paused.is_off()
        toggle = await paused.make_toggle(True, name="test")
        assert leadership.kopf_paused().is_on()
        await paused.drop_toggle(toggle)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("namespaces", [[None], ["team-a", "team-b"]], ids=["cluster-wide", "namespaced"])
async def test_kopf_peering_started_sees_kopfs_own_peering_toggle(namespaces: list[str | None]) -> None:
    """kopf's orchestrator, as it begins the peering, creates the toggle `kopf_peering_started` waits for:
    named after the peering object, and on (paused) until the peering object is read."""
    settings = kopf.OperatorSettings()
    settings.peering.name = "ha"
    settings.peering.mandatory = True
    paused = aiotoggles.ToggleSet(any)
    ensemble = orchestration.Ensemble(
        operator_indexed=aiotoggles.ToggleSet(all),
        operator_paused=paused,
        peering_missing=await paused.make_toggle(name="peering CRD is missing"),
    )
    waiting = asyncio.create_task(leadership.kopf_peering_started(paused, "ha", poll=0.01))
    resource = references.Resource(
        group="kopf.dev", version="v1", plural="clusterkopfpeerings" if namespaces == [None] else "kopfpeerings",
        namespaced=namespaces != [None],
    )  # fmt: skip
    await orchestration.spawn_missing_peerings(
        settings=settings,
        identity=peering.Identity("me"),
        resources=[resource],
        namespaces=namespaces,  # type: ignore[arg-type]
        ensemble=ensemble,
    )
    tasks = ensemble.get_tasks(ensemble.get_keys())
    try:
        async with asyncio.timeout(TIMEOUT):
            await waiting
        assert paused.is_on()  # paused until kopf has read the peering object
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _decide(own_priority: int, peer_priority: int) -> bool:
    """Whether kopf pauses a replica of `own_priority` that sees a live peer of `peer_priority`."""
    settings = kopf.OperatorSettings()
    settings.peering.name = "ha"
    settings.peering.priority = own_priority
    now = datetime.datetime.now(datetime.UTC).isoformat()
    event = {
        "type": "MODIFIED",
        "object": {
            "metadata": {"name": "ha"},
            "status": {"peer": {"priority": peer_priority, "lifetime": 60, "lastseen": now}},
        },
    }
    conflicts = aiotoggles.Toggle(False)
    pressure = asyncio.Event()
    pressure.set()  # kopf would sleep until the peer expires: wake it at once
    await peering.process_peering_event(
        raw_event=event,  # type: ignore[arg-type]
        namespace=None,
        resource=None,  # type: ignore[arg-type]
        identity=peering.Identity("self"),
        settings=settings,
        autoclean=False,
        stream_pressure=pressure,
        conflicts_found=conflicts,
    )
    return conflicts.is_on()


async def test_kopf_pauses_the_lower_and_both_equal_priorities() -> None:
    assert await _decide(own_priority=1, peer_priority=2)  # lower: standby
    assert not await _decide(own_priority=2, peer_priority=1)  # higher: active
    assert await _decide(own_priority=1, peer_priority=1)  # equal: kopf freezes both, hence distinct defaults


def test_default_priority_falls_with_the_start_time() -> None:
    earlier = leadership.default_priority(1_764_460_000_000_000_000)
    later = leadership.default_priority(1_764_460_000_000_001_000)  # one microsecond later
    assert earlier > later
    assert abs(leadership.default_priority()) < 2**53

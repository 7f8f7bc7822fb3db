"""High availability: with several replicas, the operator's own loops run only in the active one.

kopf's peering (`--peering`) elects the active replica: every replica keeps itself alive in a
peering object (ClusterKopfPeering, or a KopfPeering in each watched namespace) and pauses while a
live peer has a higher priority. A pause stops kopf's handlers only; the loops the operator runs
beside them (resync, canary analysis, budget refresh, repair, the child watches) would go on
writing in every standby. `run_while_active` starts them when kopf resumes this replica and
cancels them when kopf pauses it, so a standby writes nothing.

The default priority orders replicas by their start: the replica that started first leads, a later
one waits, so a restarted or newly scheduled pod never preempts the active one (kopf freezes every
replica when two live ones share a priority, hence the microsecond resolution).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import structlog
from kopf._cogs.aiokits import aiotoggles

log = structlog.get_logger(__name__)

# kopf's root task that stops its daemons when the operator pauses: it holds the pause state.
_PAUSE_HOLDER = "daemon killer"
_STANDBY = "paused by kopf: a live peer with a higher (or the same) priority, or the peering not read yet"


class Paused(Protocol):
    """kopf's pause state: on while this replica is paused (a standby), off while it is active."""

    def is_on(self) -> bool: ...

    async def wait_for(self, state: bool, /) -> None: ...


def default_priority(now_ns: int | None = None) -> int:
    """A priority that falls with the start time: the earliest replica alive is the active one.

    Microseconds keep two replicas from sharing one (kopf freezes both); the value stays below
    2**53, exact in every JSON reader of the peering object.
    """
    return -((time.time_ns() if now_ns is None else now_ns) // 1000)


def kopf_paused() -> Paused:
    """kopf's own pause state of the running operator (call it from inside kopf's event loop).

    kopf has no public API for it: `kopf.spawn_tasks` keeps it in a local `operator_paused`
    (an `aiotoggles.ToggleSet`) and hands it to its root tasks, among them the "daemon killer".
    This reads it from that task's coroutine; tests/unit/operator/test_leadership.py fails if a
    kopf release moves it. The exact state matters: a copy of kopf's election rule, fed by a watch
    of our own, could disagree with kopf's handlers for a moment, and two replicas would write.
    """
    for task in asyncio.all_tasks():
        if task.get_name() != _PAUSE_HOLDER:
            continue
        guard = task.get_coro()
        frame = getattr(guard, "cr_frame", None)
        inner = frame.f_locals.get("coro") if frame is not None else None
        inner_frame = getattr(inner, "cr_frame", None)
        state = inner_frame.f_locals.get("operator_paused") if inner_frame is not None else None
        if isinstance(state, aiotoggles.ToggleSet):
            return state
    raise LookupError(f"kopf's pause state was not found (task {_PAUSE_HOLDER!r}): kopf changed, see leadership.py")


async def kopf_peering_started(paused: Paused, peering: str, *, poll: float = 0.1) -> None:
    """Wait until kopf has begun its peering: its pause toggle for the peering object exists.

    Before that, kopf's pause state is off although nothing is known of the other replicas yet:
    kopf creates the toggle (on: paused) only once it has discovered the peering resource, just
    before it watches anything. kopf names the toggle `NAME@NAMESPACE` (`orchestration.py`):
    tests/cluster/test_ha.py fails if that changes (a standby would log `operator_active` at start,
    and a replica waiting for a name kopf no longer uses would never become active). Polled:
    kopf notifies nobody outside its own condition.
    """
    prefix = f"{peering}@"
    while not any((getattr(toggle, "name", None) or "").startswith(prefix) for toggle in _toggles(paused)):
        await asyncio.sleep(poll)


def _toggles(paused: Paused) -> list[object]:
    return list(paused) if isinstance(paused, aiotoggles.ToggleSet) else []


class AlwaysActive:
    """The pause state of a standalone operator: never paused."""

    def is_on(self) -> bool:
        return False

    async def wait_for(self, state: bool, /) -> None:
        if state:
            await asyncio.Event().wait()  # never paused: wait until cancelled


Loop = Callable[[], Awaitable[None]]


async def run_while_active(
    paused: Paused,
    loops: Mapping[str, Loop],
    *,
    on_standby: Callable[[], None] = lambda: None,
    ready: Awaitable[None] | None = None,
) -> None:
    """Run `loops` while this replica is active; cancel them when it pauses, start them again on resume.

    `ready` is awaited first (`kopf_peering_started`). `on_standby` runs after the loops are
    cancelled: what the replica remembers of the objects goes stale while another one is active
    (kopf lists them all again on resume).
    """
    if ready is not None:
        await ready
    if paused.is_on():
        log.info("operator_standby", reason=_STANDBY)
    while True:
        await paused.wait_for(False)
        log.info("operator_active", loops=sorted(loops))
        tasks = {asyncio.create_task(_logged(name, loop), name=name) for name, loop in loops.items()}
        pausing = asyncio.create_task(paused.wait_for(True), name="pause-waiter")
        try:
            await pausing
        finally:
            pausing.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("operator_standby", reason=_STANDBY)
        on_standby()


async def _logged(name: str, loop: Loop) -> None:
    """A loop that ends by itself (they run until cancelled) is logged; the others keep running."""
    try:
        await loop()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("operator_loop_failed", loop=name)
    else:
        log.warning("operator_loop_ended", loop=name)

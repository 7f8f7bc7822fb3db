"""Analysis slots shared fairly between namespaces (tenants).

An analysis holds a worker thread and Prometheus for as long as its queries run (up to the
analysis time limit). `FairSlots` lets at most `total` analyses run at once, at most
`per_namespace` of them for one namespace, and hands a freed slot to the waiting namespaces in
turn (round robin), not to whoever asked first: one namespace with many slow analyses waits
behind itself, never in front of another namespace (docs/security.md, "Fair analyses").

The analysis loop waits for a slot before it reconciles (`slot()`, outside the reconcile gate)
and marks it held for the reconcile it runs (`HELD`); a reconcile from anywhere else that finds an
analysis due takes a slot only if one is free at once (`try_acquire`), and otherwise leaves the
analysis due for the loop, so it never holds a reconcile slot while it waits for an analysis slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Final

TOTAL: Final = 16
PER_NAMESPACE: Final = 2

# The namespace whose slot the current task already holds (set by the analysis loop).
HELD: contextvars.ContextVar[str | None] = contextvars.ContextVar("analysis_slot_held", default=None)


class FairSlots:
    """At most `total` holders, at most `per_namespace` per namespace, waiting namespaces served in turn."""

    def __init__(self, total: int = TOTAL, per_namespace: int = PER_NAMESPACE) -> None:
        if total < 1 or per_namespace < 1:
            raise ValueError("slots must be at least 1")
        self.total = total
        self.per_namespace = per_namespace
        self._running: dict[str, int] = {}
        # namespace -> its waiters, in the order namespaces are served next
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def in_use(self) -> int:
        return sum(self._running.values())

    def running(self, namespace: str) -> int:
        return self._running.get(namespace, 0)

    def _free_for(self, namespace: str) -> bool:
        return self.in_use < self.total and self.running(namespace) < self.per_namespace

    def try_acquire(self, namespace: str) -> bool:
        """Take a slot for `namespace` if one is free for it now and none of its own waits before.

        A waiting namespace that could run is granted a slot as soon as one frees (`_grant`), so a
        free slot here is never one another namespace is owed.
        """
        if namespace in self._waiting or not self._free_for(namespace):
            return False
        self._running[namespace] = self.running(namespace) + 1
        return True

    async def acquire(self, namespace: str) -> None:
        """Wait for a slot for `namespace` (in its namespace's turn)."""
        if self.try_acquire(namespace):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(namespace, deque()).append(future)
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(namespace)  # granted as it was cancelled: give it on
            else:
                self._forget(namespace, future)
            raise

    def release(self, namespace: str) -> None:
        """Give a slot back; the next waiting namespace in turn (that may run one more) gets it."""
        count = self.running(namespace) - 1
        if count > 0:
            self._running[namespace] = count
        else:
            self._running.pop(namespace, None)
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.in_use < self.total:
            chosen = next((ns for ns in self._waiting if self.running(ns) < self.per_namespace), None)
            if chosen is None:
                return  # every waiting namespace runs its share already
            queue = self._waiting.pop(chosen)
            future = queue.popleft()
            if queue:
                self._waiting[chosen] = queue  # to the back of the turn
            if future.cancelled():
                continue
            self._running[chosen] = self.running(chosen) + 1
            future.set_result(None)

    def _forget(self, namespace: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(namespace)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(future)
        if not queue:
            del self._waiting[namespace]

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        """Hold a slot of `namespace` (waiting for it in turn), marked `HELD` for the code inside."""
        await self.acquire(namespace)
        token = HELD.set(namespace)
        try:
            yield
        finally:
            HELD.reset(token)
            self.release(namespace)

"""Keeps `status.budget` of every AgentService with a daily budget up to date: the I/O of `budget.py`.

It runs in a loop of its own (`Reconciler.budgets_forever`), never inside a reconcile, and takes no
reconcile lock: a slow or absent Prometheus holds no reconcile up. It writes `status.budget` alone,
as a merge patch of that key, which the reconcile's status write never mentions, so the two writers
cannot undo each other. A refresh that finds the figures as they are writes nothing (`budget.settled`).

Prometheus found unreachable is remembered for one interval (at most 30 s): the other services'
refreshes in that time share the error without asking, so a blackholed server costs one timeout
per 30 s, not one per service. The queries run in a worker thread (the client is synchronous).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from agent_operator import budget, opmetrics
from agent_operator.api import models
from agent_operator.canary import analysis
from agent_operator.canary.prometheus import Prometheus, Unreachable
from agent_operator.kube.client import ApiError, Client

log = structlog.get_logger(__name__)

RETRY_SECONDS: Final = 10.0  # a status write that failed is tried again this soon, not an interval later
UNREACHABLE_HOLD_SECONDS: Final = 30.0  # at most this long (and one interval) without asking a lost Prometheus


@dataclasses.dataclass
class Shown:
    """What one service's `status.budget` holds (as last written, or as first read), and when to refresh."""

    status: models.BudgetStatus | None
    raw: dict[str, Any] | None  # as in the live status: the keys a merge patch must null out
    next_at: float | None = None  # monotonic time of the next refresh; None: never refreshed
    daily: float | None = None  # the dailyUSD of the last refresh


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


class BudgetReporter:
    """Refreshes and writes the `status.budget` of AgentServices (see the module docstring)."""

    def __init__(
        self,
        client: Client,
        metrics: opmetrics.Metrics,
        *,
        prometheus: Prometheus | None,
        interval: float = budget.DEFAULT_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._prometheus = prometheus
        self._interval = interval
        self._monotonic = monotonic
        self._now = now
        self._shown: dict[str, Shown] = {}
        self._down: tuple[float, str] | None = None  # (until, why): Prometheus found unreachable

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted object."""
        self._shown.pop(uid, None)

    def due(self, uid: str, body: Mapping[str, Any]) -> bool:
        """Whether this object's budget status should be refreshed now."""
        shown = self._shown.get(uid)
        if shown is None:
            return True
        return budget.due(
            now=self._monotonic(), next_at=shown.next_at, daily=budget.daily_usd(body), refreshed_daily=shown.daily
        )

    async def refresh(self, uid: str, body: Mapping[str, Any]) -> bool:
        """Measure (when the spec sets a daily budget) and write `status.budget` if it changed; whether it wrote."""
        shown = self._shown.get(uid)
        if shown is None:  # first sight (start-up): the status as the body has it
            raw = (body.get("status") or {}).get("budget")
            raw = dict(raw) if isinstance(raw, Mapping) else None
            shown = self._shown[uid] = Shown(budget.parse(raw), raw)
        daily = budget.daily_usd(body)
        shown.next_at, shown.daily = self._monotonic() + self._interval, daily
        new = await self._measure(body, daily, shown.status)
        new = budget.settled(shown.status, new)
        if new == shown.status:
            return False
        written = budget.as_json(new)
        try:
            await self._client.patch_status(body, {"budget": budget.merge_patch(shown.raw, written)})
        except ApiError as exc:
            log.warning("budget_status_write_failed", service=body["metadata"]["name"], error=str(exc))
            shown.next_at = min(shown.next_at, self._monotonic() + RETRY_SECONDS)
            return False
        shown.status, shown.raw = new, written
        if new is not None and new.message:  # logged when it changes, not at every refresh
            log.info("budget_status_stale", service=body["metadata"]["name"], message=new.message)
        return True

    async def _measure(
        self, body: Mapping[str, Any], daily: float | None, previous: models.BudgetStatus | None
    ) -> models.BudgetStatus | None:
        """The new `status.budget` (None: no daily budget, nothing to show), counted by outcome."""
        if daily is None:
            return None
        if self._prometheus is None:
            status, outcome = budget.not_configured(daily, previous)
        else:
            meta = body["metadata"]
            scope = analysis.Scope(service=meta["name"], namespace=meta.get("namespace", "default"))
            asked = budget.queries(scope)
            moment = self._now()
            measured = await self._query(self._prometheus, asked.all(), scope.namespace)
            status, outcome = budget.refreshed(daily, asked, measured, now=moment, previous=previous, scope=scope)
        self._metrics.budget_refreshes.labels(result=outcome.value).inc()
        return status

    async def _query(
        self, prometheus: Prometheus, queries: list[str], namespace: str
    ) -> dict[str, analysis.Measurement]:
        """Run `queries` for `namespace` in a thread; while Prometheus is known unreachable, answer
        its error untried."""
        if self._down is not None and self._monotonic() < self._down[0]:
            return {query: analysis.Measurement(error=self._down[1]) for query in queries}
        measured, unreachable = await asyncio.to_thread(_ask, prometheus, queries, namespace)
        hold = min(self._interval, UNREACHABLE_HOLD_SECONDS)
        self._down = (self._monotonic() + hold, unreachable) if unreachable else None
        return measured


def _ask(prometheus: Prometheus, queries: list[str], namespace: str) -> tuple[dict[str, analysis.Measurement], str]:
    """Every query's measurement (confined to `namespace`), and why Prometheus is unreachable ('' when it answered)."""
    measured: dict[str, analysis.Measurement] = {}
    for position, query in enumerate(queries):
        try:
            measured[query] = prometheus.query(query, namespace=namespace)
        except Unreachable as exc:
            measured.update({rest: analysis.Measurement(error=str(exc)) for rest in queries[position:]})
            return measured, str(exc)
    return measured, ""

"""Canary rollouts on the cluster: measure when an analysis is due, decide, lay the tracks out.

`machine.py` decides, `analysis.py` and `prometheus.py` measure, `tracks.py` lays the children
out; this module holds what lives between reconciles (when the next analysis is due) and does the
reads a decision needs. The rules are in docs/canary.md; `status.py` reports the outcome.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from agent_operator import objects, opmetrics
from agent_operator.api import models
from agent_operator.canary import analysis, machine, rollouthistory, slots, tracks
from agent_operator.canary.prometheus import Prometheus, rfc3339
from agent_operator.kube.client import Client
from agent_operator.manifests import builders
from agent_operator.objects import ObjectRef

# Scrape interval of the ServiceMonitor the operator renders: the analysis window spans >= 4 scrapes.
DEFAULT_SCRAPE_INTERVAL: Final = 30.0

Clock = Callable[[], float]


@dataclasses.dataclass
class Schedule:
    """When one object's next analysis is due.

    Counted on the monotonic clock; the wall-clock time of the same moment goes into
    `status.canary.nextAnalysisTime`, from which an operator that restarts takes the schedule up
    (`resumable`: this process has not counted an interval for the object yet).
    """

    running_for: tuple[str, int] | None = None  # (canary revision, weight) the interval is counted for
    due: float = 0.0  # monotonic time of the next analysis
    due_time: str = ""  # the same moment as a status timestamp
    watching: bool = False  # a rollout that wants analyses: the analysis loop looks at it
    resumable: bool = True

    def settle(self, stands_at: tuple[str, int] | None, *, same_pods: bool = False) -> None:
        """After a decision: what the interval being counted is for, once the rollout stands at `stands_at`.

        A step (or a new revision) moves the rollout while the interval of the old step is still
        counted. Kept as it was, the analysis loop would look at the object only at the old step's
        due time and count the new step's interval from there: its first analysis one interval late
        (bench/canary.py measured 5 s after a step at a 3 s interval). So the interval is dropped,
        and the loop looks at its next tick: the new step's interval starts once its canary pods are
        ready at the new size. A step that changes no pod (`same_pods`: the same replicas of each
        track at both weights) changes no traffic either, so the interval counted goes on for the
        new step: the next analysis keeps to the cadence, one interval after the one that moved it.
        """
        if self.running_for is None or self.running_for == stands_at:
            return
        self.running_for = stands_at if same_pods and stands_at is not None else None


def _utcnow() -> str:
    return rfc3339(datetime.datetime.now(tz=datetime.UTC))


def status_time(moment: float) -> str:
    """A wall-clock time (seconds since the epoch) as `2026-01-01T00:00:00.123Z`: milliseconds, so
    a schedule taken up after a restart keeps to the second."""
    when = datetime.datetime.fromtimestamp(moment, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def seconds_until(stamp: str, wall_now: float) -> float | None:
    """Seconds from `wall_now` to a status timestamp; None when it does not parse (the status is
    written by the operator, but anyone allowed to write it could put anything there)."""
    try:
        moment = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp() - wall_now


class Rollouts:
    """Runs analyses and decides, for each reconcile, the canary status and the children of both tracks."""

    def __init__(
        self,
        client: Client,
        metrics: opmetrics.Metrics,
        *,
        prometheus: Prometheus | None = None,
        scrape_interval_seconds: float = DEFAULT_SCRAPE_INTERVAL,
        monotonic: Clock = time.monotonic,
        wall: Clock = time.time,
        now: Callable[[], str] = _utcnow,
        analysis_slots: slots.FairSlots | None = None,
    ) -> None:
        self._client = client
        self.slots = analysis_slots or slots.FairSlots()
        self._metrics = metrics
        self._prometheus = prometheus
        self._scrape_interval = scrape_interval_seconds
        self._monotonic = monotonic
        self._wall = wall
        self._now = now
        self._schedules: dict[str, Schedule] = {}

    @property
    def prometheus_url(self) -> str | None:
        return self._prometheus.shown_url if self._prometheus is not None else None

    def forget(self, uid: str) -> None:
        """Drop the schedule of a deleted object."""
        self._schedules.pop(uid, None)

    def due(self, uid: str) -> bool:
        """Whether the analysis loop should reconcile this object now (an analysis or readiness to check)."""
        schedule = self._schedules.get(uid)
        if schedule is None or not schedule.watching:
            return False
        return schedule.running_for is None or self._monotonic() >= schedule.due

    async def plan(
        self,
        uid: str,
        body: Mapping[str, Any],
        svc: models.AgentService,
        desired: builders.Desired,
        *,
        live: Mapping[ObjectRef, dict[str, Any] | None],
        prior: models.CanaryStatus,
    ) -> tracks.Plan:
        """Measure if due, decide, and lay the children out for the decided status."""
        schedule = self._schedules.setdefault(uid, Schedule())
        spec = svc.spec.canary
        canary_live: dict[ObjectRef, dict[str, Any] | None] = {}
        if spec.enabled or machine.rollout_active(prior):
            for ref in desired.canary_refs:
                canary_live[ref] = await self._client.get(ref.api_version, ref.kind, ref.namespace, ref.name)
        # Decide from the objects this AgentService controls only: a foreign object of a canary
        # name is neither this rollout's canary nor something to delete (apply reports it).
        everything = {**live, **objects.owned(canary_live, body.get("metadata", {}).get("uid"))}
        result = await self._maybe_analyse(schedule, svc, desired, prior, everything)
        observed = machine.Observation(
            desired_revision=desired.revision,
            annotations=dict(body.get("metadata", {}).get("annotations") or {}),
            analysis=result,
            live_stable_revision=tracks.live_revision(desired, live),
        )
        decision = machine.decide(spec, prior, observed)
        laid = tracks.layout(desired, decision.status, everything)
        rollouts = rollouthistory.updated(prior, decision, self._now)
        schedule.watching = machine.needs_analysis(spec, decision.status)
        stands_at = (decision.status.canary_revision, decision.status.weight) if schedule.watching else None
        same_pods = schedule.running_for == (decision.status.canary_revision, prior.weight) and tracks.same_pods(
            desired, prior.weight, decision.status.weight, everything
        )
        schedule.settle(stands_at, same_pods=same_pods)
        counted = schedule.watching and schedule.running_for == (
            decision.status.canary_revision,
            decision.status.weight,
        )
        new_status = decision.status.model_copy(
            update={
                "actual_weight": laid.actual_weight,
                "rollouts": rollouts,
                # empty while no interval is counted for where the rollout now stands (a new step
                # waits for its canary pods; a paused rollout is not analysed)
                "next_analysis_time": schedule.due_time if counted else "",
            }
        )
        return tracks.Plan(
            children=laid.children,
            live=canary_live,
            remove=laid.remove,
            prior=prior,
            status=new_status,
            decision=dataclasses.replace(decision, status=new_status),
            analysis=result,
            deployments=laid.deployments,
            desired_revision=desired.revision,
            spec=spec,
            warnings=laid.warnings,
        )

    async def _maybe_analyse(
        self,
        schedule: Schedule,
        svc: models.AgentService,
        desired: builders.Desired,
        prior: models.CanaryStatus,
        live: Mapping[ObjectRef, dict[str, Any] | None],
    ) -> models.Analysis | None:
        """Run an analysis when one is due (docs/canary.md); start counting the interval otherwise."""
        spec = svc.spec.canary
        interval = spec.interval_seconds
        now = self._monotonic()
        wanted = machine.needs_analysis(spec, prior) and prior.canary_revision == desired.revision
        if not wanted or not self._canary_ready(desired, live):
            schedule.running_for = None
            return None
        key = (prior.canary_revision, prior.weight)
        if schedule.running_for != key:
            wait = interval
            if schedule.resumable and prior.next_analysis_time:
                # the interval a previous operator process was counting for this very step: keep
                # to its end (at once when it has passed), never wait longer than one interval
                left = seconds_until(prior.next_analysis_time, self._wall())
                if left is not None:
                    wait = min(interval, max(0.0, left))
            schedule.resumable = False
            self._count(schedule, key, now, wait)
            if wait > 0:
                return None
        elif now < schedule.due:
            return None
        namespace = svc.metadata.namespace
        held = slots.HELD.get() == namespace
        if not held and not self.slots.try_acquire(namespace):
            return None  # still due: the analysis loop runs it in its namespace's turn (slots.py)
        try:
            # from now, not from when it was due: a late analysis must not pull the next one closer
            # (kept to a grid, one 2.4 s late at a 3 s interval was followed 0.6 s later by another
            # reading nearly the same window, and with failureLimit 2 both failures would count)
            self._count(schedule, key, now, interval)
            return await self.analyse(svc, prior.weight)
        finally:
            if not held:
                self.slots.release(namespace)

    def _count(self, schedule: Schedule, key: tuple[str, int], now: float, wait: float) -> None:
        """Start counting `wait` seconds to the next analysis of `key`."""
        schedule.running_for, schedule.due = key, now + wait
        schedule.due_time = status_time(self._wall() + wait)

    @staticmethod
    def _canary_ready(desired: builders.Desired, live: Mapping[ObjectRef, dict[str, Any] | None]) -> bool:
        for _, canary in desired.deployments.values():
            deployment = live.get(canary)
            if deployment is None or not objects.workload(deployment).rolled_out:
                return False
        return True

    async def analyse(self, svc: models.AgentService, weight: int) -> models.Analysis:
        """One analysis of `svc`'s canary at `weight` (an error without Prometheus); timed and counted."""
        started = time.perf_counter()
        if self._prometheus is None:
            result = analysis.no_prometheus(weight, self._now())
        else:
            window = analysis.window_for(svc.spec.canary, self._scrape_interval)
            scope = analysis.Scope(service=svc.metadata.name, namespace=svc.metadata.namespace, window=window)
            result = await self._prometheus.analyse_async(
                analysis.plan(svc.spec.canary, scope), weight=weight, namespace=svc.metadata.namespace
            )
        self._metrics.analysis_duration.observe(time.perf_counter() - started)
        self._metrics.analyses.labels(verdict=result.verdict).inc()
        return result

"""kopf handlers: thin decorators around `Reconciler.reconcile`, registered on an explicit registry.

One reconcile serves create, update and resume. Three loops re-run it, each one task started at
start-up: the repair loop, for the objects whose children the watches of `kube.watch` saw
deleted or changed (drift repaired within seconds); a resync loop, for every object each
`resync_interval` seconds, the safety net (Secrets that appeared, the auth Secret, which is not
watched, anything a watch missed); and a loop that reconciles, every `analysis_tick` seconds, only
the objects whose canary rollout has an analysis due (`spec.canary.interval` is usually much
shorter than the resync). A fourth refreshes `status.budget` from Prometheus when it is due,
outside any reconcile (`budgetreport`). The loops know the objects from kopf's watch stream
(`on.event`); none is a `kopf.timer`: kopf puts a finalizer on every object with a timer, and this
operator needs none — the children carry ownerReferences, so Kubernetes' garbage collector removes
them with their AgentService, and nothing outside the cluster needs cleaning up.

The reconciler and the child watches reach the handlers through kopf's `memo` (injected by
`run.py`), and the loop intervals are registration arguments, so no handler reads configuration.

With peering (several replicas, `leadership`), the loops run only while kopf has this replica
active: a standby writes nothing, and what it remembered of the objects is dropped when it pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf

from agent_operator import leadership, reconcile
from agent_operator.api import models
from agent_operator.kube import watch
from agent_operator.kube.client import ApiError

RESOURCE = (models.GROUP, models.VERSION, models.PLURAL)


def _reconciler(memo: Any) -> reconcile.Reconciler:
    reconciler: reconcile.Reconciler = memo.reconciler
    return reconciler


def _retry(exc: ApiError) -> kopf.TemporaryError:
    delay = exc.retry_after or reconcile.DEFAULT_RETRY_DELAY
    return kopf.TemporaryError(f"Kubernetes API: {exc}", delay=delay)


async def _run(body: kopf.Body, memo: Any) -> reconcile.Outcome:
    try:
        outcome = await _reconciler(memo).reconcile(body)
    except ApiError as exc:
        if exc.transient:
            raise _retry(exc) from exc
        raise kopf.PermanentError(f"Kubernetes API refused a write: {exc}") from exc
    if outcome.spec_error:
        raise kopf.PermanentError(f"spec is invalid: {outcome.spec_error}")
    if outcome.policy_violation:
        raise kopf.PermanentError(f"spec breaks the platform's policy: {outcome.policy_violation}")
    return outcome


def register(
    registry: kopf.OperatorRegistry,
    *,
    resync_interval: float,
    analysis_tick: float = reconcile.ANALYSIS_TICK,
    budget_tick: float = reconcile.BUDGET_TICK,
    peering: str | None = None,
) -> None:
    """Register the AgentService handlers on `registry` (`peering`: its name; the loops follow kopf's pause)."""

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, registry=registry)
    async def agentservice_reconcile(body: kopf.Body, memo: Any, **_: Any) -> None:
        await _run(body, memo)

    @kopf.on.event(*RESOURCE, registry=registry)
    async def agentservice_observe(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        body = event["object"]
        if event["type"] == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
            _reconciler(memo).forget(str(body.get("metadata", {}).get("uid") or body["metadata"]["name"]))
        else:
            _reconciler(memo).observe(body)

    @kopf.on.startup(registry=registry)
    async def agentservice_loops_start(memo: Any, **_: Any) -> None:
        reconciler = _reconciler(memo)
        loops: dict[str, leadership.Loop] = {
            "resync": lambda: reconciler.resync_forever(resync_interval),
            "canary-analysis": lambda: reconciler.analyse_forever(analysis_tick),
            "budget-status": lambda: reconciler.budgets_forever(budget_tick),
            "repair": reconciler.repair_forever,
        }
        children: watch.Children | None = getattr(memo, "children", None)
        if children is not None:
            loops["child-watch"] = children.run_forever
        paused: leadership.Paused = leadership.AlwaysActive()
        ready = None
        if peering is not None:
            paused = leadership.kopf_paused()
            ready = leadership.kopf_peering_started(paused, peering)
        memo.loops = asyncio.create_task(
            leadership.run_while_active(paused, loops, on_standby=reconciler.forget_all, ready=ready),
            name="operator-loops",
        )

    @kopf.on.cleanup(registry=registry)
    async def agentservice_loops_stop(memo: Any, **_: Any) -> None:
        task: asyncio.Task[None] | None = getattr(memo, "loops", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

"""kopf handlers: thin decorators around `Reconciler.reconcile`, registered on an explicit registry.

One reconcile serves create, update and resume; a timer re-runs it every `resync_interval`
seconds to restore deleted or hand-edited children and to notice Secrets that appeared. No
finalizer: the children carry ownerReferences, so Kubernetes' garbage collector removes them with
their AgentService, and nothing outside the cluster needs cleaning up (the delete handler is
optional, which keeps kopf from adding one; it only forgets the object's bookkeeping).

The reconciler reaches the handlers through kopf's `memo` (injected by `run.py`), and the timer
interval is a registration argument, so no handler reads configuration.
"""

from __future__ import annotations

from typing import Any

import kopf

from agent_operator import apply, models, reconcile

RESOURCE = (models.GROUP, models.VERSION, models.PLURAL)


def _reconciler(memo: Any) -> reconcile.Reconciler:
    reconciler: reconcile.Reconciler = memo.reconciler
    return reconciler


def _retry(exc: apply.ApiError) -> kopf.TemporaryError:
    delay = exc.retry_after or reconcile.DEFAULT_RETRY_DELAY
    return kopf.TemporaryError(f"Kubernetes API: {exc}", delay=delay)


async def _run(body: kopf.Body, memo: Any, *, permanent_invalid: bool) -> reconcile.Outcome:
    try:
        outcome = await _reconciler(memo).reconcile(body)
    except apply.ApiError as exc:
        if exc.transient:
            raise _retry(exc) from exc
        raise kopf.PermanentError(f"Kubernetes API refused a write: {exc}") from exc
    if outcome.spec_error and permanent_invalid:
        raise kopf.PermanentError(f"spec is invalid: {outcome.spec_error}")
    return outcome


def register(registry: kopf.OperatorRegistry, *, resync_interval: float) -> None:
    """Register the AgentService handlers on `registry`."""

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, registry=registry)
    async def agentservice_reconcile(body: kopf.Body, memo: Any, **_: Any) -> None:
        await _run(body, memo, permanent_invalid=True)

    @kopf.timer(*RESOURCE, interval=resync_interval, initial_delay=resync_interval, registry=registry)
    async def agentservice_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
        # An invalid spec already carries its condition; the timer just looks again quietly.
        await _run(body, memo, permanent_invalid=False)

    @kopf.on.delete(*RESOURCE, optional=True, registry=registry)
    async def agentservice_delete(body: kopf.Body, memo: Any, **_: Any) -> None:
        _reconciler(memo).forget(str(body.get("metadata", {}).get("uid") or body["metadata"]["name"]))

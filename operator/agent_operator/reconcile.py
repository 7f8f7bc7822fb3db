"""The level-based reconcile of one AgentService: parse → build → check secrets → apply → status.

Every handler (create, update, resume and the resync timer) calls `Reconciler.reconcile`, which
reads the actual state, closes the gap and reports it; running it twice in a row changes nothing
the second time (zero writes). Outcomes map onto kopf's error vocabulary in the handlers:
`SpecInvalid` → `kopf.PermanentError` (no hot retry loop: the next spec change or resync pass
looks again), a transient API fault → `kopf.TemporaryError(delay=...)`.

A missing Secret never rolls out Deployments (their pods would crash-loop on an unresolvable
`secretKeyRef`): everything else is applied, existing Deployments are left as they are, and the
resync timer picks the service up again once the Secret exists. The same holds while an object
the pods consume (the auth Secret, the runtime ConfigMap) exists under someone else's control:
it is never written (`apply.apply_all`), the `ChildConflict` condition names it, and the pods do
not run on it.

Canary rollouts (`rollout.py`) sit between build and apply: they read what runs, may run an
analysis, decide, and lay out the children of both tracks; the canary status, conditions and
Events are written with the rest of the status. A second loop, `analyse_forever`, reconciles only
the objects whose rollout has an analysis due, so analyses follow `spec.canary.interval` and not
the (much longer) resync interval.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import pydantic
import structlog

from agent_operator import opmetrics, status
from agent_operator.api import models, validation
from agent_operator.build import builders, naming, runtimeconfig
from agent_operator.canary import rollouts
from agent_operator.kube import apply, secrets

log = structlog.get_logger(__name__)

WORKLOAD_KINDS: Final = frozenset({"Deployment"})
STATUS_KEYS: Final = ("phase", "observedGeneration", "conditions", "replicas", "readyReplicas", "revision", "canary")
DEFAULT_RETRY_DELAY: Final = 10.0
ANALYSIS_TICK: Final = 1.0  # how often the analysis loop looks for due canary analyses
MAX_CONCURRENT_RECONCILES: Final = 32


def utcnow() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one reconcile concluded."""

    phase: models.Phase
    written: tuple[str, ...] = ()
    spec_error: str = ""
    missing_secrets: tuple[str, ...] = ()
    status_written: bool = False


class SpecInvalid(Exception):
    """The spec passed the CRD schema but cannot be served; the message names the field."""


@dataclasses.dataclass
class _Memory:
    """Per-object bookkeeping that lives as long as the object does."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # The status last written and the resourceVersion of the body it was computed from: a body
    # still at that version is stale (the watch event of our own write has not arrived yet).
    written_status: dict[str, Any] | None = None
    written_from: str | None = None


class Reconciler:
    """Closes the gap between an AgentService's spec and its children; writes its status."""

    def __init__(
        self,
        client: apply.Client,
        metrics: opmetrics.Metrics,
        *,
        version: str | None = None,
        clock: Callable[[], str] = utcnow,
        canary: rollouts.Rollouts | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._version = version
        self._clock = clock
        self._rollouts = canary if canary is not None else rollouts.Rollouts(client, metrics, version=version)
        self._memory: dict[str, _Memory] = {}
        self._known: dict[str, dict[str, Any]] = {}
        # One limit shared by kopf's handlers and both loops: without it a burst of creations runs
        # every reconcile at once, and the peak stays in the process's RSS (bench/RESULTS.md).
        self._gate = asyncio.Semaphore(MAX_CONCURRENT_RECONCILES)

    def forget(self, uid: str) -> None:
        """Drop the bookkeeping of a deleted object."""
        self._memory.pop(uid, None)
        self._known.pop(uid, None)
        self._rollouts.forget(uid)
        self._client.forget(uid)
        self._metrics.services.set(len(self._known))

    def observe(self, body: Mapping[str, Any]) -> None:
        """Remember the latest body of an object (fed from the watch stream) for the resync loop."""
        uid = str(body.get("metadata", {}).get("uid") or body["metadata"]["name"])
        self._known[uid] = copy.deepcopy(dict(body))
        self._metrics.services.set(len(self._known))

    async def resync_forever(self, interval: float, *, concurrency: int = 16) -> None:
        """Reconcile every known object every `interval` seconds (level-triggered drift repair).

        One loop for all objects rather than a kopf timer per object: kopf puts a finalizer on
        every object that has a timer, and nothing outside Kubernetes needs cleaning up here.
        A failing object is logged and retried on the next pass; the others are not held up.
        """
        gate = asyncio.Semaphore(concurrency)
        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(*(self._reconcile_logged(uid, gate) for uid in list(self._known)))

    async def analyse_forever(self, tick: float = ANALYSIS_TICK, *, concurrency: int = 16) -> None:
        """Every `tick` seconds, reconcile the objects whose canary rollout has an analysis due."""
        gate = asyncio.Semaphore(concurrency)
        while True:
            await asyncio.sleep(tick)
            due = [uid for uid in list(self._known) if self._rollouts.due(uid)]
            await asyncio.gather(*(self._reconcile_logged(uid, gate) for uid in due))

    async def _reconcile_logged(self, uid: str, gate: asyncio.Semaphore) -> None:
        """Reconcile from a loop: a failure is logged and retried on the next pass."""
        async with gate:
            # The newest body when this object's turn comes, not the one known when the pass began.
            body = self._known.get(uid)
            if body is None:
                return  # deleted meanwhile
            try:
                await self.reconcile(body)
            except apply.ApiError as exc:
                log.warning("resync_failed", name=body["metadata"].get("name"), error=str(exc))
            except Exception:
                log.exception("resync_crashed", name=body["metadata"].get("name"))

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """Reconcile one AgentService body; serialised per object (handlers and timer may overlap)."""
        uid = str(body.get("metadata", {}).get("uid") or body["metadata"]["name"])
        memory = self._memory.setdefault(uid, _Memory())
        started = time.perf_counter()
        async with self._gate, memory.lock:  # gate first: a lock holder always holds a slot
            try:
                outcome = await self._reconcile(body, memory)
            except apply.ApiError as exc:
                self._metrics.errors.labels(kind="transient" if exc.transient else "api").inc()
                self._metrics.reconciles.labels(result="error").inc()
                raise
            except Exception:
                self._metrics.errors.labels(kind="unexpected").inc()
                self._metrics.reconciles.labels(result="error").inc()
                raise
            finally:
                self._metrics.reconcile_duration.observe(time.perf_counter() - started)
        result = "invalid" if outcome.spec_error else outcome.phase.value.lower()
        self._metrics.reconciles.labels(result=result if result in opmetrics.RESULTS else "progressing").inc()
        if outcome.spec_error:
            self._metrics.errors.labels(kind="invalid").inc()
        return outcome

    async def _reconcile(self, body: Mapping[str, Any], memory: _Memory) -> Outcome:
        generation = body.get("metadata", {}).get("generation")
        prior = rollouts.canary_status(self._previous_status(body, memory).get("canary"))
        try:
            svc, children = self._desired(body)
        except SpecInvalid as exc:
            obs = status.Observation(generation=generation, spec_error=str(exc))
            phase, written = await self._write_status(
                body, obs, memory, revision=prior.stable_revision, canary=prior, canary_conditions=None
            )
            return Outcome(phase, spec_error=str(exc), status_written=written)

        namespace = svc.metadata.namespace
        uid = str(body.get("metadata", {}).get("uid") or svc.metadata.name)
        owner_uid = body.get("metadata", {}).get("uid")
        missing = await secrets.missing(self._client, namespace, secrets.references(svc.spec))
        live = await apply.read_live(self._client, children)
        # What this AgentService controls; a foreign object of a child's name counts as absent for
        # every decision below, and apply_all leaves it alone (a ChildConflict).
        mine = apply.owned(live, owner_uid)
        held = bool(missing) or bool(set(apply.conflicts(children, live, owner_uid)) & _pod_inputs(svc))
        children, token, new_token = self._with_token(svc, children, mine, held=held)
        plan: rollouts.Plan | None = None
        if not held:
            plan = await self._rollouts.plan(uid, body, svc, children=children, live=mine, prior=prior)
            children, live = plan.children, {**live, **plan.live}
        # After the rollout's layout, so kept stable templates and new canaries alike take the token.
        desired = apply.adopt(secrets.with_token_digest(children, token), owner=body)
        result = await apply.apply_all(self._client, desired, live, owner_uid=owner_uid)
        pruned = await apply.prune(self._client, body, desired, naming.instance_labels(svc.metadata.name))
        if plan is not None:
            pruned += await self._rollouts.remove(body, plan)
        if new_token:
            log.info("auth_token_created", service=svc.metadata.name, namespace=namespace)

        workloads = []
        names = plan.deployments if plan is not None else self._stable_deployments(svc)
        for name in names:
            deployment = result.live.get(f"Deployment/{name}")
            if deployment is None and held:
                deployment = mine.get(f"Deployment/{name}")  # kept as it runs
            if deployment is not None:
                workloads.append(status.workload(deployment))
        obs = status.Observation(
            generation=generation,
            missing_secrets=tuple(missing),
            workloads=tuple(workloads),
            skipped=result.skipped,
            conflicts=result.conflicts,
        )
        if pruned:
            await self._client.event(body, reason="Pruned", message=f"deleted {', '.join(pruned)}")
        if result.written:
            created = [k for k in result.written if live.get(k) is None]
            updated = [k for k in result.written if live.get(k) is not None]
            message = "; ".join(
                part
                for part in (
                    f"created {', '.join(created)}" if created else "",
                    f"updated {', '.join(updated)}" if updated else "",
                )
                if part
            )
            await self._client.event(body, reason="Applied", message=message)
        canary_status = plan.status if plan is not None else prior
        wanted = None
        if plan is not None:
            wanted = rollouts.wanted_conditions(
                svc.spec.canary, plan.status, plan.desired_revision, prometheus_url=self._rollouts.prometheus_url
            )
        revision = canary_status.stable_revision or builders.revision(svc, version=self._version)
        phase, written = await self._write_status(
            body,
            obs,
            memory,
            revision=revision,
            workloads=workloads,
            canary=canary_status,
            canary_conditions=wanted if plan is not None else None,
            keep_canary_conditions=plan is None,
        )
        if plan is not None:
            await self._rollouts.announce(body, plan)
        return Outcome(phase, written=result.written + pruned, missing_secrets=tuple(missing), status_written=written)

    @staticmethod
    def _with_token(
        svc: models.AgentService,
        children: list[dict[str, Any]],
        mine: Mapping[str, dict[str, Any] | None],
        *,
        held: bool,
    ) -> tuple[list[dict[str, Any]], str, bool]:
        """The children to apply, the auth token, and whether it is new.

        Held (a Secret missing, or an object the pods consume belonging to someone else): pods
        would crash-loop or run on someone else's data, so what runs is kept: no workloads, no
        change to mounted config. The auth Secret is one of the children, so its token comes from
        the live read of the children (only from our own Secret), not a second GET.
        """
        if held:
            children = _without_mounted_config(
                [c for c in children if c["kind"] not in WORKLOAD_KINDS], mine, svc.metadata.name
            )
        token, new_token = secrets.auth_token(mine.get(f"Secret/{naming.auth_secret_name(svc.metadata.name)}"))
        return secrets.with_token(children, svc, token), token, new_token

    @staticmethod
    def _stable_deployments(svc: models.AgentService) -> tuple[str, ...]:
        return tuple(naming.deployment_name(svc.metadata.name, c) for c in builders.COMPONENTS)

    @staticmethod
    def _previous_status(body: Mapping[str, Any], memory: _Memory) -> dict[str, Any]:
        """The status this reconcile starts from: the last one we wrote, else the body's.

        Only the operator writes the status, so what it wrote last is never older than a body's
        copy, while a body may well be older: the watch event of our own write may not have
        arrived, and a resync pass may hold a body read before the latest change. Deciding a
        rollout from a stale `status.canary` could step it back. After a restart the body is all
        there is, and it is read fresh.
        """
        if memory.written_status is not None:
            return memory.written_status
        return dict(body.get("status") or {})

    def _desired(self, body: Mapping[str, Any]) -> tuple[models.AgentService, list[dict[str, Any]]]:
        """Parse the body and build its children, or raise SpecInvalid naming the field."""
        try:
            svc = models.AgentService.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            problems = validation.problems_from(exc)
            raise SpecInvalid("; ".join(str(p) for p in problems)) from None
        try:
            children = builders.build_children(svc, version=self._version)
        except models.CrossFieldError as exc:
            raise SpecInvalid(f"{exc.field}: {exc.message}") from None
        except ValueError as exc:
            raise SpecInvalid(str(exc)) from None
        return svc, children

    async def _write_status(
        self,
        body: Mapping[str, Any],
        obs: status.Observation,
        memory: _Memory,
        *,
        revision: str,
        workloads: list[status.Workload] | None = None,
        canary: models.CanaryStatus | None = None,
        canary_conditions: list[tuple[str, models.ConditionStatus, str, str]] | None = None,
        keep_canary_conditions: bool = True,
    ) -> tuple[models.Phase, bool]:
        """Patch the status subresource if (and only if) it differs; post Events on flips."""
        if memory.written_status is not None and memory.written_from == body.get("metadata", {}).get("resourceVersion"):
            # A body older than our own last status write (a resync pass or a late watch event):
            # start from what we wrote, or fresh timestamps would look like a change and be written.
            body = {**body, "status": {**(body.get("status") or {}), **memory.written_status}}
        previous = _conditions(body)
        now = self._clock()
        phase, conds = status.derive(obs, previous, now=now)
        if not keep_canary_conditions:
            conds = rollouts.with_conditions(conds, canary_conditions, generation=obs.generation, now=now)
        workloads = workloads or []
        new_status: dict[str, Any] = {
            "phase": phase.value,
            "observedGeneration": obs.generation,
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conds],
            "replicas": sum(w.desired for w in workloads),
            "readyReplicas": sum(w.ready for w in workloads),
            "revision": revision,
        }
        if canary is not None:
            new_status["canary"] = rollouts.status_json(canary)
        live_status = body.get("status") or {}
        current = {k: live_status.get(k) for k in new_status}
        version = body.get("metadata", {}).get("resourceVersion")
        if current == new_status:
            return phase, False
        if memory.written_status == new_status and memory.written_from == version:
            return phase, False  # our own write is not in this (stale) body yet
        patch = dict(new_status)
        if canary is not None and isinstance(live_status.get("canary"), Mapping):
            # a merge patch keeps keys it does not mention: null out the ones the new status dropped
            patch["canary"] = {**dict.fromkeys(live_status["canary"]), **new_status["canary"]}
        await self._client.patch_status(body, patch)
        memory.written_status, memory.written_from = new_status, version
        await self._announce(body, previous, conds)
        return phase, True

    async def _announce(
        self, body: Mapping[str, Any], before: list[models.Condition], after: list[models.Condition]
    ) -> None:
        """An Event for each condition that flipped into a state worth telling a person about."""
        old = {c.type: c.status for c in before}
        for cond in after:
            if old.get(cond.type) == cond.status:
                continue
            if cond.type == status.READY and cond.status == status.TRUE:
                await self._client.event(body, reason="Ready", message=cond.message)
            elif cond.type in (
                status.SPEC_INVALID,
                status.SECRET_MISSING,
                status.CHILD_CONFLICT,
                status.DEGRADED,
            ) and (cond.status == status.TRUE):
                await self._client.event(body, reason=cond.type, message=cond.message, warning=True)


def _pod_inputs(svc: models.AgentService) -> set[str]:
    """`Kind/name` of the children the pods consume (their token and their mounted config)."""
    service = svc.metadata.name
    configs = {f"ConfigMap/{runtimeconfig.config_map_name(service, track)}" for track in naming.Track}
    return {f"Secret/{naming.auth_secret_name(service)}", *configs}


def _without_mounted_config(
    children: list[dict[str, Any]], live: Mapping[str, Any], service: str
) -> list[dict[str, Any]]:
    """Children less the runtime ConfigMaps that already exist (held while a Secret is missing).

    A runtime ConfigMap that exists is mounted into running pods: a new config naming a provider
    whose key is missing would crash them at their next restart, so it waits for the Secret too.
    """
    held = {runtimeconfig.config_map_name(service, track) for track in naming.Track}
    return [
        c
        for c in children
        if not (c["kind"] == "ConfigMap" and c["metadata"]["name"] in held and live.get(apply.key(c)))
    ]


def _conditions(body: Mapping[str, Any]) -> list[models.Condition]:
    raw = (body.get("status") or {}).get("conditions") or []
    result = []
    for item in raw:
        try:
            result.append(models.Condition.model_validate(item))
        except pydantic.ValidationError:
            continue  # a condition someone else wrote in a shape we do not know: leave it out
    return result

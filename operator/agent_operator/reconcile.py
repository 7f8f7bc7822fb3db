"""The level-based reconcile of one AgentService: Desired once -> canary plan once -> apply -> status.

Every handler (create, update, resume) and both loops call `Reconciler.reconcile`, which reads the
actual state, closes the gap and reports it; running it twice in a row changes nothing the second
time (zero writes). A spec that cannot be served becomes the `SpecInvalid` condition; a transient
API fault propagates as `kube.client.ApiError` for the handlers to retry.

Three loops call it besides kopf's handlers: the repair loop, for the services whose children a
watch saw change (`kube.watch`: a child deleted or edited by hand is repaired within a second or
so); the resync loop, every service every `resync_interval` (the safety net: a missing Secret that
appeared, the auth Secret, which is not watched, anything a watch missed); and the canary analysis
loop.

Pods are held back (no Deployment written, no mounted ConfigMap changed) while a referenced
Secret is missing, or while an object the pods consume (the auth Secret, a runtime ConfigMap)
belongs to someone else: they would crash-loop or run on someone else's data. Everything else is
applied, and the resync loop picks the service up again once the cause is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import pydantic
import structlog

from agent_operator import budget, budgetreport, objects, opmetrics, policy, status
from agent_operator.api import defaults as api_defaults
from agent_operator.api import models, validation
from agent_operator.canary import rollouts
from agent_operator.kube import apply, prune, secrets
from agent_operator.kube.client import ApiError, Client
from agent_operator.manifests import builders
from agent_operator.objects import ObjectRef

log = structlog.get_logger(__name__)

WORKLOAD_KINDS: Final = frozenset({"Deployment"})
# Where kopf keeps the last spec it handled (`run.settings_for`: its diff base, in an annotation).
DIFFBASE_ANNOTATION: Final = f"{models.GROUP}/last-handled-configuration"
DEFAULT_RETRY_DELAY: Final = 10.0
ANALYSIS_TICK: Final = 1.0  # how often the analysis loop looks for due canary analyses
BUDGET_TICK: Final = 1.0  # how often the budget loop looks for due budget refreshes
BUDGET_CONCURRENCY: Final = 2  # refreshes at once: each holds a worker thread while Prometheus answers
MAX_CONCURRENT_RECONCILES: Final = 32
# A burst of child events (a Deployment and its status, a cascade of deletions) is one repair.
REPAIR_DEBOUNCE: Final = 0.1
# At most one repair of a service per second: a child that someone else keeps changing back
# (another controller, a mutating webhook) is fought over at this pace, not at the watch's.
REPAIR_SPACING: Final = 1.0
# How long one resync reconcile waits for repairs under way before it runs anyway: repairs go first
# (a pass over 10,000 services is minutes of work, a repair is one reconcile), yet a child fought
# over for ever (a repair every second) cannot stall the safety net.
RESYNC_DEFERENCE: Final = 1.0


def utcnow() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one reconcile concluded."""

    phase: models.Phase
    written: tuple[ObjectRef, ...] = ()
    spec_error: str = ""
    missing_secrets: tuple[str, ...] = ()
    status_written: bool = False
    policy_violation: str = ""


class SpecInvalid(Exception):
    """The spec passed the CRD schema but cannot be served; the message names the field."""


class PolicyViolation(Exception):
    """The spec is valid but breaks the platform's policy (`policy.Policy`); the message names the rule."""


class Reconciler:
    """Closes the gap between an AgentService's spec and its children; writes its status."""

    def __init__(
        self,
        client: Client,
        metrics: opmetrics.Metrics,
        *,
        operator_version: str | None = None,
        clock: Callable[[], str] = utcnow,
        canary: rollouts.Rollouts | None = None,
        budgets: budgetreport.BudgetReporter | None = None,
        admission: policy.Policy | None = None,
        defaults: api_defaults.Defaults = api_defaults.NONE,
    ) -> None:
        self._client = client
        self._policy = admission or policy.Policy()
        self._defaults = defaults
        self._metrics = metrics
        self._operator_version = operator_version
        self._rollouts = canary if canary is not None else rollouts.Rollouts(client, metrics)
        self._status = status.Reporter(client, metrics, clock=clock, prometheus_url=self._rollouts.prometheus_url)
        self._budgets = budgets or budgetreport.BudgetReporter(client, metrics, prometheus=None)
        self._inventory = prune.Inventory()
        self._locks: dict[str, asyncio.Lock] = {}
        self._known: dict[str, dict[str, Any]] = {}
        # The objects the budget loop looks at: a daily budget, or a status.budget left to clear.
        # Scanning every object each second cost a third of the operator's CPU at 10,000 services.
        self._budgeted: set[str] = set()
        # One limit shared by kopf's handlers and both loops: without it a burst of creations runs
        # every reconcile at once, and the peak stays in the process's RSS (bench/RESULTS.md).
        self._gate = asyncio.Semaphore(MAX_CONCURRENT_RECONCILES)
        # The repair loop's queue: uids poked and not yet taken, those being repaired, and when each
        # was last repaired (monotonic time).
        self._pending: set[str] = set()
        self._repairing: set[str] = set()
        self._spaced: set[str] = set()  # pending, but waiting out their spacing: not due yet
        self._repairs_running = 0
        # Set while no repair is due or running: the resync's reconciles wait for it (repairs first).
        self._no_repairs = asyncio.Event()
        self._no_repairs.set()
        self._repaired_at: dict[str, float] = {}
        self._poked = asyncio.Event()
        # The repair backlog, read from these sets when the metrics are collected: poked and not yet
        # reconciled (spacing included), or being reconciled.
        metrics.repairs_pending.set_function(lambda: len(self._pending | self._repairing))
        # Per object: the resourceVersion of the body whose one-shot gates (promote, abort) were acted
        # on and removed, and those gates. A loop may hand over that same body again before the
        # removal's watch event arrives; it must not act on them twice (a second rollback recorded).
        self._spent: dict[str, tuple[str | None, frozenset[str]]] = {}

    def forget(self, uid: str) -> None:
        """Drop the bookkeeping of a deleted object."""
        self._locks.pop(uid, None)
        self._known.pop(uid, None)
        self._budgeted.discard(uid)
        self._pending.discard(uid)
        self._repaired_at.pop(uid, None)
        self._settle_repairs()
        self._spent.pop(uid, None)
        self._rollouts.forget(uid)
        self._status.forget(uid)
        self._budgets.forget(uid)
        self._inventory.forget(uid)
        self._metrics.services.set(len(self._known))

    def forget_all(self) -> None:
        """Drop the bookkeeping of every object: this replica went standby, another one writes now.

        kopf lists every object again when it resumes this replica (`observe` refills it); an
        object deleted meanwhile must not stay behind, or the resync would recreate its children.
        """
        for uid in list(self._known):
            self.forget(uid)

    def observe(self, body: Mapping[str, Any]) -> None:
        """Remember the latest body of an object (fed from the watch stream) for the resync loop.

        What is kept is what a reconcile reads, once: no managedFields (the API server's record of
        who set which field, several KB per object, read by nobody here), and the status shared
        with the one the reporter remembers writing when they are equal, and not kopf's diff-base
        annotation (a second copy of the whole spec): one copy of a spec per service. With 10,000
        services these copies are most of the operator's memory (bench/RESULTS.md).
        """
        uid = _uid(body)
        kept = {key: copy.deepcopy(value) for key, value in body.items() if key not in ("metadata", "status")}
        kept["metadata"] = {
            key: copy.deepcopy(value) for key, value in body.get("metadata", {}).items() if key != "managedFields"
        }
        # kopf's record of the last spec it handled is a second full copy of the spec, as JSON text;
        # kopf reads it from the bodies it is given, never from these.
        annotations = kept["metadata"].get("annotations")
        if isinstance(annotations, dict) and DIFFBASE_ANNOTATION in annotations:
            kept["metadata"]["annotations"] = {k: v for k, v in annotations.items() if k != DIFFBASE_ANNOTATION}
        if "status" in body:
            status_ = self._status.shared(uid, body["status"])
            kept["status"] = status_ if status_ is not body["status"] else copy.deepcopy(status_)
        self._known[uid] = kept
        if budget.daily_usd(kept) is not None or (kept.get("status") or {}).get("budget") is not None:
            self._budgeted.add(uid)
        else:
            self._budgeted.discard(uid)
        self._metrics.services.set(len(self._known))

    def follow_children(self, watched: prune.Watched) -> None:
        """Take what the child watches know as the prune inventory's source (`watch.Children.owned`)."""
        self._inventory.follow(watched)

    def poke(self, uid: str) -> None:
        """Ask for a reconcile of the object `uid` soon (a child of it changed); unknown uids are ignored.

        Unknown: not observed yet (its own create handler reconciles it) or already deleted (the
        garbage collector's cascade).
        """
        if uid in self._known:
            self._pending.add(uid)
            self._poked.set()
            if uid not in self._spaced:  # a repair waiting out its spacing is not due yet
                self._no_repairs.clear()

    async def repair_forever(
        self, debounce: float = REPAIR_DEBOUNCE, *, spacing: float = REPAIR_SPACING, concurrency: int = 16
    ) -> None:
        """Reconcile the poked objects: each once per burst, never twice at once, at most once per `spacing`."""
        gate = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._poked.wait()
                await asyncio.sleep(debounce)
                self._poked.clear()
                # A uid being repaired stays pending: its task runs once more after the current pass.
                for uid in self._pending - self._repairing:
                    self._repairing.add(uid)
                    task = asyncio.create_task(self._repair(uid, gate, spacing), name=f"repair-{uid}")
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _repair(self, uid: str, gate: asyncio.Semaphore, spacing: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            while uid in self._pending:
                wait = self._repaired_at.get(uid, -math.inf) + spacing - loop.time()
                if wait > 0:
                    self._spaced.add(uid)
                    self._settle_repairs()
                    try:
                        await asyncio.sleep(wait)
                    finally:
                        self._spaced.discard(uid)
                    continue  # still wanted? (a deleted object is forgotten meanwhile)
                self._pending.discard(uid)  # a poke from here on is after the reads below: it runs again
                self._repaired_at[uid] = loop.time()
                self._repairs_running += 1
                try:
                    await self._reconcile_logged(uid, gate)
                finally:
                    self._repairs_running -= 1
        finally:
            self._repairing.discard(uid)
            self._settle_repairs()

    def _settle_repairs(self) -> None:
        """Let the deferred resync reconciles go once no repair is due or running.

        A repair waiting out its `spacing` does not hold them (a child fought over would, for ever).
        """
        if not self._repairs_running and self._pending <= self._spaced:
            self._no_repairs.set()

    async def resync_forever(self, interval: float, *, concurrency: int = 16) -> None:
        """Reconcile every known object every `interval` seconds (level-triggered drift repair).

        A failing object is logged and retried on the next pass; the others are not held up.
        """
        gate = asyncio.Semaphore(concurrency)
        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(*(self._reconcile_logged(uid, gate, defer=True) for uid in list(self._known)))

    async def analyse_forever(self, tick: float = ANALYSIS_TICK) -> None:
        """Every `tick` seconds, reconcile the objects whose canary rollout has an analysis due.

        Each due object waits for an analysis slot of its namespace (`slots.FairSlots`: shared in
        turn between namespaces) before it takes a reconcile slot, and the loop never waits for
        them: a namespace whose analyses are slow holds up only its own next ones.
        """
        fair = self._rollouts.slots
        gate = asyncio.Semaphore(fair.total)
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                await asyncio.sleep(tick)
                for uid in list(self._known):
                    if uid in running or not self._rollouts.due(uid):
                        continue
                    namespace = self._known[uid]["metadata"].get("namespace", "")
                    task = asyncio.create_task(self._analyse_in_turn(uid, namespace, gate), name=f"analysis-{uid}")
                    running[uid] = task
                    task.add_done_callback(lambda _, uid=uid: running.pop(uid, None))  # type: ignore[misc]
        finally:
            for task in list(running.values()):
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def _analyse_in_turn(self, uid: str, namespace: str, gate: asyncio.Semaphore) -> None:
        async with self._rollouts.slots.slot(namespace):
            if self._rollouts.due(uid):  # not analysed meanwhile by another reconcile
                await self._reconcile_logged(uid, gate)

    async def budgets_forever(self, tick: float = BUDGET_TICK, *, concurrency: int = BUDGET_CONCURRENCY) -> None:
        """Every `tick` seconds, refresh `status.budget` of the objects whose refresh is due.

        Only objects with a daily budget, or a `status.budget` to clear, are looked at: for the
        others a refresh finds nothing to show and writes nothing.

        Outside any reconcile and its lock (`budgetreport`): a slow Prometheus holds no reconcile up.
        """
        gate = asyncio.Semaphore(concurrency)
        while True:
            await asyncio.sleep(tick)
            due = [
                uid
                for uid in list(self._budgeted)
                if (body := self._known.get(uid)) is not None and self._budgets.due(uid, body)
            ]
            await asyncio.gather(*(self._refresh_budget(uid, gate) for uid in due))

    async def _refresh_budget(self, uid: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            body = self._known.get(uid)
            if body is None:
                return  # deleted meanwhile
            try:
                await self._budgets.refresh(uid, body)
            except Exception:
                log.exception("budget_refresh_crashed", name=body["metadata"].get("name"))
            if uid not in self._known:
                self._budgets.forget(uid)  # deleted while it was refreshed: keep nothing of it

    async def _reconcile_logged(self, uid: str, gate: asyncio.Semaphore, *, defer: bool = False) -> None:
        """Reconcile from a loop: a failure is logged and retried on the next pass.

        `defer`: first let the repairs due or under way go (up to `RESYNC_DEFERENCE` seconds). They
        share one event loop and one API server with the pass; a repair behind a pass's sixteen
        reconciles took 9 s at the 95th percentile with 1,000 services on a loaded machine.
        """
        async with gate:
            if defer and not self._no_repairs.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._no_repairs.wait(), RESYNC_DEFERENCE)
            # The newest body when this object's turn comes, not the one known when the pass began.
            body = self._known.get(uid)
            if body is None:
                return  # deleted meanwhile
            try:
                await self.reconcile(body)
            except ApiError as exc:
                log.warning("resync_failed", name=body["metadata"].get("name"), error=str(exc))
            except Exception:
                log.exception("resync_crashed", name=body["metadata"].get("name"))

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """Reconcile one AgentService body; serialised per object (handlers and loops may overlap)."""
        uid = _uid(body)
        lock = self._locks.setdefault(uid, asyncio.Lock())
        started = time.perf_counter()
        async with self._gate, lock:  # gate first: a lock holder always holds a slot
            try:
                outcome = await self._reconcile(uid, body)
            except ApiError as exc:
                self._metrics.errors.labels(kind="transient" if exc.transient else "api").inc()
                self._metrics.reconciles.labels(result="error").inc()
                raise
            except Exception:
                self._metrics.errors.labels(kind="unexpected").inc()
                self._metrics.reconciles.labels(result="error").inc()
                raise
            finally:
                self._metrics.reconcile_duration.observe(time.perf_counter() - started)
        result = "invalid" if outcome.spec_error or outcome.policy_violation else outcome.phase.value.lower()
        self._metrics.reconciles.labels(result=result if result in opmetrics.RESULTS else "progressing").inc()
        if outcome.spec_error:
            self._metrics.errors.labels(kind="invalid").inc()
        return outcome

    async def _reconcile(self, uid: str, body: Mapping[str, Any]) -> Outcome:
        body = self._unspent(uid, body)
        generation = body.get("metadata", {}).get("generation")
        prior = status.canary_of(self._status.previous(uid, body))
        try:
            svc, desired = self._desired(body)
        except SpecInvalid as exc:
            findings = status.Findings(generation=generation, spec_error=str(exc))
            report = status.Report(revision=prior.stable_revision, canary=prior)
            outcome = Outcome(models.Phase.FAILED, spec_error=str(exc))
        except PolicyViolation as exc:  # nothing is built: no child is written or changed
            findings = status.Findings(generation=generation, policy_violation=str(exc))
            report = status.Report(revision=prior.stable_revision, canary=prior)
            outcome = Outcome(models.Phase.FAILED, policy_violation=str(exc))
        else:
            findings, report, outcome = await self._converge(uid, body, svc, desired, prior)
        phase, written = await self._status.report(uid, body, findings, report)
        if report.plan is not None and (gates := _gates_on(body, report.plan.decision.consumed)):
            self._spent[uid] = (body.get("metadata", {}).get("resourceVersion"), gates)
        return dataclasses.replace(outcome, phase=phase, status_written=written)

    def _unspent(self, uid: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """`body` without the one-shot gates already acted on when this same version was reconciled."""
        meta = body.get("metadata", {})
        spent = self._spent.get(uid)
        if spent is None or spent[0] != meta.get("resourceVersion") or not _gates_on(body, spent[1]):
            return body
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in spent[1]}
        return {**body, "metadata": {**meta, "annotations": annotations}}

    async def _converge(
        self,
        uid: str,
        body: Mapping[str, Any],
        svc: models.AgentService,
        desired: builders.Desired,
        prior: models.CanaryStatus,
    ) -> tuple[status.Findings, status.Report, Outcome]:
        """Read what runs, plan the canary, apply and prune: what the status then reports."""
        # Read: the referenced Secrets and every child. A foreign object of a child's name counts
        # as absent for every decision below (`mine`), and apply leaves it alone (a ChildConflict).
        owner_uid = body.get("metadata", {}).get("uid")
        references = secrets.references(svc.spec)
        missing = await secrets.missing(self._client, svc.metadata.namespace, references)
        live = await apply.read_live(self._client, desired.refs)
        mine = objects.owned(live, owner_uid)
        held = bool(missing) or bool(set(objects.conflicts(desired.children, live, owner_uid)) & desired.pod_inputs)

        # Decide: the canary plan lays out both tracks; held, what runs is kept as it runs.
        plan = None
        if held:
            children = _held(desired, mine)
        else:
            plan = await self._rollouts.plan(uid, body, svc, desired, live=mine, prior=prior)
            children, live = plan.children, {**live, **plan.live}
        children, new_token = secrets.with_auth_token(children, desired.auth_secret, mine.get(desired.auth_secret))

        # Write: apply what differs, prune what is no longer wanted.
        adopted = apply.adopt(children, owner=body)
        result = await apply.apply_all(self._client, adopted, live, owner_uid=owner_uid)
        pruned = await prune.prune(
            self._client,
            self._inventory,
            body,
            desired=[ObjectRef.of(c) for c in adopted],
            named=[*desired.refs, *desired.canary_refs],
            present=list(result.live),
            selector=desired.selector,
            remove=plan.remove if plan is not None else (),
            live=plan.live if plan is not None else {},
        )
        if new_token:
            log.info("auth_token_created", service=svc.metadata.name, namespace=svc.metadata.namespace)

        deployments = plan.deployments if plan is not None else desired.stable_deployments
        workloads = tuple(
            objects.workload(deployment)
            for ref in deployments
            if (deployment := result.live.get(ref) or (mine.get(ref) if held else None))  # held: kept as it runs
        )
        findings = status.Findings(
            generation=body.get("metadata", {}).get("generation"),
            missing_secrets=tuple(missing),
            workloads=workloads,
            skipped=result.skipped,
            conflicts=result.conflicts,
        )
        canary = plan.status if plan is not None else prior
        # What exists now and is ours: what apply found or wrote, and what a hold kept as it runs.
        present = set(result.live) | {ref for ref, obj in mine.items() if obj is not None}
        present.difference_update(pruned)
        report = status.Report(
            revision=canary.stable_revision or desired.revision,
            canary=canary,
            plan=plan,
            written=result.written,
            existed=frozenset(ref for ref in result.written if live.get(ref) is not None),
            pruned=pruned,
            children=tuple(ref for ref in (*desired.refs, *desired.canary_refs) if ref in present),
        )
        outcome = Outcome(models.Phase.PENDING, written=result.written + pruned, missing_secrets=tuple(missing))
        return findings, report, outcome

    def _desired(self, body: Mapping[str, Any]) -> tuple[models.AgentService, builders.Desired]:
        """Parse the body and build its children, or raise SpecInvalid naming the field (PolicyViolation
        naming the rule)."""
        try:
            svc = models.AgentService.model_validate(dict(body))
        except pydantic.ValidationError as exc:
            problems = validation.problems_from(exc)
            raise SpecInvalid("; ".join(str(p) for p in problems)) from None
        if violations := self._policy.violations(svc.spec):
            raise PolicyViolation("; ".join(violations))
        try:
            desired = builders.desired(api_defaults.apply(svc, self._defaults), operator_version=self._operator_version)
        except models.CrossFieldError as exc:
            raise SpecInvalid(f"{exc.field}: {exc.message}") from None
        except ValueError as exc:
            raise SpecInvalid(str(exc)) from None
        return svc, desired


def _gates_on(body: Mapping[str, Any], gates: Iterable[str]) -> frozenset[str]:
    """Those of `gates` that the body's annotations carry."""
    return frozenset(gates) & (body.get("metadata", {}).get("annotations") or {}).keys()


def _uid(body: Mapping[str, Any]) -> str:
    return str(body.get("metadata", {}).get("uid") or body["metadata"]["name"])


def _held(desired: builders.Desired, mine: Mapping[ObjectRef, Any]) -> list[dict[str, Any]]:
    """The children to apply while pods are held: no workloads, and no runtime ConfigMap that exists.

    A runtime ConfigMap that exists is mounted into running pods: a new config naming a provider
    whose key is missing would crash them at their next restart, so it waits too.
    """
    return [
        c
        for c in desired.children
        if c["kind"] not in WORKLOAD_KINDS
        and not ((ref := ObjectRef.of(c)) in desired.config_maps and mine.get(ref) is not None)
    ]

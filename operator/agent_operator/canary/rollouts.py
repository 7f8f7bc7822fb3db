"""Canary rollouts on the cluster: the orchestration between the state machine and the apply layer.

`canary.py` decides (pure), `analysis.py` and `prometheus.py` measure; this module reads what runs,
runs an analysis when one is due, asks `canary.decide` for the next status and lays the children
out to match it. `reconcile.py` calls it in three places: `Rollouts.plan` (before apply),
`Rollouts.remove` (after apply, before the status write) and `Rollouts.announce` (after it).

Level-based layout, from the *decided* status only (never from the action), so a repeated
reconcile lands on the same children:

- the stable track runs `status.stableRevision`. When that is the spec's revision its Deployments
  and ConfigMap are built from the spec. Otherwise (during a rollout, and after a rollback while
  the spec still holds the rejected template) they keep what runs: a revision is a hash and cannot
  be turned back into a template, so the live stable Deployments' pod templates and the live
  stable ConfigMap's data are read back and re-applied as they are;
- during a rollout (Progressing, Paused) the canary Deployments and the canary ConfigMap are
  built from the spec with `track=canary`, and both tracks get their replica counts from
  `canary.split` (per component; the worker split is the one the tasks see, so it is the
  `actualWeight`). Under an autoscaler the stable count is the autoscaler's, and the canary gets
  the count that gives the weight beside it;
- at rest the canary objects are deleted.

When an analysis runs: during a rollout that `canary.needs_analysis`, once the canary Deployments
report every replica ready, one `interval` after the weight was set (or the pods became ready, or
a pause by spec ended), then every `interval`. The timer is kept in memory: after an operator
restart the first analysis simply waits one more interval (later, never earlier). Without a
Prometheus URL an analysis is an `error` naming the missing flag (never a success), so the rollout
holds, then pauses, and the `AnalysisReady` condition says why.

Conditions (present while `spec.canary.enabled`, or while a rollout or its outcome is shown):
`Promoted` (True when the spec's revision is what the stable track runs, so
`kubectl wait --for=condition=Promoted` returns once a rollout is promoted), `Paused` (with the
reason: `PausedBySpec`, `InconclusiveLimitReached`) and `AnalysisReady` (False without a
Prometheus URL, or when the last analysis could not query it, with Prometheus's own words).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import pydantic
import structlog
from agent_operator import __version__, opmetrics, status
from agent_operator.api import models
from agent_operator.build import builders, naming, runtimeconfig, templatehash, workloads
from agent_operator.canary import analysis, machine, rollouthistory
from agent_operator.canary.prometheus import Prometheus, rfc3339
from agent_operator.kube import apply

log = structlog.get_logger(__name__)

PROMOTED: Final = "Promoted"
PAUSED: Final = "Paused"
ANALYSIS_READY: Final = "AnalysisReady"
CONDITION_TYPES: Final = (PROMOTED, PAUSED, ANALYSIS_READY)
PROMETHEUS_CHECK: Final = "prometheus"
NO_PROMETHEUS: Final = (
    "the operator runs without a Prometheus URL (--prometheus-url, chart value prometheus.url): canary analyses "
    "cannot run, so a rollout holds and then pauses; set it, or promote with the agentops.dev/promote annotation"
)
# Scrape interval of the ServiceMonitor the operator renders: the analysis window spans >= 4 scrapes.
DEFAULT_SCRAPE_INTERVAL: Final = 30.0
ROLLED_BACK_REASONS: Final = frozenset({machine.Reason.FAILURE_LIMIT, machine.Reason.ABORTED, machine.Reason.REVERTED})
EVENT_LIMIT: Final = 1000

Clock = Callable[[], float]
Removal = tuple[str, str, str]  # (apiVersion, kind, name)


@dataclasses.dataclass
class Memory:
    """Per-object rollout bookkeeping, in memory (see the module docstring)."""

    timer: tuple[str, int] | None = None  # (canary revision, weight) the analysis timer runs for
    due: float = 0.0  # monotonic time of the next analysis
    watching: bool = False  # a rollout that wants analyses: the analysis loop looks at it
    identity: tuple[str, str] | None = None  # (namespace, name), to drop its weight series


@dataclasses.dataclass(frozen=True)
class Layout:
    """The children of both tracks for one decided status (the pure part of a plan)."""

    children: list[dict[str, Any]]
    remove: tuple[Removal, ...]
    actual_weight: int
    deployments: tuple[str, ...]  # names of the Deployments that should exist
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one reconcile does about canaries: children to apply, objects to delete, the status."""

    children: list[dict[str, Any]]
    live: dict[str, dict[str, Any] | None]  # live objects of the canary children read for the plan
    remove: tuple[Removal, ...]
    prior: models.CanaryStatus
    status: models.CanaryStatus
    decision: machine.Decision
    analysis: models.Analysis | None
    deployments: tuple[str, ...]
    desired_revision: str
    spec: models.Canary
    warnings: tuple[str, ...] = ()


# --- pure helpers ----------------------------------------------------------------------------------


def canary_status(raw: Any) -> models.CanaryStatus:
    """`status.canary` as a model; anything unreadable counts as no rollout known."""
    if not isinstance(raw, Mapping):
        return models.CanaryStatus()
    try:
        return models.CanaryStatus.model_validate(dict(raw))
    except pydantic.ValidationError:
        return models.CanaryStatus()


def status_json(status: models.CanaryStatus) -> dict[str, Any]:
    """`status.canary` as written (camelCase, unset values left out)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def live_revision(svc: models.AgentService, live: Mapping[str, Mapping[str, Any] | None]) -> str:
    """The revision the live stable Deployments run (both must exist and carry their hash), or ''."""
    hashes = {}
    for component in builders.COMPONENTS:
        deployment = live.get(f"Deployment/{naming.deployment_name(svc.metadata.name, component)}")
        value = ((deployment or {}).get("metadata", {}).get("annotations") or {}).get(naming.TEMPLATE_HASH_ANNOTATION)
        if not value:
            return ""
        hashes[component.value] = str(value)
    return templatehash.combine(hashes)


def canary_keys(service: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of the canary objects of one service, ConfigMap first."""
    keys = [("v1", "ConfigMap", runtimeconfig.config_map_name(service, naming.Track.CANARY))]
    keys += [
        ("apps/v1", "Deployment", naming.deployment_name(service, component, naming.Track.CANARY))
        for component in builders.COMPONENTS
    ]
    return keys


def no_prometheus_analysis(weight: int, time_: str) -> models.Analysis:
    """The analysis of an operator without a Prometheus URL: an error, never a success."""
    check = models.CheckResult(name=PROMETHEUS_CHECK, verdict=analysis.Verdict.ERROR.value, message=NO_PROMETHEUS)
    return models.Analysis(time=time_, weight=weight, verdict=analysis.Verdict.ERROR.value, checks=[check])


def _kept_template(child: dict[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """`child` (a stable Deployment built from the spec) running the live Deployment's pod template."""
    kept = copy.deepcopy(child)
    template = copy.deepcopy(live.get("spec", {}).get("template") or {})
    if template.get("metadata", {}).get("creationTimestamp", "") is None:
        del template["metadata"]["creationTimestamp"]  # the API server's null placeholder
    kept["spec"]["template"] = template
    live_meta = live.get("metadata", {})
    revision = (live_meta.get("annotations") or {}).get(naming.TEMPLATE_HASH_ANNOTATION)
    if revision:
        kept["metadata"]["annotations"][naming.TEMPLATE_HASH_ANNOTATION] = revision
    version = (template.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/version")
    if version:
        kept["metadata"]["labels"]["app.kubernetes.io/version"] = version
    return kept


def _canary_count(stable: int, weight: int) -> int:
    """Canary replicas beside `stable` autoscaled ones for `weight` percent (at least one)."""
    if weight >= 100:
        return max(stable, 1)
    return max(1, (stable * weight + (100 - weight) // 2) // (100 - weight))


def layout(
    svc: models.AgentService,
    children: Sequence[dict[str, Any]],
    status: models.CanaryStatus,
    desired_revision: str,
    live: Mapping[str, Mapping[str, Any] | None],
    *,
    version: str | None = None,
) -> Layout:
    """The children of both tracks for `status` (see the module docstring); pure."""
    name = svc.metadata.name
    operator_version = version or __version__
    keep = status.stable_revision != desired_revision
    active = machine.rollout_active(status)
    stable_names = {naming.deployment_name(name, c): c for c in builders.COMPONENTS}
    config_key = f"ConfigMap/{runtimeconfig.config_map_name(name)}"
    counts: dict[naming.Component, tuple[int | None, int, int]] = {}  # stable, canary, actual weight
    for component in builders.COMPONENTS:
        total = workloads.desired_replicas(svc, component)
        if not active:
            continue
        if total is None:
            deployment = live.get(f"Deployment/{naming.deployment_name(name, component)}") or {}
            replicas = deployment.get("spec", {}).get("replicas")
            # Kubernetes' default is 1; 0 is real (KEDA scaled the stable workers to zero) and is
            # kept, so the actual weight reads 100 % rather than pretending stable has a pod.
            stable = 1 if replicas is None else int(replicas)
            count = _canary_count(stable, status.weight)
            counts[component] = (None, count, round(100 * count / (count + stable)))
        else:
            split = machine.split(total, status.weight)
            counts[component] = (split.stable, split.canary, split.actual_weight)

    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for built in children:
        key = apply.key(built)
        current = live.get(key)
        child = built
        if keep and key == config_key and current is not None:
            child = {**built, "data": dict(current.get("data") or {})}
        stable_component = stable_names.get(built["metadata"]["name"]) if built["kind"] == "Deployment" else None
        if stable_component is not None:
            if keep and current is not None:
                child = _kept_template(built, current)
            elif keep:
                warnings.append(
                    f"{key} is missing and revision {status.stable_revision} cannot be rebuilt from its hash: "
                    f"recreated from the spec's template"
                )
            stable_count = counts[stable_component][0] if stable_component in counts else None
            if stable_count is not None:
                child = copy.deepcopy(child)
                child["spec"]["replicas"] = stable_count
        out.append(child)

    remove: list[Removal] = []
    deployments = list(stable_names)
    if active:
        labels_version = workloads.app_version(svc, operator_version)
        data = runtimeconfig.config_data(svc)
        digest = runtimeconfig.config_hash(data)
        out.append(runtimeconfig.build_config_map(svc, version=labels_version, track=naming.Track.CANARY, data=data))
        for component in builders.COMPONENTS:
            out.append(
                workloads.build_deployment(
                    svc,
                    component,
                    version=operator_version,
                    track=naming.Track.CANARY,
                    replicas=counts[component][1],
                    config_digest=digest,
                )
            )
            deployments.append(naming.deployment_name(name, component, naming.Track.CANARY))
    else:
        remove = [k for k in canary_keys(name) if live.get(f"{k[1]}/{k[2]}") is not None]
    actual = counts[naming.Component.WORKER][2] if active else 0
    return Layout(out, tuple(remove), actual, tuple(deployments), tuple(warnings))


def wanted_conditions(
    spec: models.Canary,
    status: models.CanaryStatus,
    desired_revision: str,
    *,
    prometheus_url: str | None,
) -> list[tuple[str, models.ConditionStatus, str, str]] | None:
    """(type, status, reason, message) of the canary conditions, or None when they do not apply."""
    phase = models.CanaryPhase(status.phase)
    if not spec.enabled and phase == models.CanaryPhase.IDLE:
        return None
    true, false = models.ConditionStatus.TRUE, models.ConditionStatus.FALSE
    promoted = {
        models.CanaryPhase.PROGRESSING: (false, "RolloutProgressing"),
        models.CanaryPhase.PAUSED: (false, "RolloutPaused"),
        models.CanaryPhase.ROLLED_BACK: (false, "RolledBack"),
        models.CanaryPhase.PROMOTED: (true, "Promoted"),
        models.CanaryPhase.IDLE: (true, "UpToDate"),
    }[phase]
    if promoted[0] == true and status.stable_revision != desired_revision:
        promoted = (false, "NotRolledOut")
    message = status.message or f"revision {status.stable_revision} is served"
    if phase == models.CanaryPhase.PAUSED:
        reason = "PausedBySpec" if spec.paused else "InconclusiveLimitReached"
        paused = (PAUSED, true, reason, status.message)
    else:
        paused = (PAUSED, false, "NotPaused", "")
    if prometheus_url is None:
        available = (ANALYSIS_READY, false, "PrometheusNotConfigured", NO_PROMETHEUS)
    else:
        errors = []
        if machine.rollout_active(status) and status.last_analysis is not None:
            errors = [
                f"{c.name}: {c.message}" for c in status.last_analysis.checks if c.verdict == analysis.Verdict.ERROR
            ]
        if errors:
            text = "; ".join(dict.fromkeys(errors))
            available = (ANALYSIS_READY, false, "AnalysisError", f"the last analysis could not run: {text}")
        else:
            available = (ANALYSIS_READY, true, "PrometheusConfigured", f"analyses query {prometheus_url}")
    return [(PROMOTED, promoted[0], promoted[1], message), paused, available]


def with_conditions(
    current: Sequence[models.Condition],
    wanted: list[tuple[str, models.ConditionStatus, str, str]] | None,
    *,
    generation: int | None,
    now: str,
) -> list[models.Condition]:
    """`current` with the canary conditions set (or removed when they do not apply)."""
    if wanted is None:
        return [c for c in current if c.type not in CONDITION_TYPES]
    result = list(current)
    for type_, state, reason, message in wanted:
        new = models.Condition(
            type=type_, status=state, reason=reason, message=message[:EVENT_LIMIT], observed_generation=generation
        )
        result = status.set_condition(result, new, now=now)
    return result


def analysis_message(result: models.Analysis) -> str:
    """An Event's text: every check's value, samples, threshold and verdict; the query of each that
    did not pass (the summary names query, value and threshold of the checks that decided)."""
    parts = []
    for check in result.checks:
        value = "no data" if check.value is None else analysis.number(check.value)
        samples = "" if check.samples is None else f", {analysis.number(check.samples)} requests"
        line = f"{check.name} {check.verdict}: {value} (threshold {check.threshold or '-'}{samples})"
        if check.verdict != analysis.Verdict.SUCCESS and check.query:
            line += f" from `{check.query}`"
        parts.append(line)
    return f"analysis at weight {result.weight}: {result.verdict}; " + "; ".join(parts)


def decision_event(prior: models.CanaryStatus, decision: machine.Decision) -> tuple[str, str, bool] | None:
    """(reason, message, warning) of a decision worth an Event: one that moved the rollout."""
    new = decision.status
    moved = (prior.phase, prior.weight, prior.stable_revision, prior.canary_revision) != (
        new.phase,
        new.weight,
        new.stable_revision,
        new.canary_revision,
    )
    if not moved or decision.reason == machine.Reason.FIRST_DEPLOY:
        return None
    warning = new.phase in (models.CanaryPhase.ROLLED_BACK, models.CanaryPhase.PAUSED)
    return decision.reason.value, new.message, warning


def _utcnow() -> str:
    return rfc3339(datetime.datetime.now(tz=datetime.UTC))


# --- the I/O side -----------------------------------------------------------------------------------


class Rollouts:
    """Runs analyses and keeps the children of both tracks in line with the canary status."""

    def __init__(
        self,
        client: apply.Client,
        metrics: opmetrics.Metrics,
        *,
        prometheus: Prometheus | None = None,
        scrape_interval_seconds: float = DEFAULT_SCRAPE_INTERVAL,
        version: str | None = None,
        monotonic: Clock = time.monotonic,
        now: Callable[[], str] = _utcnow,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._prometheus = prometheus
        self._scrape_interval = scrape_interval_seconds
        self._version = version
        self._monotonic = monotonic
        self._now = now
        self._memory: dict[str, Memory] = {}

    @property
    def prometheus_url(self) -> str | None:
        return self._prometheus.url if self._prometheus is not None else None

    def forget(self, uid: str) -> None:
        """Drop the bookkeeping (and the weight series) of a deleted object."""
        memory = self._memory.pop(uid, None)
        if memory is not None and memory.identity is not None:
            self._drop_weight(*memory.identity)

    def due(self, uid: str) -> bool:
        """Whether the analysis loop should reconcile this object now (an analysis or readiness to check)."""
        memory = self._memory.get(uid)
        if memory is None or not memory.watching:
            return False
        return memory.timer is None or self._monotonic() >= memory.due

    async def plan(
        self,
        uid: str,
        body: Mapping[str, Any],
        svc: models.AgentService,
        *,
        children: Sequence[dict[str, Any]],
        live: Mapping[str, dict[str, Any] | None],
        prior: models.CanaryStatus,
    ) -> Plan:
        """Measure if due, decide, and lay the children out for the decided status."""
        memory = self._memory.setdefault(uid, Memory())
        memory.identity = (svc.metadata.namespace, svc.metadata.name)
        spec = svc.spec.canary
        desired = builders.revision(svc, version=self._version)
        canary_live: dict[str, dict[str, Any] | None] = {}
        if spec.enabled or machine.rollout_active(prior):
            for api_version, kind, name in canary_keys(svc.metadata.name):
                canary_live[f"{kind}/{name}"] = await self._client.get(api_version, kind, svc.metadata.namespace, name)
        # Decide from the objects this AgentService controls only: a foreign object of a canary
        # name is neither this rollout's canary nor something to delete (apply reports it).
        everything = {**live, **apply.owned(canary_live, body.get("metadata", {}).get("uid"))}
        result = await self._maybe_analyse(memory, svc, prior, desired, everything)
        annotations = dict(body.get("metadata", {}).get("annotations") or {})
        observed = machine.Observation(
            desired_revision=desired,
            annotations=annotations,
            analysis=result,
            live_stable_revision=live_revision(svc, live),
        )
        decision = machine.decide(spec, prior, observed)
        laid = layout(svc, children, decision.status, desired, everything, version=self._version)
        rollouts = rollouthistory.updated(prior, decision, self._now)
        status = decision.status.model_copy(update={"actual_weight": laid.actual_weight, "rollouts": rollouts})
        memory.watching = machine.needs_analysis(spec, status)
        return Plan(
            children=laid.children,
            live=canary_live,
            remove=laid.remove,
            prior=prior,
            status=status,
            decision=dataclasses.replace(decision, status=status),
            analysis=result,
            deployments=laid.deployments,
            desired_revision=desired,
            spec=spec,
            warnings=laid.warnings,
        )

    async def _maybe_analyse(
        self,
        memory: Memory,
        svc: models.AgentService,
        prior: models.CanaryStatus,
        desired: str,
        live: Mapping[str, dict[str, Any] | None],
    ) -> models.Analysis | None:
        """Run an analysis when one is due (see the module docstring); restart the timer otherwise."""
        spec = svc.spec.canary
        interval = spec.interval_seconds
        now = self._monotonic()
        wanted = machine.needs_analysis(spec, prior) and prior.canary_revision == desired
        if not wanted or not self._canary_ready(svc, live):
            memory.timer = None
            return None
        key = (prior.canary_revision, prior.weight)
        if memory.timer != key:
            memory.timer, memory.due = key, now + interval
            return None
        if now < memory.due:
            return None
        memory.due = now + interval
        return await self.analyse(svc, prior.weight)

    @staticmethod
    def _canary_ready(svc: models.AgentService, live: Mapping[str, dict[str, Any] | None]) -> bool:
        for component in builders.COMPONENTS:
            deployment = live.get(
                f"Deployment/{naming.deployment_name(svc.metadata.name, component, naming.Track.CANARY)}"
            )
            if deployment is None or not status.workload(deployment).rolled_out:
                return False
        return True

    async def analyse(self, svc: models.AgentService, weight: int) -> models.Analysis:
        """One analysis of `svc`'s canary at `weight` (an error without Prometheus); timed and counted."""
        started = time.perf_counter()
        if self._prometheus is None:
            result = no_prometheus_analysis(weight, self._now())
        else:
            window = analysis.window_for(svc.spec.canary, self._scrape_interval)
            scope = analysis.Scope(service=svc.metadata.name, namespace=svc.metadata.namespace, window=window)
            result = await self._prometheus.analyse_async(analysis.plan(svc.spec.canary, scope), weight=weight)
        self._metrics.analysis_duration.observe(time.perf_counter() - started)
        self._metrics.analyses.labels(verdict=result.verdict).inc()
        return result

    async def remove(self, body: Mapping[str, Any], plan: Plan) -> tuple[str, ...]:
        """Delete the canary objects of a finished rollout; return their `Kind/name`s."""
        namespace = body["metadata"].get("namespace")
        uid = body["metadata"].get("uid")
        deleted = []
        for api_version, kind, name in plan.remove:
            if not apply.controlled_by(plan.live.get(f"{kind}/{name}"), uid):
                continue  # not ours: leave it alone
            await self._client.delete(api_version, kind, namespace, name)
            deleted.append(f"{kind}/{name}")
        return tuple(deleted)

    async def announce(self, body: Mapping[str, Any], plan: Plan) -> None:
        """Events, metrics and the removal of consumed gate annotations (after the status is written)."""
        namespace, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
        status, decision = plan.status, plan.decision
        if plan.analysis is not None:
            verdict = plan.analysis.verdict
            reason = {"success": "AnalysisSucceeded", "failure": "AnalysisFailed"}.get(
                verdict, f"Analysis{verdict.capitalize()}"
            )
            warning = verdict != analysis.Verdict.SUCCESS
            await self._client.event(body, reason=reason, message=analysis_message(plan.analysis), warning=warning)
        event = decision_event(plan.prior, decision)
        if event is not None:
            await self._client.event(body, reason=event[0], message=event[1], warning=event[2])
            log.info("canary", service=name, namespace=namespace, reason=event[0], message=event[1][:300])
        for warning_text in plan.warnings:
            await self._client.event(body, reason="StableTemplateLost", message=warning_text, warning=True)
        if decision.action == machine.Action.PROMOTE and event is not None:
            self._metrics.promotions.labels(reason=decision.reason.value).inc()
        if decision.action == machine.Action.ROLL_BACK and event is not None:
            self._metrics.rollbacks.labels(reason=decision.reason.value).inc()
        if plan.spec.enabled or machine.rollout_active(status):
            self._metrics.canary_weight.labels(service=name, namespace=namespace).set(status.weight)
        else:
            self._drop_weight(namespace, name)
        present = (body.get("metadata", {}).get("annotations") or {}).keys()
        consumed = [key for key in decision.consumed if key in present]
        if consumed:
            await self._consume(body, consumed)

    async def _consume(self, body: Mapping[str, Any], keys: Sequence[str]) -> None:
        """Remove one-shot gate annotations the decision acted on (a merge patch of metadata only)."""
        meta = body["metadata"]
        path = apply.object_path(body["apiVersion"], body["kind"], meta.get("namespace"), meta["name"])
        patch = {"metadata": {"annotations": dict.fromkeys(keys)}}
        try:
            await self._client.request(
                "PATCH", path, body=patch, content_type=apply.MERGE_CONTENT_TYPE, kind=models.KIND
            )
        except apply.ApiError as exc:  # the next reconcile consumes it again
            log.warning("gate_removal_failed", service=meta["name"], gates=list(keys), error=str(exc))

    def _drop_weight(self, namespace: str, name: str) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.canary_weight.remove(name, namespace)

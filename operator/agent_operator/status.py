"""What the operator tells about one AgentService: its conditions and phase, the status write, Events.

The conditions and the phase are derived purely from what one reconcile found (`derive`). They are
kstatus-compatible: every condition carries type/status/reason/message/lastTransitionTime and
`observedGeneration`; `lastTransitionTime` moves only when a condition's status flips, so a
reconcile that finds the same state produces byte-identical conditions (and therefore no status
write). The six conditions are always present, so `kubectl wait --for=condition=Ready` and Argo
CD's health check can rely on them; the canary conditions are described in docs/canary.md.

`Reporter` writes the status subresource when (and only when) it differs, and announces: an Event
for each condition that flips into a state worth telling a person about, for applied and pruned
children, for canary analyses and decisions; the canary metrics; the removal of consumed gates.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import pydantic
import structlog

from agent_operator import objects, opmetrics
from agent_operator.api import models
from agent_operator.canary import analysis, machine, tracks
from agent_operator.kube.client import ApiError, Client, Event
from agent_operator.objects import ObjectRef

log = structlog.get_logger(__name__)

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
SPEC_INVALID: Final = "SpecInvalid"
SECRET_MISSING: Final = "SecretMissing"
CHILD_CONFLICT: Final = "ChildConflict"
# Shown only once a spec broke the platform's policy (`policy.py`), then kept, False, once it follows it.
POLICY_VIOLATION: Final = "PolicyViolation"
ORDER: Final = (READY, PROGRESSING, DEGRADED, SPEC_INVALID, POLICY_VIOLATION, SECRET_MISSING, CHILD_CONFLICT)
PROMOTED: Final = "Promoted"
PAUSED: Final = "Paused"
ANALYSIS_READY: Final = "AnalysisReady"
CANARY_CONDITIONS: Final = (PROMOTED, PAUSED, ANALYSIS_READY)
MESSAGE_LIMIT: Final = 1000

TRUE = models.ConditionStatus.TRUE
FALSE = models.ConditionStatus.FALSE
UNKNOWN = models.ConditionStatus.UNKNOWN


@dataclasses.dataclass(frozen=True)
class Findings:
    """Everything one reconcile found out; the input of `derive`."""

    generation: int | None
    spec_error: str = ""
    policy_violation: str = ""  # the rules of the platform's policy the spec breaks
    missing_secrets: tuple[str, ...] = ()
    workloads: tuple[objects.Workload, ...] = ()
    apply_error: str = ""
    skipped: tuple[str, ...] = ()  # kinds of children whose API the cluster does not serve
    conflicts: tuple[ObjectRef, ...] = ()  # children that exist but belong to someone else


def set_condition(conditions: Sequence[models.Condition], new: models.Condition, *, now: str) -> list[models.Condition]:
    """Return `conditions` with `new` in place; its lastTransitionTime moves only on a status flip."""
    result: list[models.Condition] = []
    found = False
    for cond in conditions:
        if cond.type != new.type:
            result.append(cond)
            continue
        found = True
        since = cond.last_transition_time if cond.status == new.status and cond.last_transition_time else now
        result.append(new.model_copy(update={"last_transition_time": since}))
    if not found:
        result.append(new.model_copy(update={"last_transition_time": now}))
    return result


def _wanted(obs: Findings) -> list[tuple[str, models.ConditionStatus, str, str]]:
    """(type, status, reason, message) of the six conditions for one observation."""
    if obs.spec_error:
        return [
            (READY, FALSE, "SpecInvalid", "the spec cannot be served; see SpecInvalid"),
            (PROGRESSING, FALSE, "SpecInvalid", "nothing is rolled out until the spec is fixed"),
            (DEGRADED, FALSE, "SpecInvalid", ""),
            (SPEC_INVALID, TRUE, "ValidationFailed", obs.spec_error),
            (SECRET_MISSING, UNKNOWN, "SpecInvalid", "not checked while the spec is invalid"),
            (CHILD_CONFLICT, UNKNOWN, "SpecInvalid", "not checked while the spec is invalid"),
        ]
    if obs.policy_violation:
        return [
            (READY, FALSE, POLICY_VIOLATION, "the spec breaks the platform's policy; see PolicyViolation"),
            (PROGRESSING, FALSE, POLICY_VIOLATION, "nothing is rolled out until the spec follows the policy"),
            (DEGRADED, FALSE, POLICY_VIOLATION, ""),
            (SPEC_INVALID, FALSE, "Valid", ""),
            (POLICY_VIOLATION, TRUE, "NotAllowed", obs.policy_violation),
            (SECRET_MISSING, UNKNOWN, POLICY_VIOLATION, "not checked while the spec breaks the policy"),
            (CHILD_CONFLICT, UNKNOWN, POLICY_VIOLATION, "not checked while the spec breaks the policy"),
        ]
    conflict = (
        (CHILD_CONFLICT, TRUE, "ChildConflict", conflict_message(obs.conflicts))
        if obs.conflicts
        else (CHILD_CONFLICT, FALSE, "NoConflict", "every child is absent or controlled by this AgentService")
    )
    missing = "; ".join(obs.missing_secrets)
    secret = (
        (SECRET_MISSING, TRUE, "SecretNotFound", f"{missing}; pods are not rolled out until it exists")
        if missing
        else (SECRET_MISSING, FALSE, "SecretsFound", "every referenced Secret key exists")
    )
    invalid = (SPEC_INVALID, FALSE, "Valid", "")
    failures = [f"{w.name}: {w.failure}" for w in obs.workloads if w.failure]
    pending = [w for w in obs.workloads if not w.rolled_out]
    if obs.apply_error:
        degraded = (DEGRADED, TRUE, "ApplyFailed", obs.apply_error)
    elif obs.conflicts:
        degraded = (DEGRADED, TRUE, "ChildConflict", conflict_message(obs.conflicts))
    elif missing:
        degraded = (DEGRADED, TRUE, "SecretMissing", missing)
    elif failures:
        degraded = (DEGRADED, TRUE, "RolloutFailed", "; ".join(failures))
    else:
        degraded = (DEGRADED, FALSE, "AsExpected", "")
    if pending and not failures:
        progress = ", ".join(f"{w.name} {w.ready}/{w.desired} ready" for w in pending)
        progressing = (PROGRESSING, TRUE, "RollingOut", progress)
    else:
        progressing = (PROGRESSING, FALSE, "RolloutComplete" if not failures else "RolloutFailed", "")
    skipped = f" (not served by this cluster, skipped: {', '.join(obs.skipped)})" if obs.skipped else ""
    if degraded[1] == TRUE:
        ready = (READY, FALSE, str(degraded[2]), str(degraded[3]))
    elif pending:
        ready = (READY, FALSE, "RollingOut", str(progressing[3]))
    else:
        total = sum(w.desired for w in obs.workloads)
        ready = (READY, TRUE, "AllReplicasReady", f"{total} replicas ready{skipped}")
    return [ready, progressing, degraded, invalid, secret, conflict]


def conflict_message(conflicts: Sequence[ObjectRef]) -> str:
    """What a person reads about children that exist but are not this AgentService's."""
    which = objects.keys(conflicts)
    return (
        f"{which} already exist{'s' if len(conflicts) == 1 else ''} and {'is' if len(conflicts) == 1 else 'are'}"
        " not controlled by this AgentService: left untouched; delete or rename "
        f"{'it' if len(conflicts) == 1 else 'them'} and the operator creates its own"
    )


def derive(
    obs: Findings, previous: Sequence[models.Condition], *, now: str
) -> tuple[models.Phase, list[models.Condition]]:
    """The phase and the full condition list after `obs`, keeping unrelated conditions."""
    conditions = list(previous)
    wanted = _wanted(obs)
    if not obs.policy_violation and any(c.type == POLICY_VIOLATION for c in previous):
        wanted.append((POLICY_VIOLATION, FALSE, "Allowed", "the spec follows the platform's policy"))
    for type_, status, reason, message in wanted:
        new = models.Condition(
            type=type_, status=status, reason=reason, message=message, observed_generation=obs.generation
        )
        conditions = set_condition(conditions, new, now=now)
    rank = {t: i for i, t in enumerate(ORDER)}
    conditions.sort(key=lambda c: rank.get(c.type, len(ORDER)))
    return phase(conditions), conditions


def phase(conditions: Sequence[models.Condition]) -> models.Phase:
    """The one-word summary shown by `kubectl get agsvc`."""
    state = {c.type: c.status for c in conditions}
    if state.get(SPEC_INVALID) == TRUE or state.get(POLICY_VIOLATION) == TRUE:
        return models.Phase.FAILED
    if state.get(DEGRADED) == TRUE:
        return models.Phase.DEGRADED
    if state.get(READY) == TRUE:
        return models.Phase.READY
    if state.get(PROGRESSING) == TRUE:
        return models.Phase.PROGRESSING
    return models.Phase.PENDING


# --- the canary's part of the status ----------------------------------------------------------------


def canary_of(status: Mapping[str, Any]) -> models.CanaryStatus:
    """`status.canary` as a model; anything unreadable counts as no rollout known."""
    raw = status.get("canary")
    if not isinstance(raw, Mapping):
        return models.CanaryStatus()
    try:
        return models.CanaryStatus.model_validate(dict(raw))
    except pydantic.ValidationError:
        return models.CanaryStatus()


def canary_json(canary: models.CanaryStatus) -> dict[str, Any]:
    """`status.canary` as written (camelCase, unset values left out)."""
    return canary.model_dump(mode="json", by_alias=True, exclude_none=True)


def children_json(children: Sequence[ObjectRef]) -> list[dict[str, Any]]:
    """`status.children` as written: apiVersion, kind and name of each (the namespace is the owner's)."""
    refs = (models.ChildRef(api_version=ref.api_version, kind=ref.kind, name=ref.name) for ref in children)
    return [ref.model_dump(mode="json", by_alias=True) for ref in refs]


def canary_conditions(
    spec: models.Canary, canary: models.CanaryStatus, desired_revision: str, *, prometheus_url: str | None
) -> list[models.Condition] | None:
    """The canary conditions (without transition times), or None when they do not apply."""
    phase_ = models.CanaryPhase(canary.phase)
    if not spec.enabled and phase_ == models.CanaryPhase.IDLE:
        return None
    promoted = {
        models.CanaryPhase.PROGRESSING: (FALSE, "RolloutProgressing"),
        models.CanaryPhase.PAUSED: (FALSE, "RolloutPaused"),
        models.CanaryPhase.ROLLED_BACK: (FALSE, "RolledBack"),
        models.CanaryPhase.PROMOTED: (TRUE, "Promoted"),
        models.CanaryPhase.IDLE: (TRUE, "UpToDate"),
    }[phase_]
    if promoted[0] == TRUE and canary.stable_revision != desired_revision:
        promoted = (FALSE, "NotRolledOut")
    message = canary.message or f"revision {canary.stable_revision} is served"
    if phase_ == models.CanaryPhase.PAUSED:
        paused = (TRUE, "PausedBySpec" if spec.paused else "InconclusiveLimitReached", canary.message)
    else:
        paused = (FALSE, "NotPaused", "")
    if prometheus_url is None:
        ready = (FALSE, "PrometheusNotConfigured", analysis.NO_PROMETHEUS)
    else:
        errors = []
        if machine.rollout_active(canary) and canary.last_analysis is not None:
            errors = [
                f"{c.name}: {c.message}" for c in canary.last_analysis.checks if c.verdict == analysis.Verdict.ERROR
            ]
        refused = []
        if machine.rollout_active(canary) and canary.last_analysis is not None:
            refused = [c.name for c in canary.last_analysis.checks if c.message.startswith(analysis.REFUSED)]
        if refused:
            # names the checks, never a value: the query was never run
            text = ", ".join(dict.fromkeys(refused))
            ready = (FALSE, "QueryRefused", f"check(s) {text}: {analysis.REFUSED} (see status.canary.lastAnalysis)")
        elif errors:
            text = "; ".join(dict.fromkeys(errors))
            ready = (FALSE, "AnalysisError", f"the last analysis could not run: {text}")
        else:
            ready = (TRUE, "PrometheusConfigured", f"analyses query {prometheus_url}")
    return [
        models.Condition(type=PROMOTED, status=promoted[0], reason=promoted[1], message=message),
        models.Condition(type=PAUSED, status=paused[0], reason=paused[1], message=paused[2]),
        models.Condition(type=ANALYSIS_READY, status=ready[0], reason=ready[1], message=ready[2]),
    ]


def with_canary_conditions(
    current: Sequence[models.Condition], wanted: list[models.Condition] | None, *, generation: int | None, now: str
) -> list[models.Condition]:
    """`current` with the canary conditions set (or removed when they do not apply)."""
    if wanted is None:
        return [c for c in current if c.type not in CANARY_CONDITIONS]
    result = list(current)
    for cond in wanted:
        new = cond.model_copy(update={"message": cond.message[:MESSAGE_LIMIT], "observed_generation": generation})
        result = set_condition(result, new, now=now)
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


def decision_event(prior: models.CanaryStatus, decision: machine.Decision) -> Event | None:
    """The Event of a decision worth one: a decision that moved the rollout."""
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
    return Event(decision.reason.value, new.message, warning)


def canary_events(plan: tracks.Plan) -> list[Event]:
    """The rollout's Events: the analysis that ran, a decision that moved it, a lost stable template."""
    events = []
    if plan.analysis is not None:
        verdict = plan.analysis.verdict
        reason = {"success": "AnalysisSucceeded", "failure": "AnalysisFailed"}.get(
            verdict, f"Analysis{verdict.capitalize()}"
        )
        events.append(Event(reason, analysis_message(plan.analysis), verdict != analysis.Verdict.SUCCESS))
    moved = decision_event(plan.prior, plan.decision)
    if moved is not None:
        events.append(moved)
    events.extend(Event("StableTemplateLost", text, warning=True) for text in plan.warnings)
    return events


def _consumed(body: Mapping[str, Any], decision: machine.Decision) -> list[str]:
    """The one-shot gate annotations the decision acted on, that the body still carries."""
    present = (body.get("metadata", {}).get("annotations") or {}).keys()
    return [key for key in decision.consumed if key in present]


def _child_events(report: Report) -> list[Event]:
    """The Events of children pruned, created and updated."""
    events = []
    if report.pruned:
        events.append(Event("Pruned", f"deleted {objects.keys(report.pruned)}"))
    if report.written:
        created = [ref for ref in report.written if ref not in report.existed]
        updated = [ref for ref in report.written if ref in report.existed]
        parts = (
            f"created {objects.keys(created)}" if created else "",
            f"updated {objects.keys(updated)}" if updated else "",
        )
        events.append(Event("Applied", "; ".join(part for part in parts if part)))
    return events


def _flip_events(before: list[models.Condition], after: list[models.Condition]) -> list[Event]:
    """An Event for each condition that flipped into a state worth telling a person about."""
    old = {c.type: c.status for c in before}
    events = []
    for cond in after:
        if old.get(cond.type) == cond.status:
            continue
        if cond.type == READY and cond.status == TRUE:
            events.append(Event("Ready", cond.message))
        elif cond.type in (SPEC_INVALID, SECRET_MISSING, CHILD_CONFLICT, DEGRADED) and cond.status == TRUE:
            events.append(Event(cond.type, cond.message, warning=True))
    return events


def _conditions(status: Mapping[str, Any]) -> list[models.Condition]:
    result = []
    for item in status.get("conditions") or []:
        try:
            result.append(models.Condition.model_validate(item))
        except pydantic.ValidationError:
            continue  # a condition someone else wrote in a shape we do not know: leave it out
    return result


# --- writing and announcing --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Report:
    """What one reconcile has to say besides its findings."""

    revision: str
    canary: models.CanaryStatus | None
    plan: tracks.Plan | None = None  # the canary plan, when one was made
    written: tuple[ObjectRef, ...] = ()  # children applied
    existed: frozenset[ObjectRef] = frozenset()  # of those, the ones that existed before
    pruned: tuple[ObjectRef, ...] = ()
    children: tuple[ObjectRef, ...] | None = None  # `status.children`; None: not known (left as it was)


class Reporter:
    """Writes the status subresource of AgentServices and announces what changed."""

    def __init__(
        self, client: Client, metrics: opmetrics.Metrics, *, clock: Callable[[], str], prometheus_url: str | None
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._clock = clock
        self._prometheus_url = prometheus_url
        self._written: dict[str, dict[str, Any]] = {}  # uid -> the status last written
        self._weights: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name) of a canary weight series

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted object, and its canary weight series."""
        self._written.pop(uid, None)
        identity = self._weights.pop(uid, None)
        if identity is not None:
            self._drop_weight(*identity)

    def shared(self, uid: str, status: Any) -> Any:
        """`status` itself, or the equal status last written for `uid` (one object, not two).

        The reconciler keeps every object's latest body for its loops; once the watch brings our
        own write back, that body's status equals what is remembered here, and keeping both copies
        would hold every status twice (11 KB each in Python objects: 110 MB at 10,000 services).
        Neither copy is ever changed in place.
        """
        written = self._written.get(uid)
        if written is not None and written == status:
            return written
        return status

    def previous(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """The status a reconcile starts from: the last one written, else the body's.

        Only the operator writes the status, so what it wrote last is never older than a body's
        copy, while a body may well be older: the watch event of our own write may not have
        arrived, and a resync pass may hold a body read before the latest change. Deciding a
        rollout from a stale `status.canary` could step it back. After a restart the body is all
        there is, and it is read fresh.
        """
        written = self._written.get(uid)
        if written is not None:
            return written
        return dict(body.get("status") or {})

    async def report(
        self, uid: str, body: Mapping[str, Any], findings: Findings, report: Report
    ) -> tuple[models.Phase, bool]:
        """Announce what this reconcile did and decided, then write the status if it differs.

        Everything is worked out first; then the writes, in order; then the canary metrics. The
        Events go before the status: a reader who sees a state in the status (`kubectl wait`, Argo
        CD, a test that marks the request log once the service is Ready) sees a status whose Events
        are already posted, so no Event of a past transition can land after it, inside what the
        reader takes for a quiet steady state. (Posted after, an Event of a flip trailed the status
        write by a request: a mark taken between the two saw a write at steady state.)
        """
        phase_, change, conds, previous = self._status(uid, body, findings, report)
        plan = report.plan
        announced = _child_events(report)
        if change is not None:
            announced += _flip_events(previous, conds)
        if plan is not None:
            announced += canary_events(plan)
        gates = _consumed(body, plan.decision) if plan is not None else []
        await self._client.post_events(body, announced)
        if change is not None:
            await self._client.patch_status(body, change[0])
            self._written[uid] = change[1]
        if gates:
            try:
                await self._client.remove_annotations(body, gates)
            except ApiError as exc:  # the next reconcile consumes them again
                log.warning("gate_removal_failed", service=body["metadata"]["name"], gates=gates, error=str(exc))
        if plan is not None:
            self._record(uid, body, plan)
        return phase_, change is not None

    def _status(
        self, uid: str, body: Mapping[str, Any], findings: Findings, report: Report
    ) -> tuple[
        models.Phase, tuple[dict[str, Any], dict[str, Any]] | None, list[models.Condition], list[models.Condition]
    ]:
        """The phase; the status patch and what to remember once written (None: nothing to write); the
        conditions after and before."""
        written = self._written.get(uid)
        if written is not None:
            # Start from what we wrote last, not from the body's copy. Only the operator writes these
            # keys, so its last write is never older than a body's, while a body often is: a resync
            # pass, a late watch event, a loop that took the body and then waited for the object's
            # lock, a body of a version another writer made before our write (the budget report's
            # `status.budget`). Fresh timestamps on such a body would look like a change: a second
            # write, a second Ready Event. (Versions cannot say which is newer: they are opaque.)
            body = {**body, "status": {**(body.get("status") or {}), **written}}
        live_status = body.get("status") or {}
        previous = _conditions(live_status)
        now = self._clock()
        phase_, conds = derive(findings, previous, now=now)
        plan = report.plan
        if plan is not None:
            wanted = canary_conditions(
                plan.spec, plan.status, plan.desired_revision, prometheus_url=self._prometheus_url
            )
            conds = with_canary_conditions(conds, wanted, generation=findings.generation, now=now)
        status: dict[str, Any] = {
            "phase": phase_.value,
            "observedGeneration": findings.generation,
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conds],
            "replicas": sum(w.desired for w in findings.workloads),
            "readyReplicas": sum(w.ready for w in findings.workloads),
            "revision": report.revision,
        }
        if report.canary is not None:
            status["canary"] = canary_json(report.canary)
        if report.children is not None:
            status["children"] = children_json(report.children)
        current = {k: live_status.get(k) for k in status}
        if current == status:
            return phase_, None, conds, previous
        patch = dict(status)
        if report.canary is not None and isinstance(live_status.get("canary"), Mapping):
            # a merge patch keeps keys it does not mention: null out the ones the new status dropped
            patch["canary"] = {**dict.fromkeys(live_status["canary"]), **status["canary"]}
        return phase_, (patch, status), conds, previous

    def _record(self, uid: str, body: Mapping[str, Any], plan: tracks.Plan) -> None:
        """The rollout's metrics: promotions and rollbacks that moved it, and the canary weight."""
        namespace, name = body["metadata"].get("namespace", "default"), body["metadata"]["name"]
        canary, decision = plan.status, plan.decision
        moved = decision_event(plan.prior, decision)
        if moved is not None:
            log.info("canary", service=name, namespace=namespace, reason=moved.reason, message=moved.message[:300])
        if decision.action == machine.Action.PROMOTE and moved is not None:
            self._metrics.promotions.labels(reason=decision.reason.value).inc()
        if decision.action == machine.Action.ROLL_BACK and moved is not None:
            self._metrics.rollbacks.labels(reason=decision.reason.value).inc()
        if plan.spec.enabled or machine.rollout_active(canary):
            self._metrics.canary_weight.labels(service=name, namespace=namespace).set(canary.weight)
            self._weights[uid] = (namespace, name)
        else:
            self._drop_weight(namespace, name)

    def _drop_weight(self, namespace: str, name: str) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.canary_weight.remove(name, namespace)

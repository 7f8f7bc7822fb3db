"""Status conditions and the phase, derived purely from what one reconcile observed.

kstatus-compatible: every condition carries type/status/reason/message/lastTransitionTime and
`observedGeneration`; `lastTransitionTime` moves only when a condition's status flips, so a
reconcile that observes the same state produces byte-identical conditions (and therefore no
status write). The six conditions are always present, so `kubectl wait --for=condition=Ready`
and Argo CD's health check can rely on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent_operator.api import models

READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
SPEC_INVALID: Final = "SpecInvalid"
SECRET_MISSING: Final = "SecretMissing"
CHILD_CONFLICT: Final = "ChildConflict"
ORDER: Final = (READY, PROGRESSING, DEGRADED, SPEC_INVALID, SECRET_MISSING, CHILD_CONFLICT)

TRUE = models.ConditionStatus.TRUE
FALSE = models.ConditionStatus.FALSE
UNKNOWN = models.ConditionStatus.UNKNOWN


@dataclasses.dataclass(frozen=True)
class Workload:
    """Roll-out state of one Deployment, as read from the API."""

    name: str
    desired: int
    ready: int
    updated: int
    current: bool  # the controller has observed the latest generation
    failure: str = ""  # why the Deployment controller gave up (ProgressDeadlineExceeded, ReplicaFailure)

    @property
    def rolled_out(self) -> bool:
        return self.current and self.updated >= self.desired and self.ready >= self.desired


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything one reconcile learned; the input of `derive`."""

    generation: int | None
    spec_error: str = ""
    missing_secrets: tuple[str, ...] = ()
    workloads: tuple[Workload, ...] = ()
    apply_error: str = ""
    skipped: tuple[str, ...] = ()  # children whose API the cluster does not serve
    conflicts: tuple[str, ...] = ()  # `Kind/name` of children that exist but belong to someone else


def workload(deployment: Mapping[str, Any]) -> Workload:
    """Read a live Deployment's roll-out state (the Deployment controller's own fields)."""
    meta = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    failure = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            failure = f"{cond.get('reason', 'ProgressDeadlineExceeded')}: {cond.get('message', '')}".rstrip(": ")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = f"{cond.get('reason', 'ReplicaFailure')}: {cond.get('message', '')}".rstrip(": ")
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    return Workload(
        name=str(meta.get("name", "")),
        desired=desired,
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        current=generation is None or (observed is not None and int(observed) >= int(generation)),
        failure=failure,
    )


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


def _wanted(obs: Observation) -> list[tuple[str, models.ConditionStatus, str, str]]:
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


def conflict_message(conflicts: Sequence[str]) -> str:
    """What a person reads about children that exist but are not this AgentService's."""
    which = ", ".join(conflicts)
    return (
        f"{which} already exist{'s' if len(conflicts) == 1 else ''} and {'is' if len(conflicts) == 1 else 'are'}"
        " not controlled by this AgentService: left untouched; delete or rename "
        f"{'it' if len(conflicts) == 1 else 'them'} and the operator creates its own"
    )


def derive(
    obs: Observation, previous: Sequence[models.Condition], *, now: str
) -> tuple[models.Phase, list[models.Condition]]:
    """The phase and the full condition list after `obs`, keeping unrelated conditions."""
    conditions = list(previous)
    for type_, status, reason, message in _wanted(obs):
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
    if state.get(SPEC_INVALID) == TRUE:
        return models.Phase.FAILED
    if state.get(DEGRADED) == TRUE:
        return models.Phase.DEGRADED
    if state.get(READY) == TRUE:
        return models.Phase.READY
    if state.get(PROGRESSING) == TRUE:
        return models.Phase.PROGRESSING
    return models.Phase.PENDING

"""The canary state machine: from `spec.canary`, the current status and what was observed, the next
action and the next `CanaryStatus`. Pure: no clock, no client, no I/O.

The rules, in the order `decide` applies them, the gates and the counters are in docs/canary.md
("The state machine"); each rule has a unit test in tests/unit/operator/test_canary.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from agent_operator.api import models
from agent_operator.canary import analysis
from agent_operator.canary import evaluation as gates_of
from agent_operator.manifests import naming

HISTORY_LIMIT: Final = 10
ACTIVE_PHASES: Final = frozenset({models.CanaryPhase.PROGRESSING, models.CanaryPhase.PAUSED})
UNSET_VALUES: Final = frozenset({"false", "0", "no", "off"})
ONE_SHOT_VALUES: Final = frozenset({"", "true", "yes", "1"})
STEP_PREFIX: Final = "step:"  # agentops.dev/promote=step:<weight>: promote one step, from that weight


class Action(StrEnum):
    """What the operator does to the Deployments (and reports as an Event)."""

    NONE = "none"  # no rollout: stable runs status.stable_revision, no canary
    SET_WEIGHT = "set-weight"  # canary (re)sized to status.weight
    WAIT = "wait"  # keep the current weight
    PAUSE = "pause"  # keep the current weight; a person should look (reason in the message)
    PROMOTE = "promote"  # stable takes the new template, canaries removed
    ROLL_BACK = "roll-back"  # canaries removed, stable kept


class Reason(StrEnum):
    """Why: CamelCase, for conditions, Events and the rollbacks-by-reason metric."""

    FIRST_DEPLOY = "FirstDeploy"
    STEADY = "Steady"
    DIRECT_UPDATE = "DirectUpdate"
    ROLLOUT_STARTED = "RolloutStarted"
    NOTHING_TO_ANALYSE = "NothingToAnalyse"
    NEW_REVISION = "NewRevision"
    REVERTED = "Reverted"
    ABORTED = "Aborted"
    PROMOTED_BY_ANNOTATION = "PromotedByAnnotation"
    STEP_PROMOTED_BY_ANNOTATION = "StepPromotedByAnnotation"
    CANARY_DISABLED = "CanaryDisabled"
    PAUSED_BY_SPEC = "PausedBySpec"
    STEPS_CHANGED = "StepsChanged"
    WAITING = "WaitingForAnalysis"
    RESUMED = "Resumed"
    STALE_ANALYSIS = "StaleAnalysis"
    ANALYSIS_PASSED = "AnalysisPassed"
    ANALYSIS_FAILED = "AnalysisFailed"
    FAILURE_LIMIT = "FailureLimitReached"
    ANALYSIS_INCONCLUSIVE = "AnalysisInconclusive"
    ANALYSIS_ERROR = "AnalysisError"
    INCONCLUSIVE_LIMIT = "InconclusiveLimitReached"
    STAYS_ROLLED_BACK = "RolledBack"
    RETRIED = "RetriedByAnnotation"
    WAITING_FOR_EVALUATION = "WaitingForEvaluation"
    EVALUATION_PASSED = "EvaluationPassed"
    EVALUATION_FAILED = "EvaluationFailed"
    EVALUATION_INCONCLUSIVE = "EvaluationInconclusive"


@dataclass(frozen=True)
class Observation:
    """What the operator saw this time round."""

    desired_revision: str  # pod-template hash of the spec as it is now
    annotations: Mapping[str, str] = field(default_factory=dict)  # the AgentService's annotations
    analysis: models.Analysis | None = None  # set when an analysis ran since the last decision
    live_stable_revision: str = ""  # revision of existing stable Deployments, for a status that lost it
    evaluations: tuple[models.EvaluationResult, ...] = ()  # results of evaluation Jobs seen now


@dataclass(frozen=True)
class Decision:
    """The next action, why, the next status, and the one-shot gate annotations to remove."""

    action: Action
    reason: Reason
    status: models.CanaryStatus
    consumed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    """Replicas of each track and the canary weight (percent) they actually give."""

    stable: int
    canary: int
    actual_weight: int


@dataclass(frozen=True)
class _Gates:
    promote: bool
    abort: bool
    consumed: tuple[str, ...]
    step_from: int | None = None  # promote one step, when the rollout stands at this weight
    retry: bool = False  # start the rolled-back revision's rollout again, from the first step


def rollout_active(status: models.CanaryStatus) -> bool:
    """True while canary Deployments should exist (Progressing or Paused)."""
    return status.phase in ACTIVE_PHASES


def needs_analysis(spec: models.Canary, status: models.CanaryStatus) -> bool:
    """True when analyses should run every interval: an active rollout not paused by spec."""
    return spec.enabled and rollout_active(status) and not spec.paused and status.gate != gates_of.BEFORE


def evaluation_gate(spec: models.Canary, status: models.CanaryStatus) -> str:
    """The gate whose suites should run now ('' for none): `before`, or the step's while its suites have not passed."""
    if not spec.enabled or not rollout_active(status):
        return ""
    if status.gate == gates_of.BEFORE:
        return gates_of.BEFORE
    if spec.evaluation.at_each_step and status.weight > 0:
        return gates_of.step_gate(status.weight)
    return ""


def split(total: int, weight: int) -> Split:
    """Divide `total` replicas between the tracks for `weight` percent of canary.

    Rounds to the nearest count, ties toward stable (the canary never gets more than asked on a
    tie); a weight above 0 always gets at least one canary pod and a weight below 100 keeps at
    least one stable pod, so a one-replica service briefly runs two (one per track).
    """
    if total <= 0 or weight <= 0:
        return Split(stable=max(total, 0), canary=0, actual_weight=0)
    if weight >= 100:
        return Split(stable=0, canary=total, actual_weight=100)
    canary = min(max(1, (total * weight + 49) // 100), max(total - 1, 1))
    stable = max(1, total - canary)
    actual = (100 * canary + (canary + stable) // 2) // (canary + stable)
    return Split(stable=stable, canary=canary, actual_weight=actual)


def decide(spec: models.Canary, status: models.CanaryStatus, observed: Observation) -> Decision:
    """The next action and status; see the module docstring for the rules, in order."""
    gates = _gates(observed.annotations, observed.desired_revision)
    if not status.stable_revision:
        stable = observed.live_stable_revision or observed.desired_revision
        status = status.model_copy(update={"stable_revision": stable})
        if stable == observed.desired_revision and not rollout_active(status):
            fresh = models.CanaryStatus(stable_revision=stable, message=f"serving revision {stable}")
            return Decision(Action.NONE, Reason.FIRST_DEPLOY, fresh, gates.consumed)
    if rollout_active(status):
        decision = _during_rollout(spec, status, observed, gates)
    else:
        decision = _at_rest(spec, status, observed.desired_revision, gates)
    return dataclasses.replace(decision, consumed=gates.consumed)


# --- rules -----------------------------------------------------------------------------------------


def _step_from(value: str) -> int | None:
    """The weight of a `step:<weight>` gate value (-1 when the weight is not a number: never matches)."""
    weight = value.removeprefix(STEP_PREFIX).strip()
    return int(weight) if weight.isdigit() else -1


def _gates(annotations: Mapping[str, str], desired: str) -> _Gates:
    def gate(key: str) -> tuple[bool, bool]:  # (acts, consumed)
        if key not in annotations:
            return False, False
        value = annotations[key].strip().lower()
        if value in UNSET_VALUES:
            return False, False
        if value in ONE_SHOT_VALUES:
            return True, True
        return value == desired.lower(), False

    step_from = None
    promote_value = annotations.get(naming.PROMOTE_ANNOTATION, "").strip().lower()
    if promote_value.startswith(STEP_PREFIX):
        step_from = _step_from(promote_value)
        promote, promote_consumed = False, True
    else:
        promote, promote_consumed = gate(naming.PROMOTE_ANNOTATION)
    abort, abort_consumed = gate(naming.ABORT_ANNOTATION)
    retry, retry_consumed = gate(naming.RETRY_ANNOTATION)
    consumed = tuple(
        key
        for key, used in (
            (naming.PROMOTE_ANNOTATION, promote_consumed),
            (naming.ABORT_ANNOTATION, abort_consumed),
            (naming.RETRY_ANNOTATION, retry_consumed),
        )
        if used
    )
    return _Gates(promote=promote, abort=abort, consumed=consumed, step_from=step_from, retry=retry)


def _at_rest(spec: models.Canary, status: models.CanaryStatus, desired: str, gates: _Gates) -> Decision:
    stable = status.stable_revision
    if desired == stable:
        if status.phase == models.CanaryPhase.ROLLED_BACK:
            update = {"phase": models.CanaryPhase.IDLE, "canary_revision": "", "message": f"reverted to {stable}"}
            return Decision(Action.NONE, Reason.REVERTED, _rest(status, **update))
        return Decision(Action.NONE, Reason.STEADY, _rest(status))
    if not spec.enabled:
        message = f"canary disabled: revision {desired} replaces {stable} directly"
        return Decision(Action.NONE, Reason.DIRECT_UPDATE, _fresh(desired, models.CanaryPhase.IDLE, message))
    if gates.abort:
        return _roll_back(status, desired, Reason.ABORTED, "aborted by annotation before the rollout started")
    if gates.promote:
        return _promote(status, desired, Reason.PROMOTED_BY_ANNOTATION, "promoted by annotation")
    if status.phase == models.CanaryPhase.ROLLED_BACK and desired == status.canary_revision:
        if gates.retry:  # a person judged the failure passing (a flaky provider): analyse it afresh
            return _start(spec, status, desired, Reason.RETRIED)
        return Decision(Action.NONE, Reason.STAYS_ROLLED_BACK, _rest(status))
    return _start(spec, status, desired, Reason.ROLLOUT_STARTED)


def _during_rollout(spec: models.Canary, status: models.CanaryStatus, observed: Observation, gates: _Gates) -> Decision:
    desired = observed.desired_revision
    if gates.abort:
        return _roll_back(status, desired, Reason.ABORTED, "aborted by annotation")
    if gates.promote:
        return _promote(status, desired, Reason.PROMOTED_BY_ANNOTATION, "promoted by annotation")
    if not spec.enabled:
        message = f"canary disabled: revision {desired} applied directly"
        return _promote(status, desired, Reason.CANARY_DISABLED, message, phase=models.CanaryPhase.IDLE)
    if desired == status.stable_revision:
        message = f"spec reverted to the stable revision {desired}: rollout of {status.canary_revision} cancelled"
        return Decision(
            Action.ROLL_BACK, Reason.REVERTED, _rest(status, phase=models.CanaryPhase.IDLE, message=message)
        )
    if desired != status.canary_revision:
        return _start(spec, status, desired, Reason.NEW_REVISION)
    if status.total_failures >= spec.failure_limit:
        message = f"{status.total_failures} failed analyses reach failureLimit {spec.failure_limit}"
        return _roll_back(status, desired, Reason.FAILURE_LIMIT, message)
    if gates.step_from is not None and gates.step_from == status.weight and len(spec.steps) > 1:
        return _step(spec, status, desired)
    if spec.paused:
        message = f"paused by spec.canary.paused at weight {status.weight}"
        return Decision(Action.PAUSE, Reason.PAUSED_BY_SPEC, _update(status, models.CanaryPhase.PAUSED, message))
    return _evaluated_then_analysed(spec, status, observed, desired)


def _evaluated_then_analysed(
    spec: models.Canary, status: models.CanaryStatus, observed: Observation, desired: str
) -> Decision:
    """The rules after the gates: the evaluation gate, steps that changed, then the step's analysis."""
    if status.gate == gates_of.BEFORE or spec.evaluation.at_each_step:
        results = gates_of.merge(status.evaluation, observed.evaluations, desired)
        status = status.model_copy(update={"evaluation": results})
        gated = _evaluation_rules(spec, status, desired)
        if gated is not None:
            return gated
    if len(spec.steps) == 1:
        return _promote(status, desired, Reason.STEPS_CHANGED, "steps are [100]: nothing left to analyse")
    index = min(status.step_index, len(spec.steps) - 2)
    if spec.steps[index] != status.weight or index != status.step_index:
        weight = spec.steps[index]
        message = f"steps changed: weight {status.weight} -> {weight}"
        moved = status.model_copy(update={"step_index": index, "weight": weight})
        return Decision(Action.SET_WEIGHT, Reason.STEPS_CHANGED, _update(moved, _holding_phase(spec, moved), message))
    result = observed.analysis
    if result is None or result.weight != status.weight:
        return _wait(spec, status, stale=result is not None)
    return _judged(spec, _record(status, result), result, desired)


def _judged(spec: models.Canary, status: models.CanaryStatus, result: models.Analysis, desired: str) -> Decision:
    verdict = _verdict(result.verdict)
    summary = analysis.summary(result)
    if verdict == analysis.Verdict.SUCCESS:
        passed = status.model_copy(update={"consecutive_failures": 0, "inconclusive_streak": 0})
        index = status.step_index + 1
        if index >= len(spec.steps) - 1:
            return _promote(passed, desired, Reason.ANALYSIS_PASSED, f"every step passed; {summary}")
        moved = passed.model_copy(update={"step_index": index, "weight": spec.steps[index]})
        message = f"weight {status.weight} -> {spec.steps[index]}: {summary}"
        return Decision(
            Action.SET_WEIGHT, Reason.ANALYSIS_PASSED, _update(moved, models.CanaryPhase.PROGRESSING, message)
        )
    if verdict == analysis.Verdict.FAILURE:
        failed = status.model_copy(
            update={
                "consecutive_failures": status.consecutive_failures + 1,
                "total_failures": status.total_failures + 1,
                "inconclusive_streak": 0,
            }
        )
        counts = f"{failed.total_failures} of failureLimit {spec.failure_limit} failed analyses"
        if failed.total_failures >= spec.failure_limit:
            return _roll_back(failed, desired, Reason.FAILURE_LIMIT, f"{counts}: {summary}")
        held = _update(
            failed, models.CanaryPhase.PROGRESSING, f"holding at weight {status.weight}, {counts}: {summary}"
        )
        return Decision(Action.WAIT, Reason.ANALYSIS_FAILED, held)
    streak = status.inconclusive_streak + 1
    counted = status.model_copy(update={"inconclusive_streak": streak})
    counts = f"{streak} inconclusive or errored analyses in a row (inconclusiveLimit {spec.inconclusive_limit})"
    if streak >= spec.inconclusive_limit:
        paused = _update(counted, models.CanaryPhase.PAUSED, f"paused: {counts}; still analysing: {summary}")
        return Decision(Action.PAUSE, Reason.INCONCLUSIVE_LIMIT, paused)
    reason = Reason.ANALYSIS_ERROR if verdict == analysis.Verdict.ERROR else Reason.ANALYSIS_INCONCLUSIVE
    held = _update(counted, models.CanaryPhase.PROGRESSING, f"holding at weight {status.weight}, {counts}: {summary}")
    return Decision(Action.WAIT, reason, held)


def _evaluation_rules(spec: models.Canary, status: models.CanaryStatus, desired: str) -> Decision | None:
    """The evaluation gate standing before the analyses, or None when it has passed (the analyses go on)."""
    results = status.evaluation
    gate = gates_of.BEFORE if status.gate == gates_of.BEFORE else gates_of.step_gate(status.weight)
    state = gates_of.gate_state(spec, results, desired, gate)
    if state.verdict == gates_of.GateVerdict.FAIL:
        return _roll_back(status, desired, Reason.EVALUATION_FAILED, state.message)
    if state.verdict == gates_of.GateVerdict.INCONCLUSIVE:
        message = f"paused: evaluation inconclusive ({gate}), never taken for a pass: {state.message}"
        return Decision(
            Action.PAUSE, Reason.EVALUATION_INCONCLUSIVE, _update(status, models.CanaryPhase.PAUSED, message)
        )
    if state.verdict == gates_of.GateVerdict.WAITING:
        return Decision(
            Action.WAIT, Reason.WAITING_FOR_EVALUATION, _update(status, models.CanaryPhase.PROGRESSING, state.message)
        )
    if gate != gates_of.BEFORE:
        return None  # the step's suites passed: its analysis decides as usual
    if len(spec.steps) == 1:
        return _promote(status, desired, Reason.EVALUATION_PASSED, f"before suites passed: {state.message}")
    weight = spec.steps[0]
    moved = status.model_copy(update={"gate": "", "weight": weight, "step_index": 0})
    message = f"before suites passed, first step at weight {weight}: {state.message}"
    return Decision(
        Action.SET_WEIGHT, Reason.EVALUATION_PASSED, _update(moved, models.CanaryPhase.PROGRESSING, message)
    )


def _step(spec: models.Canary, status: models.CanaryStatus, desired: str) -> Decision:
    """One step further by hand, as a passed analysis would move it (a person settled the streak too)."""
    index = min(status.step_index, len(spec.steps) - 2) + 1
    if index >= len(spec.steps) - 1:
        message = f"promoted by annotation from weight {status.weight}, the last step"
        return _promote(status, desired, Reason.STEP_PROMOTED_BY_ANNOTATION, message)
    weight = spec.steps[index]
    moved = status.model_copy(update={"step_index": index, "weight": weight, "inconclusive_streak": 0})
    phase = models.CanaryPhase.PAUSED if spec.paused else models.CanaryPhase.PROGRESSING
    message = f"weight {status.weight} -> {weight}: promoted one step by annotation"
    return Decision(Action.SET_WEIGHT, Reason.STEP_PROMOTED_BY_ANNOTATION, _update(moved, phase, message))


def _verdict(value: str) -> analysis.Verdict:
    """The analysis verdict; anything unrecognised counts as an error, never as a success."""
    try:
        return analysis.Verdict(value)
    except ValueError:
        return analysis.Verdict.ERROR


def _holding_phase(spec: models.Canary, status: models.CanaryStatus) -> models.CanaryPhase:
    """Paused while the inconclusive streak is at its limit, else Progressing."""
    if status.inconclusive_streak >= spec.inconclusive_limit:
        return models.CanaryPhase.PAUSED
    return models.CanaryPhase.PROGRESSING


def _wait(spec: models.Canary, status: models.CanaryStatus, *, stale: bool) -> Decision:
    phase = _holding_phase(spec, status)
    if phase == models.CanaryPhase.PAUSED:
        return Decision(Action.PAUSE, Reason.INCONCLUSIVE_LIMIT, _update(status, phase, status.message))
    if stale:
        message = f"ignored an analysis taken at another weight; waiting at weight {status.weight}"
        return Decision(Action.WAIT, Reason.STALE_ANALYSIS, _update(status, phase, message))
    if status.phase == models.CanaryPhase.PAUSED:
        message = f"resumed at weight {status.weight}"
        return Decision(Action.WAIT, Reason.RESUMED, _update(status, phase, message))
    return Decision(Action.WAIT, Reason.WAITING, _update(status, phase, status.message))


# --- status builders -------------------------------------------------------------------------------


def _update(status: models.CanaryStatus, phase: models.CanaryPhase, message: str) -> models.CanaryStatus:
    return status.model_copy(update={"phase": phase, "message": message})


def _rest(status: models.CanaryStatus, **update: Any) -> models.CanaryStatus:
    """The status at rest: no canary, weight 0, everything else kept (counters, last analysis)."""
    return status.model_copy(update={"weight": 0, "actual_weight": 0, "step_index": 0, "gate": "", **update})


def _fresh(stable: str, phase: models.CanaryPhase, message: str) -> models.CanaryStatus:
    return models.CanaryStatus(phase=phase, stable_revision=stable, message=message)


def _record(status: models.CanaryStatus, result: models.Analysis) -> models.CanaryStatus:
    """Keep the analysis as the last one and in the bounded history (oldest dropped first)."""
    history = [*status.history, result][-HISTORY_LIMIT:]
    return status.model_copy(update={"last_analysis": result, "history": history})


def _start(spec: models.Canary, status: models.CanaryStatus, desired: str, reason: Reason) -> Decision:
    """A rollout of `desired` from its first step (or its `before` gate), counters and history reset."""
    if spec.evaluation.before:
        names = ", ".join(spec.evaluation.before)
        fresh = models.CanaryStatus(
            phase=models.CanaryPhase.PROGRESSING,
            weight=0,
            step_index=0,
            stable_revision=status.stable_revision,
            canary_revision=desired,
            gate=gates_of.BEFORE,
            message=f"rollout of revision {desired}: no user task reaches it until its before suites pass ({names})",
        )
        return Decision(Action.SET_WEIGHT, reason, fresh)
    if len(spec.steps) == 1:
        return _promote(status, desired, Reason.NOTHING_TO_ANALYSE, "steps are [100]: promoted without analysis")
    weight = spec.steps[0]
    phase = models.CanaryPhase.PAUSED if spec.paused else models.CanaryPhase.PROGRESSING
    verb = {Reason.NEW_REVISION: "restarted on newer", Reason.RETRIED: "retried for"}.get(reason, "started for")
    message = f"rollout {verb} revision {desired} at weight {weight}"
    if spec.paused:
        message += " (paused by spec.canary.paused)"
    fresh = models.CanaryStatus(
        phase=phase,
        weight=weight,
        step_index=0,
        stable_revision=status.stable_revision,
        canary_revision=desired,
        message=message,
    )
    return Decision(Action.SET_WEIGHT, reason, fresh)


def _promote(
    status: models.CanaryStatus,
    desired: str,
    reason: Reason,
    message: str,
    *,
    phase: models.CanaryPhase = models.CanaryPhase.PROMOTED,
) -> Decision:
    """The stable track takes `desired`; counters and history stay as the record of the rollout."""
    text = f"revision {desired} promoted: {message}" if phase == models.CanaryPhase.PROMOTED else message
    promoted = _rest(status, phase=phase, stable_revision=desired, canary_revision="", message=text)
    return Decision(Action.PROMOTE, reason, promoted)


def _roll_back(status: models.CanaryStatus, desired: str, reason: Reason, message: str) -> Decision:
    """Canaries removed, stable kept; `canary_revision` remembers what was rolled back."""
    text = f"revision {desired} rolled back, {status.stable_revision} kept: {message}"
    rolled = _rest(status, phase=models.CanaryPhase.ROLLED_BACK, canary_revision=desired, message=text)
    return Decision(Action.ROLL_BACK, reason, rolled)

"""`status.canary.rollouts`: how past rollouts ended, the record `kubectl agentservice history` reads.

Pure, like `canary.py`: the decision says whether a rollout ended and how, this module turns that
into a bounded list. `status.canary.history` keeps the last analyses of the current rollout and is
reset when a new one starts, so it cannot answer "what happened to the last few rollouts"; this
list survives across rollouts.

A rollout ends when a decision promotes or rolls back (whatever the phase before: a promote or
abort annotation at rest, or `steps: [100]`, end one that never ran a canary), or when a newer
revision replaces the one being rolled out (`Superseded`). Everything else (waiting, steps, the
revert of a rolled-back spec, a direct update with canaries disabled) is not the end of a rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from agent_operator.api import models
from agent_operator.canary import machine

LIMIT: Final = 10


def outcome(prior: models.CanaryStatus, decision: machine.Decision) -> models.RolloutRecord | None:
    """The record of the rollout this decision ends (without its time), or None."""
    new = decision.status
    if _already_ended(prior, new):
        # a gate seen again before its removal reached the body (a stale watch event) ends nothing
        return None
    if decision.action == machine.Action.PROMOTE:
        return _record(prior, new.stable_revision, "Promoted", decision)
    if decision.action == machine.Action.ROLL_BACK:
        # Reverted: the spec went back to the stable revision during the rollout; nothing failed.
        kind = "Reverted" if decision.reason == machine.Reason.REVERTED else "RolledBack"
        return _record(prior, new.canary_revision, kind, decision)
    if decision.reason == machine.Reason.NEW_REVISION and machine.rollout_active(prior):
        return _record(prior, prior.canary_revision, "Superseded", decision)
    return None


def updated(
    prior: models.CanaryStatus, decision: machine.Decision, now: Callable[[], str]
) -> list[models.RolloutRecord]:
    """`prior.rollouts`, plus the rollout this decision ends (stamped `now()`), the oldest dropped."""
    ended = outcome(prior, decision)
    if ended is None:
        return list(prior.rollouts)
    return [*prior.rollouts, ended.model_copy(update={"finished_time": now()})][-LIMIT:]


def _already_ended(prior: models.CanaryStatus, new: models.CanaryStatus) -> bool:
    """The decision restates how the last rollout ended: same phase, same revisions."""
    return (
        prior.phase == new.phase
        and prior.phase in (models.CanaryPhase.PROMOTED, models.CanaryPhase.ROLLED_BACK)
        and (prior.stable_revision, prior.canary_revision) == (new.stable_revision, new.canary_revision)
    )


def _record(prior: models.CanaryStatus, revision: str, kind: str, decision: machine.Decision) -> models.RolloutRecord:
    return models.RolloutRecord(
        revision=revision,
        stable_revision=prior.stable_revision,
        outcome=kind,
        reason=decision.reason.value,
        message=decision.status.message,
    )

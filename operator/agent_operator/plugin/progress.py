"""Where an AgentService's rollout stands, for `status` (a CI gate): one verdict from the object. Pure.

The verdicts and the exit codes `status` turns them into (docs/plugin.md):

- Ready (0): the operator has seen the spec the API server holds (`status.observedGeneration`),
  the service is Ready and no rollout is in progress;
- Failed (3): the spec was refused (phase Failed) or its revision was rolled back (the canary's
  analyses failed, or it was aborted): waiting longer will not change it;
- Waiting: anything else (not yet observed, pods starting, Degraded, a canary progressing or
  paused): `status` goes on watching until `--timeout` (4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from agent_operator.api import models

EXIT_READY: Final = 0
EXIT_FAILED: Final = 3
EXIT_TIMEOUT: Final = 4


class State(StrEnum):
    READY = "Ready"
    FAILED = "Failed"
    WAITING = "Waiting"


@dataclasses.dataclass(frozen=True)
class Verdict:
    state: State
    message: str

    @property
    def done(self) -> bool:
        return self.state != State.WAITING

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.state == State.FAILED else EXIT_READY


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return {}


def verdict(svc: Mapping[str, Any]) -> Verdict:
    """The verdict on one AgentService object as read from the API server."""
    meta = svc.get("metadata") or {}
    status = svc.get("status") or {}
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (not isinstance(observed, int) or observed < generation):
        return Verdict(State.WAITING, f"the operator has not yet reconciled generation {generation}")
    phase = status.get("phase") or models.Phase.PENDING.value
    canary = status.get("canary") or {}
    canary_phase = canary.get("phase") or models.CanaryPhase.IDLE.value
    if phase == models.Phase.FAILED.value:
        why = _condition(status, "SpecInvalid").get("message") or "the spec cannot be served"
        return Verdict(State.FAILED, f"Failed: {why}")
    if canary_phase == models.CanaryPhase.ROLLED_BACK.value:
        revision = canary.get("canaryRevision") or "?"
        why = canary.get("message") or "rolled back"
        return Verdict(State.FAILED, f"revision {revision} rolled back: {why}")
    if canary_phase in (models.CanaryPhase.PROGRESSING.value, models.CanaryPhase.PAUSED.value):
        weight = canary.get("weight", 0)
        why = canary.get("message") or ""
        return Verdict(State.WAITING, f"rollout {canary_phase.lower()} at weight {weight}%: {why}".rstrip(": "))
    ready, wanted = status.get("readyReplicas", 0), status.get("replicas", 0)
    if phase == models.Phase.READY.value:
        return Verdict(State.READY, f"Ready: {ready}/{wanted} pods ready, revision {status.get('revision') or '?'}")
    why = _condition(status, "Ready").get("message") or _condition(status, "Degraded").get("message") or ""
    return Verdict(State.WAITING, f"{phase}: {ready}/{wanted} pods ready" + (f": {why}" if why else ""))

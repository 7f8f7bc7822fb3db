"""Events are posted before the status write that shows their state (the real operator, the dev cluster).

Covers: for every status write of a service's life (created, Ready, a rollout paused), every Event
of the same reconcile reached the API server before the status did. A reader who waits for a state
in the status (`kubectl wait --for=condition=Ready`, a test marking the request log once Ready)
therefore never sees an Event of that transition arrive afterwards, inside what it takes for a
quiet steady state: the cause of Events "at steady state" in the HA and paused-rollout tests.
"""

from __future__ import annotations

import json
from typing import Any

from tests.integration.operator.conftest import Operator, agent_service, events, ready_service


def _writes(op: Operator) -> list[tuple[str, str, Any]]:
    """(kind of write, reason or '', body) of the operator's Event posts and status patches, in order."""
    found = []
    for request in op.cluster.writes(0):
        path = request.url.path
        if request.method == "POST" and path.endswith("/events"):
            found.append(("event", json.loads(request.body)["reason"], None))
        elif request.method == "PATCH" and path.endswith("/status"):
            found.append(("status", "", json.loads(request.body)))
    return found


def _ready_true(patch: Any) -> bool:
    conditions = (patch.get("status") or patch).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def test_the_ready_event_is_posted_before_the_status_that_says_ready(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    writes = _writes(operator)
    ready_status = next(i for i, (kind, _, body) in enumerate(writes) if kind == "status" and _ready_true(body))
    ready_events = [i for i, (kind, reason, _) in enumerate(writes) if kind == "event" and reason == "Ready"]
    assert ready_events, writes
    assert ready_events[0] < ready_status, f"the Ready Event came after the status that says Ready: {writes}"
    assert len(events(operator, "Ready")) == 1

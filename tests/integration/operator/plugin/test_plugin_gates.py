"""`kubectl agentservice promote | abort | pause | resume | history` against the real operator on
the dev cluster (no Prometheus, so only the gates move a rollout).

Covers: `promote` moves one step (10 -> 50), then promotes from the last step below 100; the
operator records the rollout and `history` shows it; `pause` and `resume` toggle
`spec.canary.paused` (the operator shows Paused, then Progressing) and say when nothing changes;
`abort` rolls the next rollout back; `promote --full` promotes a rollout at once; every command
prints one line naming what changed; promote and abort with nothing in progress fail.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.integration.operator.conftest import eventually
from tests.integration.operator.plugin.conftest import plugin
from tests.integration.operator.test_canary_rollout import (
    NEW_IMAGE,
    CanaryOperator,
    canary_of,
    canary_service,
    start_rollout,
)


async def new_image(op: CanaryOperator, image: str) -> None:
    live = copy.deepcopy(op.service())
    assert live is not None
    live["spec"]["image"] = image
    await op.put(live)


def outcomes(op: CanaryOperator) -> list[tuple[str, str]]:
    return [(r["outcome"], r["reason"]) for r in canary_of(op).get("rollouts") or []]


async def one_line(kubeconfig: Path, *args: str) -> str:
    result = await plugin(kubeconfig, *args)
    assert (result.code, result.err) == (0, ""), result
    assert len(result.out.splitlines()) == 1, result.out
    return result.out


async def test_promote_step_by_step_then_history(op: CanaryOperator, kubeconfig: Path) -> None:
    body: dict[str, Any] = canary_service(inconclusiveLimit=100)
    await start_rollout(op, body)
    await eventually(lambda: canary_of(op).get("weight") == 10, timeout=30)
    revision = canary_of(op)["canaryRevision"]

    line = await one_line(kubeconfig, "promote", "demo")
    assert line == (
        f"agentservice/demo: promote revision {revision} one step: weight 10% -> 50% (agentops.dev/promote=step:10)\n"
    )
    await eventually(lambda: canary_of(op).get("weight") == 50, timeout=30)
    # the operator removes the one-shot gate once it has acted
    await eventually(lambda: "agentops.dev/promote" not in ((op.service() or {})["metadata"].get("annotations") or {}))

    assert (
        await one_line(kubeconfig, "pause", "demo") == "agentservice/demo: paused (spec.canary.paused: false -> true)\n"
    )
    await eventually(lambda: canary_of(op).get("phase") == "Paused", timeout=30)
    assert await one_line(kubeconfig, "pause", "demo") == (
        "agentservice/demo: already paused (spec.canary.paused is true)\n"
    )
    assert await one_line(kubeconfig, "resume", "demo") == (
        "agentservice/demo: resumed (spec.canary.paused: true -> false)\n"
    )
    await eventually(lambda: canary_of(op).get("phase") == "Progressing", timeout=30)

    line = await one_line(kubeconfig, "promote", "demo")
    assert "in full" in line and line.endswith("(agentops.dev/promote=step:50)\n"), line
    await eventually(lambda: canary_of(op).get("phase") == "Promoted", timeout=30)
    assert outcomes(op) == [("Promoted", "StepPromotedByAnnotation")]

    history = await plugin(kubeconfig, "history", "demo")
    rows = [line.split() for line in history.out.splitlines()]
    assert rows[0] == ["#", "FINISHED", "REVISION", "FROM", "OUTCOME", "REASON"]
    assert rows[1][0] == "1" and rows[1][3:] == [
        revision,
        canary_of(op)["rollouts"][0]["stableRevision"],
        "Promoted",
        "StepPromotedByAnnotation",
    ]

    nothing = await plugin(kubeconfig, "promote", "demo")
    assert (nothing.code, nothing.err) == (
        1,
        'error: agentservice "demo" has no rollout in progress (rollout phase Promoted)\n',
    )


async def test_abort_then_promote_full(op: CanaryOperator, kubeconfig: Path) -> None:
    body: dict[str, Any] = canary_service(inconclusiveLimit=100)
    await start_rollout(op, body)
    await eventually(lambda: canary_of(op).get("phase") == "Progressing", timeout=30)
    status = canary_of(op)
    line = await one_line(kubeconfig, "abort", "demo")
    assert line == (
        f"agentservice/demo: abort: revision {status['canaryRevision']} rolled back, "
        f"{status['stableRevision']} kept (agentops.dev/abort=true)\n"
    )
    await eventually(lambda: canary_of(op).get("phase") == "RolledBack", timeout=30)
    # The gate is removed after the status is written: a copy of the object read before that would
    # carry it into the next spec, and abort the next rollout too.
    await eventually(lambda: "agentops.dev/abort" not in ((op.service() or {})["metadata"].get("annotations") or {}))

    await new_image(op, NEW_IMAGE + "-fixed")
    await eventually(lambda: canary_of(op).get("phase") == "Progressing", timeout=30)
    line = await one_line(kubeconfig, "promote", "demo", "--full")
    assert line.endswith("(agentops.dev/promote=true)\n") and "in full" in line, line
    await eventually(lambda: canary_of(op).get("phase") == "Promoted", timeout=30)
    assert outcomes(op) == [("RolledBack", "Aborted"), ("Promoted", "PromotedByAnnotation")]

"""Canary rollouts wired into the real operator on the dev cluster (no Prometheus: see tests/e2e).

Covers:
- a template change (image) with `spec.canary.enabled` starts a rollout, not a rolling update:
  canary Deployments (API and worker, `track=canary` in labels, selector and `AGENT_TRACK`) and the
  canary ConfigMap beside the stable ones, which keep their live template and config exactly;
  replicas split per component, desired and actual weight in `status.canary`; Promoted False;
- without a Prometheus URL an analysis is an error, never a success: AnalysisReady False
  (PrometheusNotConfigured), the rollout holds, then pauses with InconclusiveLimitReached, and is
  never promoted; an Event names the reason;
- the `agentops.dev/promote` annotation mid-rollout promotes (stable takes the new template,
  canaries removed, Promoted True, the one-shot annotation removed, promotions counted, weight 0);
  `status.children` lists the canary track last while it runs, and not once it is removed;
- the `agentops.dev/abort` annotation mid-rollout rolls back (canaries removed, stable exactly as
  before, RolledBack, annotation removed, rollbacks counted); re-applying the stable template is
  immediate (Idle, no Deployment write);
- `spec.canary.paused` holds the rollout (Paused, PausedBySpec, no analyses, zero writes while it
  holds) and unsetting it resumes;
- a newer revision during a rollout restarts it on the newest template;
- a service without canaries updates its stable Deployments directly;
- (the pure layout and the canary conditions: tests/unit/operator/test_tracks.py)
  autoscaled stable left to its autoscaler, canaries removed at rest, a lost stable Deployment
  reported; the conditions (`rollout.wanted_conditions`) for every canary phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agent_operator import opmetrics, run
from agent_operator.manifests import naming
from agentops_dev import devcluster

from tests.integration.operator.conftest import (
    AGSVC,
    Operator,
    agent_service,
    child_writes,
    events,
    eventually,
    quiet_and_ready,
)

CANARY = {"enabled": True, "steps": [10, 50, 100], "interval": "1s", "inconclusiveLimit": 2, "failureLimit": 2}
OLD_IMAGE = "registry.example/agent-runtime:1.0"
NEW_IMAGE = "registry.example/agent-runtime:2.0"


class CanaryOperator(Operator):
    """The conftest operator with a short analysis tick and an optional Prometheus URL."""

    prometheus_url: str | None = None

    def config(self, resync: float) -> run.Config:
        return dataclasses.replace(
            super().config(resync),
            prometheus_url=self.prometheus_url,
            prometheus_scrape_interval=1.0,
            analysis_tick=0.2,
        )


@pytest.fixture
async def op(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[CanaryOperator]:
    emulator, url = cluster
    handle = CanaryOperator(cluster=emulator, url=url, metrics=opmetrics.create())
    await handle.start()
    controller = asyncio.create_task(_deployment_controller(emulator))
    try:
        yield handle
    finally:
        controller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await controller
        await handle.halt()


async def _deployment_controller(cluster: devcluster.DevCluster) -> None:
    """Play the Deployment controller: every Deployment reports its replicas ready, continuously."""
    while True:
        await cluster.simulate_rollouts()
        await asyncio.sleep(0.1)


def canary_service(**canary: Any) -> dict[str, Any]:
    return agent_service(image=OLD_IMAGE, canary={**CANARY, **canary})


def deployments(op: Operator) -> dict[str, dict[str, Any]]:
    return {k.split("/", 1)[1]: v for k, v in op.children().items() if k.startswith("Deployment/")}


def image_of(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def canary_of(op: Operator) -> dict[str, Any]:
    return dict(op.status().get("canary") or {})


def sample(op: Operator, name: str, **labels: str) -> float:
    return op.metrics.registry.get_sample_value(name, labels) or 0.0


async def start_rollout(op: Operator, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Create `body`, wait for Ready, then change its image; return the stable Deployments before."""
    await op.put(body)
    await eventually(lambda: op.status().get("phase") == "Ready", timeout=15)
    await eventually(lambda: canary_of(op).get("phase") == "Idle")
    before = copy.deepcopy(deployments(op))
    body["spec"]["image"] = NEW_IMAGE
    await op.put(body)
    await eventually(lambda: {"demo-api-canary", "demo-worker-canary"} <= set(deployments(op)), timeout=15)
    # the canary children are applied first, then the status and the Event say so: wait for both
    await eventually(lambda: canary_of(op).get("phase") in ("Progressing", "Paused"), timeout=15)
    await eventually(lambda: events(op, "RolloutStarted"))
    return before


async def annotate(op: Operator, **annotations: str) -> None:
    live = copy.deepcopy(op.service())
    assert live is not None
    live["metadata"].setdefault("annotations", {}).update(annotations)
    await op.cluster.put_object(AGSVC, live)


async def set_canary(op: Operator, **fields: Any) -> None:
    live = copy.deepcopy(op.service())
    assert live is not None
    live["spec"]["canary"].update(fields)
    await op.cluster.put_object(AGSVC, live)


async def test_template_change_starts_a_rollout_beside_the_kept_stable(op: CanaryOperator) -> None:
    body = canary_service()
    before = await start_rollout(op, body)
    stable_config = op.children()["ConfigMap/demo-config"]["data"]
    live = deployments(op)
    assert set(live) == {"demo-api", "demo-worker", "demo-api-canary", "demo-worker-canary"}
    for component in ("api", "worker"):
        stable, canary = live[f"demo-{component}"], live[f"demo-{component}-canary"]
        # the stable track keeps its live template, byte for byte; only its replica count moves
        assert stable["spec"]["template"] == before[f"demo-{component}"]["spec"]["template"]
        assert image_of(stable) == OLD_IMAGE and image_of(canary) == NEW_IMAGE
        assert env_of(stable)["AGENT_TRACK"] == "stable" and env_of(canary)["AGENT_TRACK"] == "canary"
        assert canary["spec"]["selector"]["matchLabels"][naming.TRACK_LABEL] == "canary"
        assert canary["spec"]["template"]["metadata"]["labels"][naming.TRACK_LABEL] == "canary"
        volumes = {v["name"]: v for v in canary["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "demo-config-canary"
    # api 2 replicas at weight 10: 1 + 1; worker 3: 2 + 1 (a non-zero weight always gets a pod)
    assert (live["demo-api"]["spec"]["replicas"], live["demo-api-canary"]["spec"]["replicas"]) == (1, 1)
    assert (live["demo-worker"]["spec"]["replicas"], live["demo-worker-canary"]["spec"]["replicas"]) == (2, 1)
    assert op.children()["ConfigMap/demo-config"]["data"] == stable_config
    assert "ConfigMap/demo-config-canary" in op.children()
    status = canary_of(op)
    assert status["phase"] in ("Progressing", "Paused")
    assert status["weight"] == 10 and status["actualWeight"] == 33
    assert status["stableRevision"] != status["canaryRevision"]
    assert op.status()["revision"] == status["stableRevision"]
    assert op.condition("Promoted")["status"] == "False"
    await eventually(lambda: sample(op, "agentservice_canary_weight", service="demo", namespace="default") == 10)

    # no Prometheus URL: every analysis is an error; the rollout holds, then pauses, never promotes
    analysis_ready = await eventually(lambda: (c := op.condition("AnalysisReady")).get("status") == "False" and c)
    assert analysis_ready["reason"] == "PrometheusNotConfigured" and "--prometheus-url" in analysis_ready["message"]
    paused = await eventually(lambda: (c := op.condition("Paused")).get("status") == "True" and c, timeout=15)
    assert paused["reason"] == "InconclusiveLimitReached"
    status = canary_of(op)
    assert status["phase"] == "Paused" and status["inconclusiveStreak"] >= 2 and status["totalFailures"] == 0
    assert status["lastAnalysis"]["verdict"] == "error"
    assert status["lastAnalysis"]["checks"][0]["message"].startswith("the operator runs without a Prometheus URL")
    assert "inconclusive or errored analyses in a row" in op.condition("Promoted")["message"]
    await eventually(
        lambda: (
            {"RolloutStarted", "AnalysisError", "InconclusiveLimitReached"}
            <= {e["reason"] for e in op.cluster.live_objects("v1/events", "default")}
        )
    )
    # the canary metrics of a reconcile are recorded after its writes: wait for them
    await eventually(lambda: sample(op, "agentservice_canary_analyses_total", verdict="error") >= 2)
    await eventually(lambda: sample(op, "agentservice_canary_analysis_duration_seconds_count") >= 2)
    # still analysed while paused (a conclusive result would resume it), still not promoted
    await asyncio.sleep(1.5)
    assert canary_of(op)["phase"] == "Paused" and image_of(deployments(op)["demo-api"]) == OLD_IMAGE


def status_children(op: CanaryOperator) -> list[str]:
    return [f"{c['kind']}/{c['name']}" for c in op.status().get("children") or []]


async def test_promote_annotation_mid_rollout(op: CanaryOperator) -> None:
    await start_rollout(op, canary_service(interval="1h"))
    # status.children lists the canary track last while it runs
    canary_track = ["ConfigMap/demo-config-canary", "Deployment/demo-api-canary", "Deployment/demo-worker-canary"]
    await eventually(lambda: status_children(op)[-3:] == canary_track)
    await annotate(op, **{naming.PROMOTE_ANNOTATION: "true"})
    promoted = await eventually(lambda: (c := op.condition("Promoted")).get("status") == "True" and c, timeout=15)
    assert promoted["reason"] == "Promoted"
    live = deployments(op)
    assert set(live) == {"demo-api", "demo-worker"}
    assert image_of(live["demo-api"]) == NEW_IMAGE and image_of(live["demo-worker"]) == NEW_IMAGE
    assert (live["demo-api"]["spec"]["replicas"], live["demo-worker"]["spec"]["replicas"]) == (2, 3)
    assert "ConfigMap/demo-config-canary" not in op.children()
    await eventually(
        lambda: not set(canary_track) & set(status_children(op)) and "Deployment/demo-api" in status_children(op)
    )
    status = canary_of(op)
    assert status["phase"] == "Promoted" and status["weight"] == 0
    assert status["stableRevision"] == op.status()["revision"]
    await eventually(lambda: naming.PROMOTE_ANNOTATION not in (op.service() or {})["metadata"].get("annotations", {}))
    # recorded after the reconcile's writes (the gate removal included): wait for them
    await eventually(lambda: sample(op, "agentservice_canary_promotions_total", reason="PromotedByAnnotation") == 1)
    await eventually(lambda: sample(op, "agentservice_canary_weight", service="demo", namespace="default") == 0)
    assert op.condition("Paused")["status"] == "False"


async def test_abort_annotation_mid_rollout_and_immediate_revert(op: CanaryOperator) -> None:
    body = canary_service(interval="1h")
    before = await start_rollout(op, body)
    await annotate(op, **{naming.ABORT_ANNOTATION: "true"})
    await eventually(lambda: canary_of(op).get("phase") == "RolledBack", timeout=15)
    await eventually(lambda: set(deployments(op)) == {"demo-api", "demo-worker"})
    live = deployments(op)
    for name in ("demo-api", "demo-worker"):
        assert live[name]["spec"]["template"] == before[name]["spec"]["template"]
        assert live[name]["spec"]["replicas"] == before[name]["spec"]["replicas"]
    status = canary_of(op)
    assert "aborted by annotation" in status["message"] and status["weight"] == 0
    promoted = op.condition("Promoted")
    assert promoted["status"] == "False" and promoted["reason"] == "RolledBack"
    await eventually(lambda: naming.ABORT_ANNOTATION not in (op.service() or {})["metadata"].get("annotations", {}))
    await eventually(lambda: sample(op, "agentservice_canary_rollbacks_total", reason="Aborted") == 1)
    # the rejected template stays rejected: no retry loop
    await op.settle(passes=3)
    assert canary_of(op)["phase"] == "RolledBack" and "demo-api-canary" not in deployments(op)

    # git revert: the stable template again, served at once with no Deployment write
    mark = op.cluster.request_count
    live_body = copy.deepcopy(op.service())
    assert live_body is not None
    live_body["spec"]["image"] = OLD_IMAGE
    await op.cluster.put_object(AGSVC, live_body)
    await eventually(lambda: canary_of(op).get("phase") == "Idle")
    assert op.condition("Promoted")["status"] == "True"
    assert not {w for w in child_writes(op.cluster.writes(mark)) if w.startswith("deployments/")}


async def test_paused_holds_with_zero_writes_then_resumes(op: CanaryOperator) -> None:
    await start_rollout(op, canary_service(interval="1h"))
    await set_canary(op, paused=True)
    paused = await eventually(lambda: (c := op.condition("Paused")).get("status") == "True" and c)
    assert paused["reason"] == "PausedBySpec" and canary_of(op)["phase"] == "Paused"
    # the writes that follow the paused status: its Event, the canaries reported ready (the
    # status back to Ready, and that Event), and kopf's record of the handled spec
    await eventually(lambda: events(op, "PausedBySpec"))
    await quiet_and_ready(op)
    analyses = sum(sample(op, "agentservice_canary_analyses_total", verdict=v) for v in ("error", "success"))
    mark = op.cluster.request_count
    await op.settle(passes=5)
    assert op.cluster.writes(mark) == []  # level-based: a held rollout is a steady state
    assert sum(sample(op, "agentservice_canary_analyses_total", verdict=v) for v in ("error", "success")) == analyses
    await set_canary(op, paused=False)
    await eventually(lambda: canary_of(op).get("phase") == "Progressing")
    assert op.condition("Paused")["status"] == "False"
    assert {"demo-api-canary", "demo-worker-canary"} <= set(deployments(op))


async def test_newer_revision_restarts_the_rollout_on_it(op: CanaryOperator) -> None:
    body = canary_service(interval="1h")
    await start_rollout(op, body)
    first = canary_of(op)["canaryRevision"]
    body["spec"]["image"] = "registry.example/agent-runtime:3.0"
    await op.put(body)
    await eventually(lambda: image_of(deployments(op)["demo-api-canary"]) == "registry.example/agent-runtime:3.0")
    # the status is written after the children are applied: wait for it rather than race it
    status = await eventually(lambda: canary_of(op)["canaryRevision"] != first and canary_of(op))
    assert status["weight"] == 10
    assert image_of(deployments(op)["demo-api"]) == OLD_IMAGE


async def test_without_canary_the_stable_track_updates_directly(op: CanaryOperator) -> None:
    body = agent_service(image=OLD_IMAGE)
    await op.put(body)
    await eventually(lambda: op.status().get("phase") == "Ready", timeout=15)
    body["spec"]["image"] = NEW_IMAGE
    await op.put(body)
    await eventually(lambda: image_of(deployments(op)["demo-api"]) == NEW_IMAGE)
    assert set(deployments(op)) == {"demo-api", "demo-worker"}
    assert not op.condition("Promoted")  # canary conditions only where canaries are in use
    assert canary_of(op)["phase"] == "Idle"


def _when(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _analyses(op: Operator) -> float:
    return sum(sample(op, "agentservice_canary_analyses_total", verdict=v) for v in ("error", "success"))


async def test_a_restarted_operator_keeps_the_analysis_schedule(op: CanaryOperator) -> None:
    """The next analysis time is in the status: a new operator process keeps to it, once, not later.

    An operator that counted afresh would analyse a whole interval after its start; this one
    analyses at the time the status names (at once when that time passed while it was down),
    exactly once, and counts the next interval from there. When an analysis ran is read from the
    status, not from when the test saw it: the next time it names is that moment plus the interval
    (milliseconds), so a busy machine's late polling cannot blur the comparison.
    """
    interval = 20.0
    slack = 5.0  # lateness tolerated on a busy machine; counting afresh would be 5 s later still

    def analysed(count: int) -> dict[str, Any] | None:
        canary = canary_of(op)
        return canary if len(canary.get("history") or []) == count and canary.get("nextAnalysisTime") else None

    await start_rollout(op, canary_service(interval=f"{interval:g}s", inconclusiveLimit=100))
    due = _when((await eventually(lambda: analysed(1), timeout=2 * interval))["nextAnalysisTime"])

    # killed 5 s before the next analysis, started again: it comes at `due`, about 5 s after the
    # start, not 20 s after it
    await eventually(lambda: time.time() > due - 5, timeout=interval, interval=0.2)
    await op.halt()
    counted = _analyses(op)
    await op.start()
    restarted = time.time()
    second = await eventually(lambda: analysed(2), timeout=2 * interval)
    ran = _when(second["nextAnalysisTime"]) - interval
    assert due - 0.05 <= ran <= due + slack, (ran - due, due - restarted)
    assert ran < restarted + interval - slack, (ran - restarted, due - restarted)  # not counted afresh
    assert _analyses(op) == counted + 1  # once
    due = ran + interval

    # down past the due time: the analysis runs at once on the start, once
    await op.halt()
    await eventually(lambda: time.time() > due + 1, timeout=2 * interval, interval=0.2)
    counted = _analyses(op)
    await op.start()
    restarted = time.time()
    third = await eventually(lambda: analysed(3), timeout=2 * interval)
    ran = _when(third["nextAnalysisTime"]) - interval
    assert restarted - 1 <= ran <= restarted + slack, ran - restarted
    assert _analyses(op) == counted + 1

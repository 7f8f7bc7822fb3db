"""Canary rollouts end to end: the real operator on the dev cluster, real runtime processes per pod,
a real Prometheus scraping them every second, local model servers per track, a load generator.

The rollout under test is a model change (the provider's baseURL moves to another model server),
so the canary pods really call another model than the stable ones. Covers:
- a healthy canary is promoted through every step (an analysis passes at 10 and at 50), the
  `Promoted` condition is set, the stable pods restart on the new template and the canaries go;
- a canary whose model answers 30 % of calls with an error (HTTP 400: final, so the task fails; a
  5xx is retried by the runtime) from right after a step is rolled back by the two analyses after
  the fault (failureLimit 2; one holding on too little traffic on a starved machine is allowed,
  a pass is not), the stable template untouched; the status and an Event name the failing query,
  the measured value and the threshold;
- a canary with no traffic is neither promoted nor rolled back: it holds, pauses with a reason
  (`InconclusiveLimitReached`, "0 canary requests"), and traffic arriving resumes and promotes it;
- a relative check (`maxErrorRatio: 2`) passes a canary exactly as good as stable (both 10 %
  errors, with an absolute limit loose enough to pass both), and rolls back one 3x worse (30 %)
  naming `error-ratio`;
- Prometheus down mid-rollout: no promotion, `AnalysisReady` False naming the unreachable server,
  then a pause;
- gates mid-rollout with real traffic: `spec.canary.paused` stops the analyses, the promote
  annotation promotes, the abort annotation rolls back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agent_operator.manifests import naming
from agentops_dev.localmodel import FAULT_STATUS, Faults, LocalModelServer, fault_script
from agentops_dev.localprometheus import DiscoveringPrometheus
from agentops_dev.stack import Stack, running_stack, service_body

from tests.e2e.conftest import eventually

pytestmark = pytest.mark.slow

RATE = 16.0  # tasks per second submitted across the API pods of both tracks
VERDICTS = ("success", "failure", "inconclusive", "error")


def set_model(url: str) -> Any:
    def change(body: dict[str, Any]) -> None:
        body["spec"]["model"]["providers"][0]["baseURL"] = url

    return change


def templates(stack: Stack, name: str) -> dict[str, Any]:
    return {n: d["spec"]["template"] for n, d in stack.deployments(name).items() if not n.endswith("-canary")}


async def start_canary(stack: Stack, name: str, model: LocalModelServer) -> None:
    """Move the service to `model` (a new revision) and wait until the canary pods serve."""
    await stack.edit(name, set_model(model.url))
    await eventually(lambda: stack.kubelet.ready_at(f"{name}-worker-canary") is not None, timeout=60)


async def test_healthy_canary_is_promoted_through_every_step(stack: Stack) -> None:
    name = "healthy"
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(name, stable_model.url, stack.redis_url, steps=[10, 50, 100], interval="3s", minRequests=5)
        await stack.serve(body)
        async with stack.load(name, RATE) as load:
            await start_canary(stack, name, canary_model)
            canary_revision = stack.canary(name)["canaryRevision"]
            promoted = await eventually(
                lambda: (c := stack.condition(name, "Promoted")).get("status") == "True" and c, timeout=60
            )
        assert promoted["reason"] == "Promoted"
        status = stack.canary(name)
        assert status["phase"] == "Promoted" and status["stableRevision"] == canary_revision
        passed = [a["weight"] for a in status["history"] if a["verdict"] == "success"]
        assert passed == [10, 50], status["history"]
        assert all(a["verdict"] in ("success", "inconclusive") for a in status["history"])
        for check in status["lastAnalysis"]["checks"]:
            assert check["query"] and check["threshold"] and check["verdict"] == "success", check
            assert check["samples"] >= 5 and "value" in check, check
        # the stable track now runs the new template; the canaries are gone, their pods stopped
        await eventually(lambda: set(stack.deployments(name)) == {f"{name}-api", f"{name}-worker"})
        stable_config = stack.cluster.live("v1/configmaps", "default", f"{name}-config") or {}
        assert canary_model.url in stable_config["data"]["config.json"]
        await eventually(lambda: all(p.track == "stable" for p in stack.kubelet.pods.values()))
        await eventually(lambda: stack.sample("agentservice_canary_promotions_total", reason="AnalysisPassed") == 1)
        await eventually(lambda: stack.sample("agentservice_canary_weight", service=name, namespace="default") == 0)
        await eventually(lambda: len(stack.events(name, "AnalysisPassed")) == 2)  # 10 -> 50, then the promotion
        assert load.accepted > 50 and canary_model.completed()


async def test_faulty_canary_is_rolled_back_within_two_intervals(stack: Stack) -> None:
    name = "faulty"
    # The fault starts once the step to 20 is seen, up to ~1.5 s after the analysis that made it on
    # the loaded machine; the step changes no pod, so the next analysis is due one interval after
    # that analysis (docs/canary.md). To fail, it needs the fault at least d old (one scrape, its
    # duration and a fifth of the window: ~2.5 s here), so the interval must exceed 1.5 + 2.5 s.
    interval = 5.0
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(
            name,
            stable_model.url,
            stack.redis_url,
            steps=[10, 20, 50, 100],
            interval=f"{interval:g}s",
            minRequests=5,
            failureLimit=2,
        )
        await stack.serve(body)
        before = templates(stack, name)
        async with stack.load(name, RATE):
            await start_canary(stack, name, canary_model)
            # the canary serves well and passes an analysis; then its model starts failing 30 % of calls
            await eventually(lambda: stack.canary(name).get("weight") == 20, timeout=60, interval=0.02)
            # count the analyses the operator runs from the fault on (its own metric), not seconds:
            # the rollback must come with the second analysis after the fault (failureLimit 2)
            ran_before = {v: stack.sample("agentservice_canary_analyses_total", verdict=v) for v in VERDICTS}
            canary_model.faults = Faults(error_ratio=0.3, error_status=FAULT_STATUS, seed=7)
            await eventually(lambda: stack.canary(name).get("phase") == "RolledBack", timeout=60, interval=0.02)
            ran = {
                v: n
                for v in VERDICTS
                if (n := stack.sample("agentservice_canary_analyses_total", verdict=v) - ran_before[v])
            }
        # exactly two failures and no pass; an analysis may hold on too little traffic (the loaded
        # machine starving the canary pods: seen at a load average of 25), which counts for nothing
        conclusive = {v: n for v, n in ran.items() if v != "inconclusive"}
        assert conclusive == {"failure": 2}, f"analyses from the fault to the rollback (interval {interval}s): {ran}"
        after = [a for a in stack.canary(name)["history"] if a["weight"] == 20]
        assert [a["verdict"] for a in after if a["verdict"] != "inconclusive"] == ["failure", "failure"], after
        for held in (a for a in after if a["verdict"] == "inconclusive"):
            assert all("fewer than minRequests" in c["message"] for c in held["checks"]), held
        status = stack.canary(name)
        check = next(c for c in status["lastAnalysis"]["checks"] if c["name"] == "error-rate")
        assert check["verdict"] == "failure" and 0.1 < check["value"] < 0.6, check
        assert check["threshold"] == "<= 0.05"
        assert 'track="canary"' in check["query"] and 'status="failed"' in check["query"]
        assert status["totalFailures"] == 2 and status["consecutiveFailures"] == 2
        for text in ("error-rate = 0.", "threshold <= 0.05", check["query"]):
            assert text in status["message"], status["message"]
        rollback = await eventually(lambda: stack.events(name, "FailureLimitReached"))
        assert rollback[0]["type"] == "Warning" and check["query"] in rollback[0]["message"]
        failed = stack.events(name, "AnalysisFailed")
        assert failed and "error-rate failure" in failed[0]["message"] and "<= 0.05" in failed[0]["message"]
        promoted = stack.condition(name, "Promoted")
        assert promoted["status"] == "False" and promoted["reason"] == "RolledBack"
        await eventually(lambda: stack.sample("agentservice_canary_rollbacks_total", reason="FailureLimitReached") == 1)
        # the stable track is exactly as it was; the canary pods are gone
        await eventually(lambda: set(stack.deployments(name)) == {f"{name}-api", f"{name}-worker"})
        assert templates(stack, name) == before
        await eventually(lambda: all(p.track == "stable" for p in stack.kubelet.pods.values()))


async def test_canary_without_traffic_holds_then_pauses_then_resumes(stack: Stack) -> None:
    name = "quiet"
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(
            name, stable_model.url, stack.redis_url, steps=[50, 100], interval="2s", minRequests=5, inconclusiveLimit=2
        )
        await stack.serve(body)
        before = templates(stack, name)
        await start_canary(stack, name, canary_model)
        paused = await eventually(
            lambda: (c := stack.condition(name, "Paused")).get("status") == "True" and c, timeout=60
        )
        assert paused["reason"] == "InconclusiveLimitReached"
        assert "0 canary requests" in paused["message"] and "fewer than minRequests 5" in paused["message"]
        status = stack.canary(name)
        assert status["phase"] == "Paused" and status["totalFailures"] == 0 and status["weight"] == 50
        assert [a["verdict"] for a in status["history"]] == ["inconclusive", "inconclusive"]
        # the Events of a reconcile are posted after its status write: wait for them
        await eventually(lambda: len(stack.events(name, "AnalysisInconclusive")) >= 2)
        await eventually(lambda: stack.events(name, "InconclusiveLimitReached"))
        assert templates(stack, name) == before and f"{name}-worker-canary" in stack.deployments(name)
        # traffic comes back: the first conclusive analysis resumes the rollout, which is promoted
        async with stack.load(name, RATE):
            await eventually(lambda: stack.condition(name, "Promoted").get("status") == "True", timeout=60)
        assert stack.canary(name)["history"][-1]["verdict"] == "success"


async def test_relative_check_passes_equal_and_fails_three_times_worse(stack: Stack) -> None:
    name = "relative"
    canary = {
        "steps": [50, 100],
        "interval": "6s",
        "minRequests": 10,
        "maxErrorRate": 0.9,  # loose: only the relative check can tell these canaries apart
        "maxErrorRatio": 2,
        "failureLimit": 1,
    }
    # 2 and 6 failures in every 10 calls: dense enough that a 6 s window's few dozen tasks give a
    # ratio near 1 (equal) and near 3 (worse); at 1 in 10 a window counts two or three failures, so
    # one failure more or less on a side moved an equal canary's ratio to 2.0, the threshold
    stable, same, worse = Faults(script=fault_script(2)), Faults(script=fault_script(2)), Faults(script=fault_script(6))
    async with (
        LocalModelServer(faults=stable) as stable_model,
        LocalModelServer(faults=same) as same_model,
        LocalModelServer(faults=worse) as worse_model,
    ):
        await stack.serve(service_body(name, stable_model.url, stack.redis_url, **canary))
        async with stack.load(name, RATE):
            await start_canary(stack, name, same_model)
            await eventually(lambda: stack.canary(name).get("phase") in ("Promoted", "RolledBack"), timeout=60)
            status = stack.canary(name)
            assert status["phase"] == "Promoted", status["message"]
            ratio = next(c for c in status["lastAnalysis"]["checks"] if c["name"] == "error-ratio")
            assert ratio["verdict"] == "success" and 0.4 < ratio["value"] < 2, ratio
            # now the same model, as stable, against one three times worse
            await eventually(lambda: all(p.track == "stable" for p in stack.kubelet.pods.values()), timeout=60)
            await asyncio.sleep(6)  # one full window of the restarted stable pods before comparing to them
            await start_canary(stack, name, worse_model)
            await eventually(lambda: stack.canary(name).get("phase") == "RolledBack", timeout=60)
        status = stack.canary(name)
        checks = {c["name"]: c for c in status["lastAnalysis"]["checks"]}
        assert checks["error-ratio"]["verdict"] == "failure" and 2 < checks["error-ratio"]["value"] < 8, checks
        assert checks["error-rate"]["verdict"] == "success" and 0.4 < checks["error-rate"]["value"] < 0.8
        assert "error-ratio = " in status["message"] and "threshold <= 2" in status["message"]


async def test_prometheus_down_never_promotes_and_says_why(
    stack: Stack, tmp_path_factory: Any, redis_server: Any, prometheus: DiscoveringPrometheus
) -> None:
    name = "blind"
    own = DiscoveringPrometheus(tmp_path_factory.mktemp("prometheus-down"))
    own.start()
    own.wait_ready()
    try:
        directory = tmp_path_factory.mktemp("blind")
        async with (
            running_stack(directory, redis_server.url, prometheus, prometheus_url=own.url) as blind,
            LocalModelServer() as stable_model,
            LocalModelServer() as canary_model,
        ):
            body = service_body(
                name, stable_model.url, blind.redis_url, steps=[50, 100], interval="2s", inconclusiveLimit=2
            )
            await blind.serve(body)
            async with blind.load(name, RATE):
                await start_canary(blind, name, canary_model)
                own.stop()  # Prometheus goes away mid-rollout
                down = await eventually(
                    lambda: (c := blind.condition(name, "AnalysisReady")).get("status") == "False" and c, timeout=60
                )
                assert down["reason"] == "AnalysisError" and "unreachable" in down["message"]
                assert own.url in down["message"]
                await eventually(lambda: blind.canary(name).get("phase") == "Paused", timeout=60)
            status = blind.canary(name)
            assert all(a["verdict"] == "error" for a in status["history"]), status["history"]
            assert blind.condition(name, "Promoted")["status"] == "False"
            assert blind.condition(name, "Paused")["reason"] == "InconclusiveLimitReached"
            assert blind.sample("agentservice_canary_promotions_total", reason="AnalysisPassed") == 0
    finally:
        own.stop()


async def test_gates_mid_rollout_with_traffic(stack: Stack) -> None:
    name = "gated"
    async with LocalModelServer() as stable_model, LocalModelServer() as first, LocalModelServer() as second:
        body = service_body(name, stable_model.url, stack.redis_url, steps=[10, 50, 100], interval="2s", minRequests=5)
        await stack.serve(body)
        async with stack.load(name, RATE):
            await stack.edit(name, lambda b: b["spec"]["canary"].update(paused=True))
            await start_canary(stack, name, first)
            await eventually(lambda: stack.condition(name, "Paused").get("reason") == "PausedBySpec")
            analyses = sum(stack.sample("agentservice_canary_analyses_total", verdict=v) for v in VERDICTS)
            await asyncio.sleep(4.5)  # two intervals with the canary pods serving: no analysis runs
            assert stack.canary(name)["phase"] == "Paused" and stack.canary(name)["weight"] == 10
            assert sum(stack.sample("agentservice_canary_analyses_total", verdict=v) for v in VERDICTS) == analyses
            # promote by annotation while paused: promoted at once, the one-shot gate removed
            await stack.edit(name, lambda b: b["metadata"].setdefault("annotations", {}).update(
                {naming.PROMOTE_ANNOTATION: "true"}
            ))  # fmt: skip
            await eventually(lambda: stack.condition(name, "Promoted").get("status") == "True")
            await eventually(lambda: naming.PROMOTE_ANNOTATION not in stack.service(name)["metadata"]["annotations"])
            await eventually(
                lambda: stack.sample("agentservice_canary_promotions_total", reason="PromotedByAnnotation") == 1
            )
            # unpaused, a next revision progresses by analysis until the abort annotation rolls it back
            await stack.edit(name, lambda b: b["spec"]["canary"].update(paused=False))
            await start_canary(stack, name, second)
            await eventually(lambda: stack.canary(name).get("phase") == "Progressing")
            await stack.edit(name, lambda b: b["metadata"].setdefault("annotations", {}).update(
                {naming.ABORT_ANNOTATION: "true"}
            ))  # fmt: skip
            await eventually(lambda: stack.canary(name).get("phase") == "RolledBack")
        await eventually(lambda: stack.sample("agentservice_canary_rollbacks_total", reason="Aborted") == 1)
        await eventually(lambda: naming.ABORT_ANNOTATION not in stack.service(name)["metadata"]["annotations"])
        config = stack.cluster.live("v1/configmaps", "default", f"{name}-config") or {}
        assert first.url in config["data"]["config.json"] and second.url not in config["data"]["config.json"]

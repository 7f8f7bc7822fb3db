"""The layout of both tracks (`canary.tracks`) and the canary conditions (`status.canary_conditions`).

Covers: the live stable template and config kept during a rollout, replicas split per component
(under an autoscaler: the stable count left alone, the canary sized beside it; beside workers scaled
to zero: the real weight); at rest the canaries removed and a lost stable Deployment reported; the
canary conditions for every canary phase.
"""

from __future__ import annotations

from typing import Any

from agent_operator import status
from agent_operator.api import models
from agent_operator.canary import tracks
from agent_operator.manifests import builders
from agent_operator.objects import ObjectRef

CANARY = {"enabled": True, "steps": [10, 50, 100], "interval": "1s", "inconclusiveLimit": 2, "failureLimit": 2}
OLD_IMAGE = "registry.example/agent-runtime:1.0"
NEW_IMAGE = "registry.example/agent-runtime:2.0"


BASE_SPEC: dict[str, Any] = {
    "model": {"providers": [{"name": "primary", "model": "claude-test", "baseURL": "http://127.0.0.1:9/"}]},
    "redis": {"url": "redis://redis.default.svc:6379/0"},
    "autoscaling": {"enabled": False},
    "api": {"replicas": 2},
    "worker": {"replicas": 3},
}


def agent_service(**spec: Any) -> dict[str, Any]:
    body = {**BASE_SPEC, **spec}
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": body,
    }


def image_of(deployment: dict[str, Any]) -> str:
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def _svc(**spec: Any) -> models.AgentService:
    return models.AgentService.model_validate(agent_service(image=NEW_IMAGE, canary=CANARY, **spec))


def _live_stable(svc: models.AgentService, image: str) -> dict[str, dict[str, Any]]:
    """The stable children as an older template rendered them (the live objects of a rollout)."""
    old = models.AgentService.model_validate(
        {**svc.model_dump(by_alias=True), "spec": {**svc.spec.model_dump(by_alias=True), "image": image}}
    )
    return {ObjectRef.of(c).key: c for c in builders.build_children(old)}


def _by_ref(live: dict[str, Any], desired: builders.Desired) -> dict[ObjectRef, Any]:
    """`live` (keyed by `Kind/name`) keyed by the refs of `desired`'s children of both tracks."""
    return {ref: live[ref.key] for ref in [*desired.refs, *desired.canary_refs] if ref.key in live}


def test_layout_keeps_the_live_stable_and_splits_replicas() -> None:
    svc = _svc()
    live = _live_stable(svc, OLD_IMAGE)
    desired = builders.desired(svc)
    status = models.CanaryStatus(
        phase=models.CanaryPhase.PROGRESSING, weight=50, stable_revision="old", canary_revision=desired.revision
    )
    laid = tracks.layout(desired, status, _by_ref(live, desired))
    out = {ObjectRef.of(c).key: c for c in laid.children}
    stable_api = out["Deployment/demo-api"]
    assert stable_api["spec"]["template"] == live["Deployment/demo-api"]["spec"]["template"]
    assert stable_api["metadata"]["annotations"] == live["Deployment/demo-api"]["metadata"]["annotations"]
    assert out["ConfigMap/demo-config"]["data"] == live["ConfigMap/demo-config"]["data"]
    assert image_of(out["Deployment/demo-api-canary"]) == NEW_IMAGE
    # api 2 at 50: 1 + 1; worker 3 at 50: nearest count, ties toward stable: 2 + 1
    assert (stable_api["spec"]["replicas"], out["Deployment/demo-api-canary"]["spec"]["replicas"]) == (1, 1)
    assert out["Deployment/demo-worker"]["spec"]["replicas"] == 2
    assert out["Deployment/demo-worker-canary"]["spec"]["replicas"] == 1
    assert laid.actual_weight == 33 and laid.remove == () and not laid.warnings
    assert {r.name for r in laid.deployments} == {"demo-api", "demo-worker", "demo-api-canary", "demo-worker-canary"}
    # deterministic: the same status lays out the same children
    again = tracks.layout(desired, status, _by_ref(live, desired))
    assert again.children == laid.children


def test_layout_under_an_autoscaler_leaves_stable_replicas_alone() -> None:
    svc = _svc(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 20})
    live = _live_stable(svc, OLD_IMAGE)
    live["Deployment/demo-worker"]["spec"]["replicas"] = 9  # the HPA's count
    desired = builders.desired(svc)
    status = models.CanaryStatus(
        phase=models.CanaryPhase.PROGRESSING, weight=10, stable_revision="old", canary_revision=desired.revision
    )
    out = {ObjectRef.of(c).key: c for c in tracks.layout(desired, status, _by_ref(live, desired)).children}
    assert "replicas" not in out["Deployment/demo-worker"]["spec"]
    assert out["Deployment/demo-worker-canary"]["spec"]["replicas"] == 1  # 1 beside 9 is 10 %


def test_layout_at_rest_removes_canaries_and_warns_about_a_lost_stable() -> None:
    svc = _svc()
    desired = builders.desired(svc)
    live: dict[str, Any] = {"Deployment/demo-api-canary": {"metadata": {}}, "ConfigMap/demo-config-canary": {}}
    rolled = models.CanaryStatus(
        phase=models.CanaryPhase.ROLLED_BACK, stable_revision="old", canary_revision=desired.revision
    )
    laid = tracks.layout(desired, rolled, _by_ref(live, desired))
    assert {(r.api_version, r.kind, r.name) for r in laid.remove} == {
        ("apps/v1", "Deployment", "demo-api-canary"),
        ("v1", "ConfigMap", "demo-config-canary"),
    }
    assert laid.actual_weight == 0 and len(laid.warnings) == 2  # both stable Deployments are gone
    assert "cannot be rebuilt from its hash" in laid.warnings[0]


def test_conditions_follow_the_canary_phase() -> None:
    spec = models.Canary.model_validate(CANARY)
    url = "http://prometheus:9090"

    def wanted(canary: models.CanaryStatus, revision: str = "new", prometheus: str | None = url) -> dict[str, Any]:
        result = status.canary_conditions(spec, canary, revision, prometheus_url=prometheus)
        assert result is not None
        return {c.type: (c.status.value, c.reason) for c in result}

    progressing = models.CanaryStatus(phase=models.CanaryPhase.PROGRESSING, stable_revision="old", weight=10)
    assert wanted(progressing)["Promoted"] == ("False", "RolloutProgressing")
    assert wanted(progressing)["Paused"] == ("False", "NotPaused")
    assert wanted(progressing)["AnalysisReady"] == ("True", "PrometheusConfigured")
    assert wanted(progressing, prometheus=None)["AnalysisReady"] == ("False", "PrometheusNotConfigured")
    paused = progressing.model_copy(update={"phase": models.CanaryPhase.PAUSED})
    assert wanted(paused)["Paused"] == ("True", "InconclusiveLimitReached")
    promoted = models.CanaryStatus(phase=models.CanaryPhase.PROMOTED, stable_revision="new")
    assert wanted(promoted)["Promoted"] == ("True", "Promoted")
    assert wanted(models.CanaryStatus(stable_revision="new"))["Promoted"] == ("True", "UpToDate")
    rolled = models.CanaryStatus(phase=models.CanaryPhase.ROLLED_BACK, stable_revision="old")
    assert wanted(rolled)["Promoted"] == ("False", "RolledBack")
    unreachable = models.CheckResult(name="error-rate", verdict="error", message="query failed: unreachable")
    errored = progressing.model_copy(
        update={"last_analysis": models.Analysis(time="t", weight=10, verdict="error", checks=[unreachable])}
    )
    assert wanted(errored)["AnalysisReady"] == ("False", "AnalysisError")
    disabled = models.Canary.model_validate({**CANARY, "enabled": False})
    assert status.canary_conditions(disabled, models.CanaryStatus(), "x", prometheus_url=url) is None


def test_layout_beside_workers_scaled_to_zero_reports_the_real_weight() -> None:
    """KEDA may scale stable workers to 0: the canary's one pod then takes all the work, and says so."""
    svc = _svc(
        autoscaling={"enabled": True, "engine": "keda", "minReplicas": 0, "maxReplicas": 20},
        redis={"url": "redis://redis:6379/0"},
    )
    live = _live_stable(svc, OLD_IMAGE)
    live["Deployment/demo-worker"]["spec"]["replicas"] = 0
    live["Deployment/demo-api"]["spec"]["replicas"] = 0
    desired = builders.desired(svc)
    status = models.CanaryStatus(
        phase=models.CanaryPhase.PROGRESSING, weight=10, stable_revision="old", canary_revision=desired.revision
    )
    laid = tracks.layout(desired, status, _by_ref(live, desired))
    out = {ObjectRef.of(c).key: c for c in laid.children}
    assert out["Deployment/demo-worker-canary"]["spec"]["replicas"] == 1
    assert laid.actual_weight == 100


def test_same_pods_tells_steps_that_change_no_replica() -> None:
    """Weights are served by replica counts: a step between two weights of the same counts moves no pod."""
    small = _svc()  # api 2, worker 3: one canary of each at 10, 20 and 50 %
    desired = builders.desired(small)
    live = _by_ref(_live_stable(small, OLD_IMAGE), desired)
    assert tracks.same_pods(desired, 10, 20, live) and tracks.same_pods(desired, 20, 50, live)
    big = _svc(worker={"replicas": 10})  # workers: 1 canary at 10 %, 2 at 20 %
    desired = builders.desired(big)
    live = _by_ref(_live_stable(big, OLD_IMAGE), desired)
    assert not tracks.same_pods(desired, 10, 20, live)
    assert tracks.same_pods(desired, 10, 10, live)

"""The evaluation Job and the candidate's lane, as built (pure).

Covers: a Job from an inline suite runs `agent-runtime eval --in-process-api` from the candidate's
worker template (its image and Secrets), in the candidate's lane, with the suite in an env var, no
probes or ports, `restartPolicy: Never`, `backoffLimit: 0`, the deadline, the termination-message
path; from a ConfigMap suite it mounts that key; the name stays within 63 characters; both are
valid Kubernetes Jobs (kubernetes-validate, strict); the layout in the `before` gate runs no
candidate API pod and one candidate worker in the lane; in a step's gate the candidate API keeps
its replicas and only the workers read the lane; after the gate no lane remains.
"""

from __future__ import annotations

from typing import Any

from agent_operator.api import models
from agent_operator.canary import tracks
from agent_operator.manifests import builders, naming
from agent_operator.manifests import evaluation as job_builder

from agent_runtime import constants
from tests.unit.operator.test_kubernetes_schemas import problems

SUITE = "name: smoke\ncases: [{name: a, input: 'What is 2*3?', expect: {numeric: {value: 6}}}]\n"


def service(name: str = "demo") -> models.AgentService:
    return models.AgentService.model_validate(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {
                "model": {"providers": [{"name": "p", "model": "m", "apiKeySecretRef": {"name": "keys", "key": "p"}}]},
                "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
                "autoscaling": {"enabled": False},
                "api": {"replicas": 2},
                "worker": {"replicas": 3},
                "evaluation": {
                    "suites": [
                        {"name": "smoke", "inline": SUITE, "timeoutSeconds": 300},
                        {"name": "regression", "configMapRef": {"name": "suites", "key": "regression.yaml"}},
                    ]
                },
                "canary": {"enabled": True, "evaluation": {"before": ["smoke"], "atEachStep": ["regression"]}},
            },
        }
    )


def worker_template(svc: models.AgentService) -> dict[str, Any]:
    desired = builders.desired(svc)
    worker = next(c for c in desired.canary if c["metadata"]["name"].endswith("-worker-canary"))
    return dict(worker["spec"]["template"])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_an_inline_suite_job() -> None:
    svc = service()
    job = job_builder.build_job(
        svc, svc.spec.evaluation.suites[0], gate="before", revision="abc123", worker_template=worker_template(svc)
    )
    assert job["metadata"]["name"] == "demo-eval-smoke-before-abc123"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 300
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["restartPolicy"] == "Never"
    assert container["args"] == [
        "eval", "--in-process-api", "-o", "json", "--termination-log", "/dev/termination-log",
        "--suite-env", job_builder.SUITE_ENV,
    ]  # fmt: skip
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert not {"ports", "readinessProbe", "livenessProbe", "startupProbe"} & set(container)
    env = env_of(container)
    assert env[constants.QUEUE_LANE_ENV] == "eval-abc123" and env[job_builder.SUITE_ENV] == SUITE
    assert env[constants.TRACK_ENV] == "canary"
    assert env[constants.REDIS_URL_ENV] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert any(v["configMap"]["name"] == "demo-config-canary" for v in pod["volumes"] if "configMap" in v)
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "evaluation"
    assert problems(job) == []


def test_a_config_map_suite_job_and_a_long_name() -> None:
    svc = service("a" * 40)
    source = svc.spec.evaluation.suites[1]
    job = job_builder.build_job(svc, source, gate="step:50", revision="abc123", worker_template=worker_template(svc))
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].endswith("-abc123")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--suite", f"{job_builder.SUITE_DIR}/suite.yaml"]
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == job_builder.SUITE_VOLUME)
    assert volume["configMap"] == {"name": "suites", "items": [{"key": "regression.yaml", "path": "suite.yaml"}]}
    assert job["metadata"]["annotations"][job_builder.GATE_ANNOTATION] == "step:50"
    assert problems(job) == []


def laid_out(gate: str, weight: int) -> dict[str, dict[str, Any]]:
    svc = service()
    desired = builders.desired(svc)
    status = models.CanaryStatus(
        phase=models.CanaryPhase.PROGRESSING,
        weight=weight,
        stable_revision="old",
        canary_revision=desired.revision,
        gate=gate,
    )
    layout = tracks.layout(desired, status, {})
    return {c["metadata"]["name"]: c for c in layout.children if c["kind"] == "Deployment"}


def lane_of(deployment: dict[str, Any]) -> str | None:
    return env_of(deployment["spec"]["template"]["spec"]["containers"][0]).get(constants.QUEUE_LANE_ENV)


def test_the_layout_in_the_gates() -> None:
    before = laid_out("before", 0)
    assert before["demo-api-canary"]["spec"]["replicas"] == 0
    assert before["demo-worker-canary"]["spec"]["replicas"] == 1
    assert (lane_of(before["demo-worker-canary"]) or "").startswith("eval-")
    assert lane_of(before["demo-worker"]) is None and lane_of(before["demo-api"]) is None
    step = laid_out("step:50", 50)
    assert step["demo-api-canary"]["spec"]["replicas"] == 1 and lane_of(step["demo-api-canary"]) is None
    assert (lane_of(step["demo-worker-canary"]) or "").startswith("eval-")
    after = laid_out("", 50)
    assert lane_of(after["demo-worker-canary"]) is None and after["demo-worker-canary"]["spec"]["replicas"] >= 1
    assert naming.TRACK_LABEL in after["demo-worker-canary"]["spec"]["template"]["metadata"]["labels"]

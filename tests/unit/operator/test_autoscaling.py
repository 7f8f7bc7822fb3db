"""Unit tests of `agent_operator.manifests.autoscaling`: HPAs and the KEDA ScaledObject.

Covers:
- each HPA targets the Deployment of its component by name (the names `workloads` renders);
- worker HPA: an Object metric of the AgentService named `constants.METRIC_QUEUE_DEPTH` with
  averageValue = `targetQueueDepthPerReplica` (the HPA divides the service-wide depth by the pod
  count), plus CPU; API HPA: CPU only; min/max and the scale-down
  stabilization window from the spec; minReplicas never below 1 for an HPA;
- engine keda: a ScaledObject instead of the worker HPA, one redis-streams trigger per priority
  stream (the runtime's own keys: `agent:{<namespace>/<name>}:tasks:<priority>`), counting the
  stream's length (no consumer group: KEDA would count pending entries, 0 at zero workers) against
  streamLength = target and activating above 0; pollingInterval and cooldownPeriod from the spec;
  the KEDA address, database and TLS derived from the Redis URL, scale to zero allowed;
- engine keda with `urlSecretRef`: a TriggerAuthentication reading the address and password (and a
  username) from keys of that same Secret, referenced by every trigger; the mode, master name, TLS
  and database from the spec; a Sentinel without masterName refused;
- engine keda with a URL KEDA cannot be given (with credentials): a CrossFieldError naming the field;
- autoscaling disabled: no autoscaler at all.
"""

from __future__ import annotations

from typing import Any

import pytest
from agent_operator import cli
from agent_operator.api import models
from agent_operator.kube import secrets
from agent_operator.manifests import autoscaling, naming, workloads
from pydantic import ValidationError

from agent_runtime import constants

V = "1.2.3"


def svc(**spec: Any) -> models.AgentService:
    body: dict[str, Any] = {
        "model": {"providers": [{"name": "c", "model": "m", "apiKeySecretRef": {"name": "k", "key": "a"}}]},
        "redis": {"url": "redis://redis.agents.svc:6379/0"},
    }
    body.update(spec)
    return models.AgentService.model_validate(
        {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": "demo"}, "spec": body}
    )


def test_hpas_target_the_deployments_and_the_runtime_metric() -> None:
    s = svc(
        autoscaling={
            "minReplicas": 2,
            "maxReplicas": 9,
            "targetQueueDepthPerReplica": 25,
            "targetCPUUtilization": 60,
            "scaleDownStabilizationSeconds": 42,
        }
    )
    api_hpa, worker_hpa = autoscaling.build_autoscalers(s, operator_version=V)
    for hpa, component in ((api_hpa, naming.Component.API), (worker_hpa, naming.Component.WORKER)):
        deployment = workloads.build_deployment(s, component, operator_version=V)
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
            "apps/v1",
            "Deployment",
            deployment["metadata"]["name"],
        )
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 9)
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 42
    assert api_hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
    ]
    depth_metric, cpu_metric = worker_hpa["spec"]["metrics"]
    assert depth_metric["type"] == "Object"
    assert depth_metric["object"]["metric"]["name"] == constants.METRIC_QUEUE_DEPTH == "agent_queue_depth"
    assert depth_metric["object"]["describedObject"] == {
        "apiVersion": "agentops.dev/v1alpha1",
        "kind": "AgentService",
        "name": s.metadata.name,
    }
    assert depth_metric["object"]["target"] == {"type": "AverageValue", "averageValue": "25"}
    assert cpu_metric["resource"]["target"]["averageUtilization"] == 60


def test_cpu_only_without_a_metrics_adapter() -> None:
    s = svc(autoscaling={"queueDepthMetric": False, "targetCPUUtilization": 55})
    api_hpa, worker_hpa = autoscaling.build_autoscalers(s, operator_version=V)
    cpu_only = [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}}
    ]
    assert worker_hpa["spec"]["metrics"] == cpu_only == api_hpa["spec"]["metrics"]


def test_keda_replaces_the_worker_hpa() -> None:
    s = svc(autoscaling={"engine": "keda", "minReplicas": 0, "maxReplicas": 30, "targetQueueDepthPerReplica": 7})
    s = s.model_copy(update={"metadata": s.metadata.model_copy(update={"namespace": "team-a"})})
    api_hpa, scaled = autoscaling.build_autoscalers(s, operator_version=V)
    assert api_hpa["kind"] == "HorizontalPodAutoscaler" and api_hpa["spec"]["minReplicas"] == 1
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == naming.deployment_name("demo", naming.Component.WORKER)
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 30)
    triggers = scaled["spec"]["triggers"]
    # the namespace is part of the key: a same-named service in another namespace has its own queue
    assert [t["metadata"]["stream"] for t in triggers] == [
        "agent:{team-a/demo}:tasks:high",
        "agent:{team-a/demo}:tasks:normal",
        "agent:{team-a/demo}:tasks:low",
    ]
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        # XLEN mode: with a consumerGroup KEDA counts pending entries (and ignores streamLength),
        # which stay 0 at zero workers, so the first task would never wake one.
        assert "consumerGroup" not in trigger["metadata"] and "lagCount" not in trigger["metadata"]
        assert trigger["metadata"]["streamLength"] == "7"
        assert trigger["metadata"]["activationLagCount"] == "0"
        assert trigger["metadata"]["address"] == "redis.agents.svc:6379"
        assert trigger["metadata"]["databaseIndex"] == "0"
        assert "authenticationRef" not in trigger
        assert trigger["metadata"]["enableTLS"] == "false"
        assert all(isinstance(v, str) for v in trigger["metadata"].values())
    # KEDA's defaults: every 30 s, and 300 s (the stabilization window) from the last task to zero
    assert (scaled["spec"]["pollingInterval"], scaled["spec"]["cooldownPeriod"]) == (30, 300)


def test_keda_polling_and_cooldown_follow_the_spec() -> None:
    s = svc(autoscaling={"engine": "keda", "minReplicas": 0, "pollingIntervalSeconds": 5,
                         "scaleDownStabilizationSeconds": 20})  # fmt: skip
    scaled = autoscaling.build_autoscalers(s, operator_version=V)[-1]
    assert (scaled["spec"]["pollingInterval"], scaled["spec"]["cooldownPeriod"]) == (5, 20)
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 20}
    }


def keda_with_secret(**redis: Any) -> list[dict[str, Any]]:
    body = {"urlSecretRef": {"name": "redis-credentials", "key": "url"}, **redis}
    return autoscaling.build_autoscalers(
        svc(redis=body, autoscaling={"engine": "keda", "minReplicas": 0}), operator_version=V
    )


def test_keda_with_the_url_in_a_secret_reads_address_and_password_from_that_secret() -> None:
    api_hpa, auth, scaled = keda_with_secret()
    assert api_hpa["kind"] == "HorizontalPodAutoscaler"
    assert (auth["apiVersion"], auth["kind"]) == ("keda.sh/v1alpha1", "TriggerAuthentication")
    assert auth["metadata"]["name"] == scaled["metadata"]["name"] == "demo-worker"
    assert auth["metadata"]["labels"] == scaled["metadata"]["labels"]
    assert auth["spec"] == {
        "secretTargetRef": [
            {"parameter": "address", "name": "redis-credentials", "key": "address"},
            {"parameter": "password", "name": "redis-credentials", "key": "password"},
        ]
    }
    refs = [trigger["authenticationRef"] for trigger in scaled["spec"]["triggers"]]
    assert len({id(r) for r in refs}) == len(refs)  # not one shared dict
    # and `agentctl render` prints every object in full, never a YAML anchor and alias
    shared = {"name": "x"}
    assert "&" not in cli.to_yaml([{"a": shared, "b": shared}]) and "&" not in cli.to_yaml([auth, scaled])
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "redis-streams"
        assert trigger["authenticationRef"] == {"name": "demo-worker"}
        # nothing secret in the ScaledObject: no address, no password
        assert {k: v for k, v in trigger["metadata"].items() if k != "stream"} == {
            "enableTLS": "false",
            "databaseIndex": "0",
            "streamLength": "50",
            "activationLagCount": "0",
        }


@pytest.mark.parametrize(
    ("redis", "trigger_type", "metadata", "refs"),
    [
        (
            {
                "keda": {
                    "addressKey": "host",
                    "passwordKey": "redis-password",
                    "usernameKey": "user",
                    "databaseIndex": 3,
                },
                "tls": {"enabled": True},
            },
            "redis-streams",
            {"enableTLS": "true", "databaseIndex": "3"},
            [("address", "host"), ("password", "redis-password"), ("username", "user")],
        ),
        (
            {"mode": "cluster"},
            "redis-cluster-streams",
            {"enableTLS": "false"},
            [("addresses", "address"), ("password", "password")],
        ),
        (
            {"mode": "sentinel", "masterName": "agents", "keda": {"databaseIndex": 1}},
            "redis-sentinel-streams",
            {"enableTLS": "false", "sentinelMaster": "agents", "databaseIndex": "1"},
            [("addresses", "address"), ("password", "password")],
        ),
        (
            # a password of its own (and a literal user): from the worker's env, as with a literal url
            {"username": "svc", "passwordSecretRef": {"name": "pw", "key": "p"}, "keda": {"usernameKey": "u"}},
            "redis-streams",
            {
                "enableTLS": "false",
                "databaseIndex": "0",
                "usernameFromEnv": "AGENT_REDIS_USERNAME",
                "passwordFromEnv": "AGENT_REDIS_PASSWORD",
            },
            [("address", "address")],
        ),
    ],
)
def test_keda_with_the_url_in_a_secret_follows_the_spec(
    redis: dict[str, Any], trigger_type: str, metadata: dict[str, str], refs: list[tuple[str, str]]
) -> None:
    _, auth, scaled = keda_with_secret(**redis)
    assert [(r["parameter"], r["key"]) for r in auth["spec"]["secretTargetRef"]] == refs
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {"redis-credentials"}
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == trigger_type
        skip = {"stream", "streamLength", "activationLagCount"}
        assert {k: v for k, v in trigger["metadata"].items() if k not in skip} == metadata


def test_keda_with_a_sentinel_url_in_a_secret_needs_the_master_name() -> None:
    with pytest.raises(ValidationError, match=r"needs redis\.masterName"):
        svc(redis={"urlSecretRef": {"name": "r", "key": "url"}, "mode": "sentinel"}, autoscaling={"engine": "keda"})


def test_redis_keda_needs_a_url_secret() -> None:
    with pytest.raises(ValidationError, match=r"applies only with urlSecretRef"):
        svc(redis={"url": "redis://r:6379/0", "keda": {}})
    # with the hpa engine the keys are accepted (and not used): switching engines keeps the spec valid
    assert len(autoscaling.build_autoscalers(svc(redis={"urlSecretRef": {"name": "r", "key": "url"}, "keda": {}}),
                                             operator_version=V)) == 2  # fmt: skip


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://r", {"address": "r:6379", "databaseIndex": "0", "enableTLS": "false"}),
        ("rediss://r.example.com:6380/3", {"address": "r.example.com:6380", "databaseIndex": "3", "enableTLS": "true"}),
        ("redis://[::1]:7000/1", {"address": "[::1]:7000", "databaseIndex": "1", "enableTLS": "false"}),
    ],
)
def test_keda_connection_from_url(url: str, expected: dict[str, str]) -> None:
    assert autoscaling.redis_trigger_connection(models.RedisSpec(url=url)) == expected


@pytest.mark.parametrize("redis", [{"url": "redis://:pw@r:6379/0"}, {"url": "redis://r:6379/queue"}])
def test_keda_specs_without_a_plain_url_are_invalid(redis: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"the keda engine needs a plain redis\.url"):
        svc(redis=redis, autoscaling={"engine": "keda"})
    # the hpa engine serves the same Redis settings
    assert len(autoscaling.build_autoscalers(svc(redis=redis), operator_version=V)) == 2


def test_keda_refuses_urls_it_cannot_pass() -> None:
    # The model rejects these first; the builder's own check is the backstop for direct callers.
    with pytest.raises(models.CrossFieldError) as caught:
        autoscaling.redis_trigger_connection(models.RedisSpec(url="redis://r:6379/queue"))
    assert caught.value.field == "spec.redis.url"


def test_disabled_means_no_autoscaler() -> None:
    assert autoscaling.build_autoscalers(svc(autoscaling={"enabled": False}), operator_version=V) == []
    assert (
        autoscaling.build_autoscalers(svc(autoscaling={"enabled": False, "engine": "keda"}), operator_version=V) == []
    )


@pytest.mark.parametrize(
    ("redis", "trigger_type", "expected"),
    [
        (
            {"url": "redis+cluster://r-0:6379,r-1", "username": "svc", "passwordSecretRef": {"name": "r", "key": "pw"}},
            "redis-cluster-streams",
            {
                "addresses": "r-0:6379,r-1:6379",
                "enableTLS": "false",
                "usernameFromEnv": "AGENT_REDIS_USERNAME",
                "passwordFromEnv": "AGENT_REDIS_PASSWORD",
            },
        ),
        (
            {"url": "rediss://cfg.example.com:6379", "mode": "cluster"},
            "redis-cluster-streams",
            {"addresses": "cfg.example.com:6379", "enableTLS": "true"},
        ),
        (
            {"url": "redis+sentinel://s-0,s-1:26380/agents/2"},
            "redis-sentinel-streams",
            {
                "addresses": "s-0:26379,s-1:26380",
                "sentinelMaster": "agents",
                "databaseIndex": "2",
                "enableTLS": "false",
            },
        ),
        (
            {"url": "redis://s-0:26379", "mode": "sentinel", "masterName": "m", "tls": {"enabled": True}},
            "redis-sentinel-streams",
            {"addresses": "s-0:26379", "sentinelMaster": "m", "databaseIndex": "0", "enableTLS": "true"},
        ),
    ],
)
def test_keda_trigger_type_follows_the_redis_mode(
    redis: dict[str, Any], trigger_type: str, expected: dict[str, str]
) -> None:
    scaled = autoscaling.build_autoscalers(svc(redis=redis, autoscaling={"engine": "keda"}), operator_version=V)[1]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == trigger_type
        assert {
            k: v for k, v in trigger["metadata"].items() if k not in {"stream", "streamLength", "activationLagCount"}
        } == (expected)


def test_the_keys_keda_reads_are_checked_like_every_secret_reference() -> None:
    """A missing `address` or `password` key would leave KEDA unable to read the queue: SecretMissing."""
    redis = {"urlSecretRef": {"name": "redis-credentials", "key": "url"}, "keda": {"usernameKey": "user"}}
    refs = secrets.references(svc(redis=redis, autoscaling={"engine": "keda", "minReplicas": 0}).spec)
    assert [(r.name, r.key, r.field) for r in refs if r.name == "redis-credentials"] == [
        ("redis-credentials", "url", "spec.redis.urlSecretRef"),
        ("redis-credentials", "address", "spec.redis.keda.addressKey"),
        ("redis-credentials", "password", "spec.redis.keda.passwordKey"),
        ("redis-credentials", "user", "spec.redis.keda.usernameKey"),
    ]
    live = {"redis-credentials": {"data": {"url": "cmVkaXM6Ly9y", "address": "cjo2Mzc5"}}}
    assert secrets.problems(refs, live)[-2:] == [
        "key 'password' not in Secret 'redis-credentials' (spec.redis.keda.passwordKey)",
        "key 'user' not in Secret 'redis-credentials' (spec.redis.keda.usernameKey)",
    ]
    # the hpa engine (or autoscaling off) does not need them
    for scaling in ({"engine": "hpa"}, {"engine": "keda", "enabled": False}):
        refs = secrets.references(svc(redis=redis, autoscaling=scaling).spec)
        assert [r.key for r in refs if r.name == "redis-credentials"] == ["url"]

"""Unit tests of `agent_operator.manifests.workloads`: the shape of Deployments, Services, PDBs and NetworkPolicy.

Covers:
- selectors match the pod labels; stable and canary selectors never overlap; the API Service
  selects API pods of both tracks; the worker metrics Service and PDBs select their component;
- the container: image default and override, `agent-runtime api|worker`, ports and probe paths from
  `agent_runtime.constants`, resources from the spec, the hardened security context, the config
  mount at `constants.CONFIG_PATH`, a /tmp emptyDir;
- env: identity, pod name from the downward API, auth token from the operator Secret, Redis URL
  literal or secretKeyRef, provider keys only as secretKeyRefs, `spec.env` appended without
  duplicating a reserved name;
- the service-account token is never mounted unless `automountServiceAccountToken: true`, with or
  without `serviceAccountName`; `podAnnotations` on the pod;
- replicas omitted under autoscaling, from the spec without it, explicit counts always written;
- the template hash: on the Deployment and its template, stable across re-renders and replica
  changes, changed by image, env, config and pod-annotation changes, equal for the canary and the
  stable Deployment of the same spec;
- NetworkPolicy peers; the version label derived from the image.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from agent_operator.api import models
from agent_operator.kube import secrets
from agent_operator.manifests import naming, runtimeconfig, workloads
from agent_operator.objects import ObjectRef

from agent_runtime import constants

API = naming.Component.API
WORKER = naming.Component.WORKER
STABLE = naming.Track.STABLE
CANARY = naming.Track.CANARY
V = "1.2.3"


def svc(name: str = "demo", **spec: Any) -> models.AgentService:
    body: dict[str, Any] = {
        "model": {
            "providers": [
                {"name": "claude", "model": "m", "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"}},
                {"name": "local-llm", "kind": "openai-compatible", "model": "l", "baseURL": "http://llm:8000/v1"},
            ]
        },
        "redis": {"url": "redis://redis:6379/0"},
    }
    body.update(spec)
    return models.AgentService.model_validate(
        {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": name}, "spec": body}
    )


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in entries}


def test_selectors_match_pod_labels_and_tracks_never_overlap() -> None:
    s = svc()
    for component in (API, WORKER):
        stable = workloads.build_deployment(s, component, operator_version=V)
        canary = workloads.build_deployment(s, component, operator_version=V, track=CANARY, replicas=1)
        for dep in (stable, canary):
            assert matches(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
        assert not matches(stable["spec"]["selector"]["matchLabels"], canary["spec"]["template"]["metadata"]["labels"])
        assert not matches(canary["spec"]["selector"]["matchLabels"], stable["spec"]["template"]["metadata"]["labels"])
        assert canary["metadata"]["name"] == naming.deployment_name("demo", component, CANARY)
        assert canary["spec"]["template"]["metadata"]["labels"][naming.TRACK_LABEL] == "canary"
    api_service = workloads.build_api_service(s, operator_version=V)
    for track in (STABLE, CANARY):
        api_pods = workloads.build_deployment(s, API, operator_version=V, track=track)["spec"]["template"]["metadata"][
            "labels"
        ]
        worker_pods = workloads.build_deployment(s, WORKER, operator_version=V, track=track)["spec"]["template"][
            "metadata"
        ]
        assert matches(api_service["spec"]["selector"], api_pods)
        assert not matches(api_service["spec"]["selector"], worker_pods["labels"])
        metrics = workloads.build_worker_metrics_service(s, operator_version=V)
        assert matches(metrics["spec"]["selector"], worker_pods["labels"])
        for component, labels in ((API, api_pods), (WORKER, worker_pods["labels"])):
            pdb = workloads.build_pod_disruption_budget(s, component, operator_version=V)
            assert matches(pdb["spec"]["selector"]["matchLabels"], labels)


def test_container_runs_the_runtime_hardened() -> None:
    dep = workloads.build_deployment(svc(), API, operator_version=V)
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"agentops/agent-runtime:{V}"
    assert container["command"] == ["agent-runtime"] and container["args"] == ["api"]
    assert container["ports"] == [{"name": "http", "containerPort": constants.API_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == constants.HEALTH_PATH
    assert container["readinessProbe"]["httpGet"]["path"] == constants.READY_PATH
    assert container["startupProbe"]["httpGet"]["path"] == constants.HEALTH_PATH
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_file = mounts["config"]["mountPath"] + "/" + volumes["config"]["configMap"]["items"][0]["path"]
    assert config_file == constants.CONFIG_PATH
    assert volumes["config"]["configMap"]["name"] == naming.config_map_name("demo")
    assert volumes["config"]["configMap"]["items"][0]["key"] == runtimeconfig.CONFIG_KEY
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod

    worker = workloads.build_deployment(svc(image="me/rt:v9"), WORKER, operator_version=V)
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "me/rt:v9" and container["args"] == ["worker"]
    assert container["ports"][0]["containerPort"] == constants.WORKER_METRICS_PORT
    assert container["readinessProbe"]["httpGet"]["port"] == container["ports"][0]["name"]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_env_references_secrets_and_never_copies_keys() -> None:
    s = svc(
        env=[
            {"name": "LOG_LEVEL", "value": "debug"},
            {"name": constants.TRACK_ENV, "value": "hijack"},
            {"name": "LOG_LEVEL", "value": "info"},
            {"name": "EXTRA", "secretKeyRef": {"name": "x", "key": "y"}},
        ]
    )
    env = env_of(workloads.build_deployment(s, WORKER, operator_version=V, track=CANARY, replicas=1))
    assert env[constants.SERVICE_ENV]["value"] == "demo"
    assert env[constants.TRACK_ENV]["value"] == "canary"
    assert env[constants.POD_NAME_ENV]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env[constants.CONFIG_PATH_ENV]["value"] == constants.CONFIG_PATH
    assert env[constants.AUTH_TOKEN_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": naming.auth_secret_name("demo"),
        "key": runtimeconfig.AUTH_TOKEN_KEY,
    }
    assert env[constants.REDIS_URL_ENV] == {"name": constants.REDIS_URL_ENV, "value": "redis://redis:6379/0"}
    key_env = constants.provider_key_env("claude")
    assert env[key_env] == {
        "name": key_env,
        "valueFrom": {"secretKeyRef": {"name": "llm-keys", "key": "anthropic"}},
    }
    assert constants.provider_key_env("local-llm") not in env  # no key configured, none injected
    assert env["LOG_LEVEL"]["value"] == "info"
    assert env["EXTRA"]["valueFrom"]["secretKeyRef"] == {"name": "x", "key": "y"}

    secret_redis = svc(redis={"urlSecretRef": {"name": "redis", "key": "url"}})
    env = env_of(workloads.build_deployment(secret_redis, API, operator_version=V))
    assert env[constants.REDIS_URL_ENV]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}


def test_provider_keys_only_as_secret_key_refs() -> None:
    s = svc()
    for component in (API, WORKER):
        for name, entry in env_of(workloads.build_deployment(s, component, operator_version=V)).items():
            if name.startswith("AGENT_PROVIDER_"):
                assert "value" not in entry and set(entry["valueFrom"]) == {"secretKeyRef"}


def test_service_account_and_pod_annotations() -> None:
    s = svc(serviceAccountName="runner", podAnnotations={"example.com/team": "a"})
    template = workloads.build_deployment(s, API, operator_version=V)["spec"]["template"]
    assert template["spec"]["serviceAccountName"] == "runner"
    # naming a ServiceAccount does not hand the pods its API token
    assert template["spec"]["automountServiceAccountToken"] is False
    assert template["metadata"]["annotations"]["example.com/team"] == "a"
    assert runtimeconfig.CONFIG_HASH_ANNOTATION in template["metadata"]["annotations"]


def test_replicas() -> None:
    autoscaled = svc()
    assert "replicas" not in workloads.build_deployment(autoscaled, API, operator_version=V)["spec"]
    assert "replicas" not in workloads.build_deployment(autoscaled, WORKER, operator_version=V)["spec"]
    assert (
        workloads.build_deployment(autoscaled, WORKER, operator_version=V, track=CANARY, replicas=2)["spec"]["replicas"]
        == 2
    )
    fixed = svc(autoscaling={"enabled": False}, api={"replicas": 3}, worker={"replicas": 5})
    assert workloads.build_deployment(fixed, API, operator_version=V)["spec"]["replicas"] == 3
    assert workloads.build_deployment(fixed, WORKER, operator_version=V)["spec"]["replicas"] == 5
    assert workloads.build_deployment(fixed, WORKER, operator_version=V, replicas=0)["spec"]["replicas"] == 0


def _hash(s: models.AgentService, component: naming.Component = API, **kwargs: Any) -> str:
    dep = workloads.build_deployment(s, component, operator_version=kwargs.pop("operator_version", V), **kwargs)
    value: str = dep["metadata"]["annotations"][naming.TEMPLATE_HASH_ANNOTATION]
    assert dep["spec"]["template"]["metadata"]["annotations"][naming.TEMPLATE_HASH_ANNOTATION] == value
    return value


def test_template_hash_changes_exactly_with_the_template() -> None:
    base = _hash(svc())
    assert len(base) == 10
    assert _hash(svc()) == base
    assert _hash(svc(api={"replicas": 7})) == base  # replicas live outside the template
    assert _hash(svc(autoscaling={"maxReplicas": 30})) == base
    assert _hash(svc(), track=CANARY, replicas=1) == base  # same revision on either track
    assert workloads.pod_template_hash(svc(), API, operator_version=V) == base
    changed = [
        _hash(svc(image="me/rt:v2")),
        _hash(svc(), operator_version="9.9.9"),
        _hash(svc(env=[{"name": "X", "value": "1"}])),
        _hash(svc(podAnnotations={"a": "b"})),
        _hash(svc(limits={"maxStepsPerTask": 3})),  # config change -> config hash -> template
        _hash(
            svc(model={"providers": [{"name": "other", "model": "m", "apiKeySecretRef": {"name": "k", "key": "k"}}]})
        ),
        _hash(svc(api={"resources": {"requests": {"cpu": "1"}}})),
        _hash(svc(), WORKER),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_canary_reads_its_own_config_map() -> None:
    canary = workloads.build_deployment(svc(), API, operator_version=V, track=CANARY, replicas=1)
    volumes = {v["name"]: v for v in canary["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == naming.config_map_name("demo", CANARY)
    assert naming.config_map_name("demo", CANARY) != naming.config_map_name("demo")
    cm = runtimeconfig.build_config_map(svc(), app_version=V, track=CANARY)
    assert cm["metadata"]["name"] == naming.config_map_name("demo", CANARY)


def test_network_policy() -> None:
    s = svc(networkPolicy={"enabled": True, "allowFromNamespaces": ["web", "batch", "web"]})
    policy = workloads.build_network_policy(s, operator_version=V)
    pods = workloads.build_deployment(s, WORKER, operator_version=V)["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"]["matchLabels"], pods)
    api_rule, scrape_rule = policy["spec"]["ingress"]
    assert {"podSelector": {}} in api_rule["from"]
    expr = api_rule["from"][1]["namespaceSelector"]["matchExpressions"][0]
    assert expr["values"] == ["batch", "web"] and expr["operator"] == "In"
    assert [p["port"] for p in api_rule["ports"]] == [constants.API_PORT]
    assert scrape_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert {p["port"] for p in scrape_rule["ports"]} == {constants.API_PORT, constants.WORKER_METRICS_PORT}
    alone = workloads.build_network_policy(svc(networkPolicy={"enabled": True}), operator_version=V)
    assert alone["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]


def test_version_label_follows_the_image() -> None:
    assert workloads.app_version(svc(), V) == V
    assert workloads.app_version(svc(image="r.io:5000/team/rt:v2.0"), V) == "v2.0"
    assert workloads.app_version(svc(image="r.io:5000/team/rt"), V) == "latest"
    assert workloads.app_version(svc(image="rt@sha256:" + "a" * 64), V) == "digest"
    assert workloads.app_version(svc(image="rt:" + "x" * 100 + "-"), V) == "x" * 63
    # an operator upgrade does not touch the pod template of a custom image
    custom = svc(image="me/rt:v2")
    assert _hash(custom, operator_version="1.0.0") == _hash(custom, operator_version="2.0.0")


def test_auth_secret_shape() -> None:
    shape = runtimeconfig.build_auth_secret(svc(), app_version=V)
    assert "data" not in shape and shape["metadata"]["annotations"] == {runtimeconfig.GENERATED_ANNOTATION: "true"}
    (filled,) = secrets.with_token([shape], ObjectRef.of(shape), "s3cret")
    assert base64.b64decode(filled["data"][runtimeconfig.AUTH_TOKEN_KEY]) == b"s3cret"
    assert {k: v for k, v in filled.items() if k != "data"} == shape


def test_builders_do_not_mutate_their_input() -> None:
    s = svc(env=[{"name": "A", "value": "1"}], podAnnotations={"x": "y"})
    before = copy.deepcopy(s.model_dump())
    workloads.build_deployment(s, API, operator_version=V)
    assert s.model_dump() == before


def test_service_account_token_only_when_asked_for() -> None:
    for spec in (
        {"automountServiceAccountToken": True},
        {"serviceAccountName": "runner", "automountServiceAccountToken": True},
    ):
        template = workloads.build_deployment(svc(**spec), WORKER, operator_version=V)["spec"]["template"]
        assert template["spec"]["automountServiceAccountToken"] is True, spec

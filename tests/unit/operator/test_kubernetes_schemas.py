"""Every rendered manifest validates against real schemas.

Covers:
- built-in kinds (ConfigMap, Secret, Service, Deployment, HPA, PDB, NetworkPolicy) validate with
  kubernetes-validate in strict mode (unknown fields rejected) against Kubernetes 1.30 and the
  newest version the installed kubernetes-validate ships;
- the custom-resource kinds (PrometheusRule, ServiceMonitor, ScaledObject, TriggerAuthentication)
  validate with jsonschema
  against the upstream CRDs' openAPIV3Schema vendored in `tests/schemas/` (see its README), made
  strict, with `metadata` checked as ObjectMeta;
- the validators can fail: an unknown field, a wrong type and a missing required field are each
  rejected (so a green run means something);
- a set of representative specs built here (minimal, every field, KEDA, fixed replicas, secret-held
  Redis URL, custom image, 63-character name) and every `examples/*.yaml` AgentService, if present;
- a hypothesis property: any valid spec renders deterministic manifests that all validate (or is
  refused with a CrossFieldError only for the one combination the builders cannot serve: the KEDA
  engine with a literal Redis URL that carries credentials; a URL in a Secret is served through a
  TriggerAuthentication).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import referencing
import yaml
from agent_operator.api import models
from agent_operator.manifests import builders
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MIN_VERSION = "1.30"
LATEST_VERSION = kv_utils.major_minor(kv_utils.latest_version())
VERSIONS = sorted({MIN_VERSION, LATEST_VERSION})
CRD_SCHEMA_FILES = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com.v1.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com.v1.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh.v1alpha1.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication.keda.sh.v1alpha1.yaml",
}
OBJECT_META_REF = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


# --- validators ----------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A copy of a structural schema that rejects unknown fields, like `fieldValidation=Strict`."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields", False)
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def _definitions() -> dict[str, Any]:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = folder / f"v{kv_utils.latest_version()}-local-strict" / "_definitions.json"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    """A strict jsonschema validator for one vendored CRD kind."""
    schema = strict(yaml.safe_load((SCHEMAS / CRD_SCHEMA_FILES[(api_version, kind)]).read_text()))
    schema["properties"]["metadata"] = {"$ref": OBJECT_META_REF}
    schema["properties"]["apiVersion"]["const"] = api_version
    schema["properties"]["kind"]["const"] = kind
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json", referencing.Resource.from_contents(_definitions())
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def problems(manifest: dict[str, Any]) -> list[str]:
    """Every schema problem of one manifest, as `kind/name@version: path: message` lines."""
    ident = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key in CRD_SCHEMA_FILES:
        validator = crd_validator(str(key[0]), str(key[1]))
        return [
            f"{ident}: {'.'.join(map(str, err.absolute_path))}: {err.message}"
            for err in validator.iter_errors(manifest)
        ]
    found = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            found.append(f"{ident}@{version}: {'.'.join(map(str, err.path))}: {err.message}")
    return found


def assert_valid(manifests: list[dict[str, Any]]) -> None:
    found = [p for m in manifests for p in problems(m)]
    assert not found, "\n".join(found)


# --- representative specs ------------------------------------------------------------------------


def agent_service(name: str = "demo", namespace: str = "agents", **spec: Any) -> models.AgentService:
    body: dict[str, Any] = {
        "model": {
            "providers": [
                {"name": "claude", "model": "claude-sonnet-4-5", "apiKeySecretRef": {"name": "k", "key": "a"}}
            ]
        },
        "redis": {"url": "redis://redis.agents.svc:6379/0"},
    }
    body.update(spec)
    return models.AgentService.model_validate(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": body,
        }
    )


FULL_SPEC: dict[str, Any] = {
    "image": "registry.example.com:5000/team/agent-runtime:v2.3.1",
    "imagePullPolicy": "Always",
    "model": {
        "providers": [
            {
                "name": "claude",
                "kind": "anthropic",
                "model": "claude-sonnet-4-5",
                "weight": 80,
                "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
            },
            {
                "name": "local-llm",
                "kind": "openai-compatible",
                "model": "llama-3",
                "baseURL": "http://vllm.models.svc:8000/v1",
                "weight": 20,
            },
        ],
        "strategy": "weighted",
        "systemPrompt": "Be brief.",
        "maxOutputTokens": 2048,
    },
    "api": {"replicas": 3, "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1"}}},
    "worker": {
        "replicas": 4,
        "concurrency": 16,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "terminationGracePeriodSeconds": 300,
    },
    "autoscaling": {
        "enabled": True,
        "engine": "hpa",
        "minReplicas": 2,
        "maxReplicas": 20,
        "targetQueueDepthPerReplica": 25,
        "targetCPUUtilization": 60,
        "scaleDownStabilizationSeconds": 120,
    },
    "limits": {"requestsPerMinute": 1200, "tokensPerMinute": 800000, "maxStepsPerTask": 30, "taskTimeoutSeconds": 900},
    "budget": {
        "dailyUSD": 200,
        "perTaskUSD": 2.5,
        "prices": {
            "claude-sonnet-4-5": {"inputPerMtok": 3, "outputPerMtok": 15},
            "llama-3": {"inputPerMtok": 0.6, "outputPerMtok": 0.6},
        },
    },
    "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
    "alerts": {"enabled": True, "errorRate": 0.05, "p95LatencySeconds": 30, "hourlyCostUSD": 20, "queueDepth": 100},
    "canary": {"enabled": True, "steps": [5, 25, 100], "interval": "2m"},
    "env": [
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "EXTRA_TOKEN", "secretKeyRef": {"name": "extra", "key": "token"}},
    ],
    "podAnnotations": {"example.com/team": "agents"},
    "serviceAccountName": "agent-runtime",
    "networkPolicy": {"enabled": True, "allowFromNamespaces": ["web", "batch"], "monitoringNamespace": "observability"},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 2},
}


def representative_specs() -> dict[str, models.AgentService]:
    return {
        "minimal": agent_service(),
        "full": agent_service(**FULL_SPEC),
        "keda": agent_service(autoscaling={"engine": "keda", "minReplicas": 0, "maxReplicas": 50}),
        "keda-cluster": agent_service(
            redis={"url": "redis+cluster://r-0:6379,r-1:6379", "passwordSecretRef": {"name": "r", "key": "pw"}},
            autoscaling={"engine": "keda"},
        ),
        "keda-sentinel": agent_service(
            redis={
                "url": "rediss+sentinel://s-0:26379,s-1:26379/agents",
                "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
            },
            autoscaling={"engine": "keda"},
        ),
        "keda-url-in-secret": agent_service(
            redis={"urlSecretRef": {"name": "redis", "key": "url"}}, autoscaling={"engine": "keda", "minReplicas": 0}
        ),
        "keda-cluster-url-in-secret": agent_service(
            redis={
                "urlSecretRef": {"name": "redis", "key": "url"},
                "mode": "cluster",
                "tls": {"enabled": True},
                "keda": {"addressKey": "nodes", "passwordKey": "pw", "usernameKey": "user"},
            },
            autoscaling={"engine": "keda", "pollingIntervalSeconds": 5},
        ),
        "keda-tls": agent_service(
            redis={"url": "rediss://redis.example.com:6380/3"}, autoscaling={"engine": "keda", "maxReplicas": 5}
        ),
        "fixed-replicas": agent_service(
            autoscaling={"enabled": False}, podDisruptionBudget={"enabled": False}, alerts={"enabled": False}
        ),
        "digest-image": agent_service(image="agentops/agent-runtime@sha256:" + "a" * 64),
        "long-name": agent_service(name="a" * 63, namespace="n" * 63, networkPolicy={"enabled": True}),
    }


def example_services() -> dict[str, models.AgentService]:
    found = {}
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == models.KIND:
                found[f"{path.name}#{index}"] = models.AgentService.model_validate(doc)
    return found


# --- tests ---------------------------------------------------------------------------------------


def test_versions_cover_130_or_newer() -> None:
    assert MIN_VERSION in [kv_utils.major_minor(v) for v in kv_utils.all_versions()]
    assert [int(x) for x in LATEST_VERSION.split(".")] >= [1, 30]


@pytest.mark.parametrize("name", sorted(representative_specs()))
def test_representative_specs_render_valid_manifests(name: str) -> None:
    manifests = builders.build_children(representative_specs()[name])
    assert_valid(manifests)


def test_every_crd_kind_is_exercised() -> None:
    kinds = {
        (m["apiVersion"], m["kind"]) for svc in representative_specs().values() for m in builders.build_children(svc)
    }
    assert set(CRD_SCHEMA_FILES) <= kinds


def test_examples_render_valid_manifests() -> None:
    services = example_services()
    if not services:
        pytest.skip("no examples/*.yaml AgentService yet")
    for name, svc in services.items():
        found = [p for m in builders.build_children(svc) for p in problems(m)]
        assert not found, f"{name}:\n" + "\n".join(found)


def _by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(m for m in manifests if m["kind"] == kind))


def test_validators_reject_what_the_api_server_would() -> None:
    manifests = builders.build_children(agent_service(autoscaling={"engine": "keda"}))
    deployment = _by_kind(manifests, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert any("livenesProbe" in p for p in problems(deployment))
    hpa = _by_kind(manifests, "HorizontalPodAutoscaler")
    hpa["spec"]["maxReplicas"] = "ten"
    assert problems(hpa)
    monitor = _by_kind(manifests, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "30s"
    assert any("scrapeEvery" in p for p in problems(monitor))
    rule = _by_kind(manifests, "PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    assert any("expr" in p for p in problems(rule))
    scaled = _by_kind(manifests, "ScaledObject")
    scaled["metadata"]["labels"] = {"a": 1}
    scaled["spec"]["triggers"][0]["metadata"]["streamLength"] = 50
    assert len(problems(scaled)) == 2
    del scaled["spec"]["triggers"]
    assert any("triggers" in p for p in problems(scaled))


# --- property ------------------------------------------------------------------------------------

DNS = st.from_regex(r"[a-z]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)
QUANTITY_CPU = st.sampled_from([None, "50m", "1", "2500m"])
QUANTITY_MEM = st.sampled_from([None, "64Mi", "1Gi", "1.5G"])
ENV_NAME = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True) | st.sampled_from(["AGENT_TRACK", "AGENT_REDIS_URL"])
SECRET_REF = st.fixed_dictionaries({"name": DNS, "key": st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)})


def _resources(draw: st.DrawFn) -> dict[str, Any]:
    def section() -> dict[str, Any]:
        return {k: v for k, v in (("cpu", draw(QUANTITY_CPU)), ("memory", draw(QUANTITY_MEM))) if v is not None}

    return {"requests": section(), "limits": section()}


@st.composite
def agent_services(draw: st.DrawFn) -> dict[str, Any]:
    """A valid AgentService manifest, drawn across every field the builders read."""
    names = draw(st.lists(DNS, min_size=1, max_size=3, unique=True))
    providers = []
    for name in names:
        kind = draw(st.sampled_from(["anthropic", "openai-compatible"]))
        provider: dict[str, Any] = {"name": name, "kind": kind, "model": draw(st.sampled_from(["m1", "claude-x"]))}
        provider["weight"] = draw(st.integers(1, 100))
        if draw(st.booleans()):
            provider["baseURL"] = "http://llm.local:8000/v1"
        if "baseURL" not in provider or draw(st.booleans()):
            provider["apiKeySecretRef"] = draw(SECRET_REF)
        providers.append(provider)
    engine = draw(st.sampled_from(["hpa", "keda"]))
    low = draw(st.integers(1 if engine == "hpa" else 0, 20))
    redis = (
        {"url": draw(st.sampled_from(["redis://r:6379/0", "rediss://r.example.com/2", "redis://u:p@r:6379"]))}
        if draw(st.booleans())
        else {"urlSecretRef": draw(SECRET_REF)}
    )
    if engine == "keda" and "url" in redis:  # a literal URL for KEDA: without credentials (models.AgentServiceSpec)
        redis = {"url": draw(st.sampled_from(["redis://r:6379/0", "rediss://r.example.com/2"]))}
    elif "urlSecretRef" in redis and draw(st.booleans()):
        redis["keda"] = {
            "addressKey": draw(st.sampled_from(["address", "host"])),
            "databaseIndex": draw(st.integers(0, 15)),
        }
    env = []
    for var_name in draw(st.lists(ENV_NAME, max_size=4)):
        env.append(
            {"name": var_name, **({"value": "v"} if draw(st.booleans()) else {"secretKeyRef": draw(SECRET_REF)})}
        )
    spec: dict[str, Any] = {
        "model": {"providers": providers, "strategy": draw(st.sampled_from(["weighted", "round_robin", "failover"]))},
        "api": {"replicas": draw(st.integers(0, 5)), "resources": _resources(draw)},
        "worker": {
            "replicas": draw(st.integers(0, 5)),
            "concurrency": draw(st.integers(1, 64)),
            "resources": _resources(draw),
            "terminationGracePeriodSeconds": draw(st.integers(1, 600)),
        },
        "autoscaling": {
            "enabled": draw(st.booleans()),
            "engine": engine,
            "minReplicas": low,
            "maxReplicas": draw(st.integers(max(low, 1), 50)),
            "targetQueueDepthPerReplica": draw(st.integers(1, 1000)),
            "scaleDownStabilizationSeconds": draw(st.integers(0, 3600)),
            "pollingIntervalSeconds": draw(st.integers(1, 3600)),
        },
        "budget": {
            "dailyUSD": draw(st.none() | st.floats(0, 1000)),
            "prices": {
                "m1": {"inputPerMtok": draw(st.floats(0, 50)), "outputPerMtok": 1},
                "claude-x": {"inputPerMtok": 3, "outputPerMtok": 15},  # a budget needs every model priced
            },
        },
        "redis": redis,
        "alerts": {"enabled": draw(st.booleans()), "errorRate": draw(st.floats(0, 1))},
        "env": env,
        "podAnnotations": draw(st.dictionaries(st.sampled_from(["a.io/x", "b", "c.dev/y-z"]), st.text(max_size=8))),
        "networkPolicy": {"enabled": draw(st.booleans()), "allowFromNamespaces": draw(st.lists(DNS, max_size=3))},
        "podDisruptionBudget": {"enabled": draw(st.booleans()), "maxUnavailable": draw(st.integers(0, 3))},
    }
    if draw(st.booleans()):
        spec["serviceAccountName"] = draw(DNS)
    if draw(st.booleans()):
        spec["image"] = draw(
            st.sampled_from(["img", "r.io:5000/team/img:v1.0", "img:latest", "img@sha256:" + "b" * 64])
        )
    name = draw(st.from_regex(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True))
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": draw(DNS)},
        "spec": spec,
    }


def keda_cannot_serve(svc: models.AgentService) -> bool:
    spec = svc.spec
    if not spec.autoscaling.enabled or spec.autoscaling.engine != models.AutoscalingEngine.KEDA:
        return False
    return spec.redis.url is not None and "@" in spec.redis.url


# CPU-bound (40 whole renders, each manifest checked against the API's schema): the suite's 120 s
# guard against hangs is too short for it on 2 cores kept busy by other work.
@pytest.mark.timeout(900)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(agent_services())
def test_any_valid_spec_renders_deterministic_valid_manifests(manifest: dict[str, Any]) -> None:
    svc = models.AgentService.model_validate(manifest)
    if keda_cannot_serve(svc):
        with pytest.raises(models.CrossFieldError):
            builders.build_children(svc)
        return
    first = builders.build_children(svc)
    again = builders.build_children(models.AgentService.model_validate(copy.deepcopy(manifest)))
    assert json.dumps(first, sort_keys=False) == json.dumps(again, sort_keys=False)
    assert_valid(first)

"""The AgentService spec models.

Covers:
- the defaults DESIGN.md promises (autoscaling 50/70, alert thresholds, canary policy);
- camelCase on the wire (and Python names accepted), unknown fields rejected, models frozen;
- every spec field carries a description;
- each cross-field rule raises `CrossFieldError` naming the field to change;
- durations, apiVersion/kind checks and the name: a DNS-1035 label of at most 63 characters;
- property tests (hypothesis): for every model with CEL rules, the pydantic validator and the
  CEL rules of the generated schema (evaluated with cel-python, defaults applied) accept exactly
  the same inputs.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pydantic
import pytest
from agent_operator.api import crd, models
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.crdcheck import apply_defaults, cel_failures


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "agent"},
        "spec": {
            "model": {"providers": [{"name": "claude", "model": "m", "apiKeySecretRef": {"name": "k", "key": "a"}}]},
            "redis": {"url": "redis://r:6379/0"},
            **spec,
        },
    }


def test_design_defaults() -> None:
    spec = models.AgentService.from_manifest(manifest()).spec
    assert spec.autoscaling.target_queue_depth_per_replica == 50
    assert spec.autoscaling.target_cpu_utilization == 70
    assert (spec.alerts.error_rate, spec.alerts.p95_latency_seconds) == (0.1, 60)
    assert (spec.alerts.hourly_cost_usd, spec.alerts.queue_depth) == (50, 500)
    assert spec.alerts.all_providers_down and spec.alerts.enabled
    assert spec.canary.steps == [10, 50, 100]
    assert (spec.canary.max_error_rate, spec.canary.max_p95_latency_seconds) == (0.05, 60)
    assert not spec.canary.enabled and not spec.canary.paused
    assert spec.model.strategy == "failover"
    assert spec.worker.resources.limits.memory == "1Gi"


def test_camel_case_on_the_wire_and_python_names_accepted() -> None:
    a = models.Autoscaling.model_validate({"minReplicas": 2, "targetCPUUtilization": 60})
    b = models.Autoscaling(min_replicas=2, target_cpu_utilization=60)
    assert a == b
    assert a.model_dump(by_alias=True)["targetCPUUtilization"] == 60
    assert "for" in models.Alerts().model_dump(by_alias=True)


def test_unknown_fields_rejected_and_models_frozen() -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        models.Autoscaling.model_validate({"maxReplica": 3})
    autoscaling = models.Autoscaling()
    with pytest.raises(pydantic.ValidationError):
        autoscaling.max_replicas = 3  # type: ignore[misc]


def _spec_models() -> list[type[pydantic.BaseModel]]:
    return [
        m
        for m in vars(models).values()
        if isinstance(m, type) and issubclass(m, models.Model) and m is not models.Model
    ]


@pytest.mark.parametrize("model", _spec_models(), ids=lambda m: m.__name__)
def test_every_field_is_described(model: type[pydantic.BaseModel]) -> None:
    assert model.__doc__
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "maxReplicas", "must be >= minReplicas (3)"),
        ({"autoscaling": {"minReplicas": 0}}, "minReplicas", "cannot scale to zero"),
        ({"redis": {}}, "url", "exactly one of url or urlSecretRef"),
        ({"env": [{"name": "A", "value": "x", "secretKeyRef": {"name": "s", "key": "k"}}]}, "secretKeyRef", "not both"),
        ({"canary": {"checks": [{"name": "c", "query": "q"}]}}, "max", "min, max or both"),
        ({"canary": {"checks": [{"name": "c", "query": "q", "min": 2, "max": 1}]}}, "min", "must be <= max (1.0)"),
        ({"model": {"providers": [{"name": "p", "model": "m"}]}}, "apiKeySecretRef", "needs apiKeySecretRef"),
        (
            {"model": {"providers": [{"name": "p", "model": "m", "baseURL": "http://x"}] * 2}},
            "providers",
            "unique (repeated: p)",
        ),
    ],
)
def test_cross_field_rules_name_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        models.AgentService.from_manifest(manifest(**spec))
    (error,) = info.value.errors()
    cause = error["ctx"]["error"]
    assert isinstance(cause, models.CrossFieldError)
    assert cause.field == field
    assert message in cause.message


def test_keda_may_scale_to_zero() -> None:
    spec = models.AgentService.from_manifest(manifest(autoscaling={"engine": "keda", "minReplicas": 0})).spec
    assert spec.autoscaling.min_replicas == 0


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25)])
def test_durations(text: str, seconds: float) -> None:
    assert models.duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "1d"])
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        models.duration_seconds(text)


def test_canary_interval_seconds() -> None:
    assert models.Canary(interval="2m").interval_seconds == 120


def test_api_version_kind_and_name() -> None:
    for key, value in [("apiVersion", "agentops.dev/v1"), ("kind", "Agent")]:
        body = manifest()
        body[key] = value
        with pytest.raises(pydantic.ValidationError, match="must be"):
            models.AgentService.from_manifest(body)
    body = manifest()
    body["metadata"]["name"] = "a" * 63
    assert models.AgentService.from_manifest(body).metadata.namespace == "default"
    body["metadata"]["name"] = "a" * 64
    with pytest.raises(pydantic.ValidationError, match="at most 63"):
        models.AgentService.from_manifest(body)
    for name in ("7-agent", "agent-", "-agent", "Agent", "agent.one"):  # a Service name: IsDNS1035Label
        body["metadata"]["name"] = name
        with pytest.raises(pydantic.ValidationError, match="should match pattern"):
            models.AgentService.from_manifest(body)


# --- pydantic and CEL agree ---------------------------------------------------------------------


def agree(model: type[models.Model], value: dict[str, Any]) -> None:
    """Assert that pydantic accepts `value` exactly when the model's CEL rules do."""
    schema = crd.structural_schema(model)
    try:
        model.model_validate(value)
        accepted = True
    except pydantic.ValidationError:
        accepted = False
    failures = cel_failures(apply_defaults(copy.deepcopy(value), schema), schema)
    assert accepted == (not failures), (value, failures)


@settings(max_examples=150, deadline=None)
@given(
    minimum=st.integers(0, 12),
    maximum=st.integers(1, 12),
    engine=st.sampled_from(["hpa", "keda"]),
)
def test_autoscaling_rules_agree(minimum: int, maximum: int, engine: str) -> None:
    agree(models.Autoscaling, {"minReplicas": minimum, "maxReplicas": maximum, "engine": engine})


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.sampled_from([1, 5, 10, 50, 99, 100]), min_size=1, max_size=5))
def test_canary_step_rules_agree(steps: list[int]) -> None:
    agree(models.Canary, {"steps": steps})


@settings(max_examples=100, deadline=None)
@given(low=st.none() | st.floats(-5, 5), high=st.none() | st.floats(-5, 5))
def test_canary_check_rules_agree(low: float | None, high: float | None) -> None:
    check: dict[str, Any] = {"name": "c", "query": "q"}
    if low is not None:
        check["min"] = low
    if high is not None:
        check["max"] = high
    agree(models.CanaryCheck, check)


@pytest.mark.parametrize(
    ("kind", "base_url", "key"),
    list(itertools.product(["anthropic", "openai-compatible"], [None, "http://x"], [None, {"name": "s", "key": "k"}])),
)
def test_provider_rules_agree(kind: str, base_url: str | None, key: dict[str, str] | None) -> None:
    provider: dict[str, Any] = {"name": "p", "kind": kind, "model": "m"}
    if base_url:
        provider["baseURL"] = base_url
    if key:
        provider["apiKeySecretRef"] = key
    agree(models.Provider, provider)


@settings(max_examples=100, deadline=None)
@given(
    providers=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 2)), min_size=1, max_size=4),
    strategy=st.sampled_from(["weighted", "round_robin", "failover"]),
)
def test_model_spec_rules_agree(providers: list[tuple[str, int]], strategy: str) -> None:
    value = {
        "strategy": strategy,
        "providers": [{"name": n, "model": "m", "weight": w, "baseURL": "http://x"} for n, w in providers],
    }
    agree(models.ModelSpec, value)


@pytest.mark.parametrize(
    "value",
    [
        {"url": "redis://r"},
        {"urlSecretRef": {"name": "s", "key": "k"}},
        {},
        {"url": "redis://r", "urlSecretRef": {"name": "s", "key": "k"}},
    ],
)
def test_redis_rules_agree(value: dict[str, Any]) -> None:
    agree(models.RedisSpec, value)


@pytest.mark.parametrize(
    "value",
    [
        {"name": "A"},
        {"name": "A", "value": "v"},
        {"name": "A", "secretKeyRef": {"name": "s", "key": "k"}},
        {"name": "A", "value": "v", "secretKeyRef": {"name": "s", "key": "k"}},
    ],
)
def test_env_rules_agree(value: dict[str, Any]) -> None:
    agree(models.EnvVar, value)


@pytest.mark.parametrize("engine", ["hpa", "keda"])
@pytest.mark.parametrize(
    "redis",
    [{"url": "redis://r:6379/0"}, {"url": "redis://:secret@r:6379/0"}, {"urlSecretRef": {"name": "s", "key": "k"}}],
)
def test_keda_redis_rule_agrees(engine: str, redis: dict[str, Any]) -> None:
    spec = manifest(autoscaling={"engine": engine}, redis=redis)["spec"]
    agree(models.AgentServiceSpec, spec)

"""200 random specs within the CRD schema, reconciled by one operator run: it never crashes.

Covers: specs drawn by hypothesis from the CRD's own `openAPIV3Schema` (types, enums, patterns,
bounds; the CEL rules are deliberately not applied, so some specs pass the schema but not the
model). Half of the referenced Secrets exist. Each AgentService must end with a clear verdict —
Ready, or SpecInvalid / SecretMissing with a message naming the field or Secret — and the
operator must survive with no unexpected error.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agent_operator import opmetrics
from agent_operator.api import crd, models
from agentops_dev import devcluster
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.operator.conftest import AGSVC, Operator

COUNT = 200
NAMESPACE = "fuzz"
TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for one node of a structural OpenAPI schema (small ones)."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        fields = {name: from_schema(sub) for name, sub in node["properties"].items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "object":
        return st.dictionaries(TEXT, from_schema(node.get("additionalProperties", {"type": "string"})), max_size=2)
    if kind == "array":
        low = node.get("minItems", 0)
        return st.lists(from_schema(node["items"]), min_size=low, max_size=min(node.get("maxItems", 3), low + 2))
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength", 40)
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True).filter(lambda s: low <= len(s) <= min(high, 60))
        return st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=max(low, 1), max_size=min(high, 12))
    if kind == "integer":
        low = node.get("minimum", 0)
        return st.integers(low, min(node.get("maximum", low + 20), low + 20))
    if kind == "number":
        low = float(node.get("minimum", 0))
        strict = node.get("exclusiveMinimum", False)
        return st.floats(low, float(node.get("maximum", low + 100)), exclude_min=bool(strict), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    return st.none()


def repaired(spec: dict[str, Any]) -> dict[str, Any]:
    """The same spec made to satisfy the CEL rules too (as `kubectl apply` on a real cluster would demand)."""
    spec = copy.deepcopy(spec)
    providers = spec["model"]["providers"]
    for index, provider in enumerate(providers):
        provider["name"] = f"p{index}"
        if provider.get("kind", "anthropic") == "anthropic" and "baseURL" not in provider:
            provider.setdefault("apiKeySecretRef", {"name": "llm", "key": "key"})
        provider["weight"] = max(provider.get("weight", 1), 1)
    redis = spec["redis"]
    if ("url" in redis) == ("urlSecretRef" in redis):
        spec["redis"] = {"url": "redis://redis:6379/0"}
    elif "url" in redis:
        redis["url"] = "redis://redis:6379/0"  # KEDA needs a parseable host/port/database
    scaling = spec.get("autoscaling", {})
    low, high = scaling.get("minReplicas", 1), scaling.get("maxReplicas", 10)
    scaling.update(minReplicas=max(min(low, high), 1), maxReplicas=max(low, high, 1))
    if "canary" in spec:
        spec["canary"]["steps"] = [10, 50, 100]
        checks = spec["canary"].get("checks", [])
        spec["canary"]["checks"] = [{"name": c["name"], "query": c["query"], "max": 1.0} for c in checks]
    for index, var in enumerate(spec.get("env", [])):
        var["name"] = f"VAR_{index}"
        if "value" in var and "secretKeyRef" in var:
            var.pop("secretKeyRef")
    return spec


def draw_specs(count: int) -> list[dict[str, Any]]:
    """`count` specs from one hypothesis draw (no shrinking: the operator run is the test).

    Even-indexed specs are drawn from the schema as they are (most break a cross-field rule,
    which only the CEL rules of a real API server would reject); odd-indexed ones are repaired
    to satisfy those rules too.
    """
    schema = from_schema(crd.open_api_schema()["properties"]["spec"])
    strategy = st.lists(schema, min_size=count, max_size=count).map(
        lambda batch: [spec if i % 2 == 0 else repaired(spec) for i, spec in enumerate(batch)]
    )
    drawn: list[dict[str, Any]] = []

    @settings(
        max_examples=1,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(batch: list[dict[str, Any]]) -> None:
        drawn[:] = batch

    collect()
    return drawn


def secret_refs(spec: dict[str, Any]) -> list[tuple[str, str]]:
    refs = [
        (p["apiKeySecretRef"]["name"], p["apiKeySecretRef"]["key"])
        for p in spec.get("model", {}).get("providers", [])
        if "apiKeySecretRef" in p
    ]
    if "urlSecretRef" in spec.get("redis", {}):
        refs.append((spec["redis"]["urlSecretRef"]["name"], spec["redis"]["urlSecretRef"]["key"]))
    refs.extend(
        (e["secretKeyRef"]["name"], e["secretKeyRef"]["key"]) for e in spec.get("env", []) if "secretKeyRef" in e
    )
    return refs


def verdict(status: dict[str, Any]) -> str:
    """`ready`, `invalid`, `secret` or '' (not settled), from a status."""
    if status.get("observedGeneration") != 1:
        return ""
    conds = {c["type"]: c for c in status.get("conditions", [])}
    if conds.get("SpecInvalid", {}).get("status") == "True" and conds["SpecInvalid"]["message"]:
        return "invalid" if status["phase"] == "Failed" else ""
    if conds.get("SecretMissing", {}).get("status") == "True" and "Secret" in conds["SecretMissing"]["message"]:
        return "secret" if status["phase"] == "Degraded" else ""
    if status.get("phase") == "Ready" and conds.get("Ready", {}).get("status") == "True":
        return "ready"
    return ""


@pytest.fixture
async def operator(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[Operator]:
    """The operator with a resync interval fit for 200 services on a shared 2-core machine."""
    handle = Operator(cluster=cluster[0], url=cluster[1], metrics=opmetrics.create())
    await handle.start(resync=5.0)
    try:
        yield handle
    finally:
        await handle.halt()


async def test_fuzzed_specs_never_crash_the_operator(operator: Operator) -> None:
    specs = draw_specs(COUNT)
    for index, spec in enumerate(specs):
        if index % 4 < 2:  # half of the services find their Secrets
            for name, key in secret_refs(spec):
                live = operator.cluster.live("v1/secrets", NAMESPACE, name) or {"data": {}}
                data = {**live.get("data", {}), key: base64.b64encode(b"value").decode()}
                body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}}
                await operator.cluster.put_object("v1/secrets", {**body, "data": data})
        await operator.put(
            {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "metadata": {"name": f"fuzz-{index}", "namespace": NAMESPACE},
                "spec": spec,
            }
        )
    deadline = time.monotonic() + 90
    verdicts: dict[int, str] = {}
    while time.monotonic() < deadline:
        await operator.cluster.simulate_rollouts(NAMESPACE)
        verdicts = {
            i: verdict((operator.cluster.live(AGSVC, NAMESPACE, f"fuzz-{i}") or {}).get("status") or {})
            for i in range(COUNT)
        }
        if all(verdicts.values()):
            break
        await asyncio.sleep(0.5)
    unsettled = {i: specs[i] for i, v in verdicts.items() if not v}
    assert not unsettled, f"{len(unsettled)} services without a clear verdict, e.g. {next(iter(unsettled.items()))}"
    assert operator.alive
    errors = {
        sample.labels["kind"]: sample.value
        for metric in operator.metrics.registry.collect()
        if metric.name == "agentservice_operator_errors"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert errors.get("unexpected", 0) == 0
    counts = {v: list(verdicts.values()).count(v) for v in ("ready", "invalid", "secret")}
    assert counts["ready"] > 0 and counts["invalid"] + counts["secret"] > 0, counts

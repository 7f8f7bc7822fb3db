"""Nested defaults that behave like Kubernetes users expect: a partial override keeps the other defaults.

Covers, for the API and the worker container: a spec that sets one quantity (say
`worker.resources.requests.cpu`) keeps every other default quantity, both in the model (what
`render` and the operator build) and in the object the API server stores (the CRD's defaults
applied as kube-apiserver does); both agree with the defaults docs/reference.md lists (generated
from the same schema); `null` drops one default quantity; the rendered container carries exactly
those quantities.
"""

from __future__ import annotations

from typing import Any

import pytest
from agent_operator.api import crd, models
from agent_operator.manifests import builders

from tests.support.crdcheck import apply_defaults

DEFAULTS = {
    "api": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "worker": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
}


def body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "demo"},
        "spec": {
            "model": {"providers": [{"name": "p", "kind": "openai-compatible", "model": "m", "baseURL": "http://m"}]},
            "redis": {"url": "redis://r:6379/0"},
            **spec,
        },
    }


def container_resources(manifest: dict[str, Any], component: str) -> dict[str, Any]:
    svc = models.AgentService.model_validate(manifest)
    name = f"demo-{component}"
    deployment = next(
        c for c in builders.build_children(svc) if c["kind"] == "Deployment" and c["metadata"]["name"] == name
    )
    resources: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    return resources


def stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """The spec as the API server stores it: the CRD's defaults applied."""
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec: dict[str, Any] = apply_defaults(manifest["spec"], schema)
    return spec


@pytest.mark.parametrize("component", ["api", "worker"])
def test_defaults_with_nothing_set(component: str) -> None:
    assert container_resources(body(), component) == DEFAULTS[component]
    assert stored(body())[component]["resources"] == DEFAULTS[component]


@pytest.mark.parametrize("component", ["api", "worker"])
@pytest.mark.parametrize(("section", "quantity"), [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")])
def test_setting_one_quantity_keeps_the_others(component: str, section: str, quantity: str) -> None:
    manifest = body(**{component: {"resources": {section: {quantity: "3"}}}})
    expected = {s: dict(q) for s, q in DEFAULTS[component].items()}
    expected[section][quantity] = "3"
    assert container_resources(manifest, component) == expected
    assert stored(manifest)[component]["resources"] == expected  # what `kubectl get -o yaml` shows


def test_the_issues_case_worker_cpu_only() -> None:
    manifest = body(worker={"resources": {"requests": {"cpu": "500m"}}})
    assert container_resources(manifest, "worker") == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_null_drops_one_default() -> None:
    manifest = body(worker={"resources": {"limits": {"memory": None}}})
    assert container_resources(manifest, "worker") == {"requests": DEFAULTS["worker"]["requests"]}


def test_the_reference_lists_the_defaults_the_model_applies() -> None:
    from agent_operator.api import reference

    text = reference.markdown()
    for component, sections in DEFAULTS.items():
        for section, quantities in sections.items():
            for quantity, value in quantities.items():
                row = next(
                    line for line in text.splitlines() if f"`spec.{component}.resources.{section}.{quantity}`" in line
                )
                assert f'`"{value}"`' in row

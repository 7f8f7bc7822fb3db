"""`spec.imagePullSecrets`, `spec.monitoring` and the operator-wide defaults (`api/defaults.py`).

Covers:
- spec.imagePullSecrets on the pod template of every Deployment (API and worker, stable and
  canary), absent when none is set; the operator's defaults added after the spec's, without
  repeating a name;
- spec.monitoring.labels/annotations on the ServiceMonitor and PrometheusRule, never overriding
  the operator's `app.kubernetes.io/*` labels (refused by the model and by the CEL rule), default
  labels from the operator with the spec winning on the same key;
- label keys and values checked like the API server does; at most 32 of each; at most 16 secrets;
- `agentctl render --image-pull-secret/--monitoring-label` prints what the operator applies, and a
  bad flag exits 2 naming it; `agentctl operator` refuses the same bad value at start-up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from agent_operator import run
from agent_operator.api import crd, defaults, models
from agent_operator.manifests import builders

from tests.support.crdcheck import cel_failures

ROOT = Path(__file__).resolve().parents[3]


def svc(**spec: Any) -> models.AgentService:
    body: dict[str, Any] = {
        "model": {"providers": [{"name": "local", "kind": "openai-compatible", "model": "m", "baseURL": "http://m"}]},
        "redis": {"url": "redis://redis:6379/0"},
        "canary": {"enabled": True},
    }
    body.update(spec)
    return models.AgentService.model_validate(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": "demo", "namespace": "t"},
            "spec": body,
        }
    )


def pod_specs(service: models.AgentService) -> list[dict[str, Any]]:
    desired = builders.desired(service)
    deployments = [c for c in [*desired.children, *desired.canary] if c["kind"] == "Deployment"]
    assert len(deployments) == 4  # API and worker, stable and canary
    return [d["spec"]["template"]["spec"] for d in deployments]


def monitoring_children(service: models.AgentService) -> list[dict[str, Any]]:
    found = [c for c in builders.build_children(service) if c["kind"] in {"ServiceMonitor", "PrometheusRule"}]
    assert len(found) == 2
    return found


def test_pull_secrets_on_every_pod() -> None:
    service = svc(imagePullSecrets=[{"name": "regcred"}, {"name": "mirror"}])
    for pod in pod_specs(service):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_no_pull_secrets_by_default() -> None:
    assert all("imagePullSecrets" not in pod for pod in pod_specs(svc()))


def test_operator_default_pull_secrets_come_after_the_specs() -> None:
    wide = defaults.Defaults(image_pull_secrets=("org-wide", "regcred"))
    merged = defaults.apply(svc(imagePullSecrets=[{"name": "regcred"}]), wide)
    for pod in pod_specs(merged):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "org-wide"}]
    for pod in pod_specs(defaults.apply(svc(), wide)):
        assert pod["imagePullSecrets"] == [{"name": "org-wide"}, {"name": "regcred"}]


def test_no_defaults_leave_the_service_untouched() -> None:
    service = svc()
    assert defaults.apply(service, defaults.NONE) is service


@pytest.mark.parametrize("name", ["Regcred", "a/b", "..", "", "x" * 254])
def test_pull_secret_names_are_dns_subdomains(name: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        svc(imagePullSecrets=[{"name": name}])


def test_at_most_16_pull_secrets() -> None:
    with pytest.raises(pydantic.ValidationError):
        svc(imagePullSecrets=[{"name": f"s{i}"} for i in range(17)])


def test_monitoring_labels_and_annotations_on_both_children() -> None:
    service = svc(monitoring={"labels": {"release": "kps", "team": "a"}, "annotations": {"owner": "x@y"}})
    for child in monitoring_children(service):
        meta = child["metadata"]
        assert meta["labels"]["release"] == "kps" and meta["labels"]["team"] == "a"
        assert meta["labels"]["app.kubernetes.io/instance"] == "demo"
        assert meta["annotations"] == {"owner": "x@y"}


def test_default_monitoring_labels_with_the_spec_winning() -> None:
    wide = defaults.Defaults(monitoring_labels={"release": "kps", "tier": "gold"}, monitoring_annotations={"a": "1"})
    merged = defaults.apply(svc(monitoring={"labels": {"release": "mine"}}), wide)
    for child in monitoring_children(merged):
        assert child["metadata"]["labels"]["release"] == "mine"
        assert child["metadata"]["labels"]["tier"] == "gold"
        assert child["metadata"]["annotations"] == {"a": "1"}


def test_no_monitoring_annotations_by_default() -> None:
    for child in monitoring_children(svc()):
        assert "annotations" not in child["metadata"]
        assert set(child["metadata"]["labels"]) == {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/component",
            "app.kubernetes.io/version",
        }


@pytest.mark.parametrize(
    "labels",
    [
        {"app.kubernetes.io/instance": "other"},  # the operator's: it selects and owns by them
        {"bad key": "v"},
        {"-lead": "v"},
        {"x" * 64: "v"},
        {"Example.com/x": "v"},
        {"release": "not valid!"},
        {"release": "v" * 64},
        {f"k{i}": "v" for i in range(33)},
    ],
)
def test_bad_monitoring_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        svc(monitoring={"labels": labels})


@pytest.mark.parametrize("labels", [{"release": ""}, {"example.com/team": "a-b_c.d"}, {"a": "b"}])
def test_good_monitoring_labels_are_accepted(labels: dict[str, str]) -> None:
    assert svc(monitoring={"labels": labels}).spec.monitoring.labels == labels


def test_the_cel_rule_refuses_the_operators_label_prefix_too() -> None:
    node = crd.structural_schema(models.AgentServiceSpec)["properties"]["monitoring"]
    assert cel_failures({"labels": {"release": "kps"}, "annotations": {}}, node) == []
    assert cel_failures({"labels": {"app.kubernetes.io/name": "x"}, "annotations": {}}, node) != []


def test_defaults_are_checked_by_the_specs_rules() -> None:
    with pytest.raises(pydantic.ValidationError):
        defaults.Defaults(image_pull_secrets=("Not_A_Name",))
    with pytest.raises(pydantic.ValidationError):
        defaults.Defaults(monitoring_labels={"app.kubernetes.io/name": "x"})
    with pytest.raises(ValueError, match="key=value"):
        defaults.parse_pairs(["release"])


def test_operator_flags_build_the_defaults() -> None:
    args = run.build_parser().parse_args(
        ["--image-pull-secret=regcred", "--monitoring-label=release=kps", "--monitoring-annotation=a=b=c"]
    )
    config = run.config_from(args)
    assert config.defaults == defaults.Defaults(
        image_pull_secrets=("regcred",), monitoring_labels={"release": "kps"}, monitoring_annotations={"a": "b=c"}
    )


def test_operator_refuses_a_bad_default_at_start_up() -> None:
    args = run.build_parser().parse_args(["--monitoring-label=app.kubernetes.io/name=x"])
    with pytest.raises(ValueError, match="--monitoring-label"):
        run.config_from(args)
    assert run.main(args) == 2


def agentctl(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_operator.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def test_render_applies_the_same_flags() -> None:
    manifest = yaml.safe_dump(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": "demo"},
            "spec": svc().spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    )
    result = agentctl(
        "render", "-f", "-", "--image-pull-secret=regcred", "--monitoring-label=release=kps", stdin=manifest
    )
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    assert pods and all(p["imagePullSecrets"] == [{"name": "regcred"}] for p in pods)
    monitors = [d for d in docs if d["kind"] in {"ServiceMonitor", "PrometheusRule"}]
    assert len(monitors) == 2 and all(m["metadata"]["labels"]["release"] == "kps" for m in monitors)


def test_render_refuses_a_bad_flag() -> None:
    result = agentctl("render", "-f", "-", "--image-pull-secret=Bad_Name", stdin="")
    assert result.returncode == 2
    assert "--image-pull-secret" in result.stderr

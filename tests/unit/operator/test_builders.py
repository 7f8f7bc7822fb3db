"""Unit tests of `agent_operator.manifests.builders.build_children`, the composition of every child.

Covers:
- the fixed order and the set of kinds for the default spec, and what options add or remove
  (PDBs, NetworkPolicy, KEDA, alerts, autoscaling);
- deterministic output (same input, byte-identical JSON) and no mutation of the input;
- owner independence: no ownerReferences, every child namespaced like its AgentService and
  carrying the standard `app.kubernetes.io/*` labels; unique kind/name pairs;
- names and label values valid for Kubernetes for the longest AgentService name the CRD allows
  (63 characters), with KEDA and without: every name a DNS-1035 label, Deployments (and what is
  named after them) within 46 characters, the rest within 63, label keys and values valid, every
  reference to a child (selectors, scale targets, volumes, secretKeyRefs) naming the child built;
  two such names alike but for their last character share no child name;
- the ConfigMap holds a `RuntimeConfig` the runtime can load, whose providers' `api_key_env` are
  exactly the secretKeyRef env vars of the Deployments; the auth Secret is rendered without data;
- the ServiceMonitor finds a Service port for each of its endpoints; the version defaults to the
  operator's; `revision` changes with the pod templates only.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pydantic
import pytest
from agent_operator import __version__
from agent_operator.api import models
from agent_operator.manifests import builders, naming, runtimeconfig

from agent_runtime import config, constants

LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def svc(name: str = "demo", namespace: str = "agents", **spec: Any) -> models.AgentService:
    body: dict[str, Any] = {
        "model": {
            "providers": [
                {"name": "claude", "model": "m", "apiKeySecretRef": {"name": "llm", "key": "anthropic"}},
                {"name": "backup-llm", "kind": "openai-compatible", "model": "b", "baseURL": "http://b:1/v1"},
                {"name": "second", "model": "s", "apiKeySecretRef": {"name": "llm", "key": "second"}},
            ]
        },
        "redis": {"url": "redis://redis:6379/0"},
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


def kinds(children: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["kind"], c["metadata"]["name"]) for c in children]


def test_default_children_in_order() -> None:
    assert kinds(builders.build_children(svc())) == [
        ("ConfigMap", "demo-config"),
        ("Secret", "demo-auth"),
        ("Service", "demo-api"),
        ("Service", "demo-worker"),
        ("Deployment", "demo-api"),
        ("Deployment", "demo-worker"),
        ("HorizontalPodAutoscaler", "demo-api"),
        ("HorizontalPodAutoscaler", "demo-worker"),
        ("PodDisruptionBudget", "demo-api"),
        ("PodDisruptionBudget", "demo-worker"),
        ("PrometheusRule", "demo-alerts"),
        ("ServiceMonitor", "demo-runtime"),
        ("ConfigMap", "demo-dashboard"),
    ]


def test_options_add_and_remove_children() -> None:
    got = {k for k, _ in kinds(builders.build_children(svc(networkPolicy={"enabled": True})))}
    assert "NetworkPolicy" in got
    keda = kinds(builders.build_children(svc(autoscaling={"engine": "keda"})))
    assert ("ScaledObject", "demo-worker") in keda and ("HorizontalPodAutoscaler", "demo-worker") not in keda
    bare = svc(autoscaling={"enabled": False}, podDisruptionBudget={"enabled": False}, alerts={"enabled": False})
    got = {k for k, _ in kinds(builders.build_children(bare))}
    assert not got & {"HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget", "PrometheusRule"}
    assert {"Deployment", "Service", "ServiceMonitor", "ConfigMap", "Secret"} <= got


def test_deterministic_and_pure() -> None:
    s = svc(env=[{"name": "B", "value": "2"}, {"name": "A", "value": "1"}], podAnnotations={"z": "1", "a": "2"})
    before = s.model_dump()
    first = json.dumps(builders.build_children(s))
    assert json.dumps(builders.build_children(s)) == first
    assert (
        json.dumps(
            builders.build_children(svc(**json.loads(json.dumps(s.spec.model_dump(by_alias=True, exclude_none=True)))))
        )
        == first
    )
    assert s.model_dump() == before


def test_owner_independent_standard_labels_unique_names() -> None:
    children = builders.build_children(svc(networkPolicy={"enabled": True}, autoscaling={"engine": "keda"}))
    assert len(set(kinds(children))) == len(children)
    for child in children:
        meta = child["metadata"]
        assert "ownerReferences" not in meta and "uid" not in meta
        assert meta["namespace"] == "agents"
        labels = meta["labels"]
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/name"] == naming.APP_NAME
        assert labels["app.kubernetes.io/managed-by"] == naming.MANAGED_BY
        assert labels["app.kubernetes.io/component"] and labels["app.kubernetes.io/version"]


def _walk_labels(obj: Any) -> list[dict[str, str]]:
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if (
                key in {"labels", "matchLabels", "selector"}
                and isinstance(value, dict)
                and all(isinstance(v, str) for v in value.values())
            ):
                found.append(value)
            else:
                found.extend(_walk_labels(value))
    elif isinstance(obj, list):
        for item in obj:
            found.extend(_walk_labels(item))
    return found


LONGEST = "a-name-of-sixty-three-characters-exactly-the-most-a-service-has"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAMED_AFTER_A_DEPLOYMENT = {"Deployment", "HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget"}


def every_child(s: models.AgentService) -> list[dict[str, Any]]:
    """The steady-state children and the canary track."""
    wanted = builders.desired(s, operator_version="1")
    return [*wanted.children, *wanted.canary]


@pytest.mark.parametrize("engine", ["hpa", "keda"])
def test_names_and_labels_valid_for_the_longest_name(engine: str) -> None:
    assert len(LONGEST) == models.SERVICE_NAME_MAX_LENGTH == 63
    s = svc(
        name=LONGEST,
        namespace="n" * 63,
        networkPolicy={"enabled": True},
        image="r.io/x:" + "v" * 128,
        autoscaling={"engine": engine},
    )
    children = every_child(s)
    names = {(c["kind"], c["metadata"]["name"]) for c in children}
    assert len(names) == len(children)
    for child in children:
        name = child["metadata"]["name"]
        limit = 46 if child["kind"] in NAMED_AFTER_A_DEPLOYMENT else 63
        assert len(name) <= limit and DNS_1035.match(name), (child["kind"], name)
        assert name != LONGEST and name.startswith("a-name-of-sixty"), name  # shortened, still recognisable
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == LONGEST
        for labels in _walk_labels(child):
            for key, value in labels.items():
                assert LABEL_NAME.match(key) and len(key.rsplit("/", 1)[-1]) <= 63, key
                assert len(value) <= 63 and LABEL_VALUE.match(value), (key, value)
    # Every reference names a child that is built (a shortened name is one name, used everywhere).
    built = {name for _, name in names}
    workers = [c for c in children if c["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert {c["spec"]["scaleTargetRef"]["name"] for c in workers} <= built
    for deployment in (c for c in children if c["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} <= built
        env = pod["containers"][0]["env"]
        assert naming.auth_secret_name(LONGEST) in {
            e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
    assert naming.auth_secret_name(LONGEST) in built


def test_long_names_alike_but_for_the_last_character_share_no_child() -> None:
    one, other = every_child(svc(name=LONGEST)), every_child(svc(name=LONGEST[:-1] + "z"))
    assert not {(c["kind"], c["metadata"]["name"]) for c in one} & {(c["kind"], c["metadata"]["name"]) for c in other}


PRICED = {m: {"inputPerMtok": 3, "outputPerMtok": 15} for m in ("m", "b", "s")}


def test_a_budget_refuses_models_it_cannot_price() -> None:
    with pytest.raises(pydantic.ValidationError, match=r"budget\.prices: no price for model 'b', 's': a budget cannot"):
        svc(budget={"dailyUSD": 10, "prices": {"m": PRICED["m"]}})
    # Without a daily cap unpriced models are served, counted at the runtime's fallback price
    # (never as free): perTaskUSD defaults to 1.0 and the API server stores that default.
    assert svc(budget={"perTaskUSD": 2}).spec.budget.on_exhausted == "hold"
    assert svc(budget={"dailyUSD": 10, "prices": PRICED}).spec.budget.daily_usd == 10


def test_config_map_is_the_runtime_config_and_keys_match_env() -> None:
    children = builders.build_children(svc(budget={"dailyUSD": 10, "onExhausted": "fail", "prices": PRICED}))
    config_map = children[0]
    loaded = config.RuntimeConfig.model_validate_json(config_map["data"][runtimeconfig.CONFIG_KEY])
    assert loaded.service == "demo" and loaded.namespace == "agents"
    assert [p.name for p in loaded.providers] == ["claude", "backup-llm", "second"]
    assert loaded.daily_budget_usd == 10 and loaded.prices["m"].output_per_mtok == 15
    assert loaded.budget_on_exhausted == "fail"
    assert loaded.worker_concurrency == 8 and loaded.max_steps_per_task == 20
    key_envs = {p.api_key_env for p in loaded.providers if p.api_key_env}
    assert key_envs == {constants.provider_key_env("claude"), constants.provider_key_env("second")}
    for deployment in (c for c in children if c["kind"] == "Deployment"):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        provider_env = {e["name"] for e in env if e["name"].startswith("AGENT_PROVIDER_")}
        assert provider_env == key_envs
        assert all("secretKeyRef" in e["valueFrom"] for e in env if e["name"] in key_envs)
    secret = children[1]
    assert secret["kind"] == "Secret" and "data" not in secret and "stringData" not in secret
    assert loaded.max_queued_tasks == 10_000 and loaded.max_queued_input_bytes == 64 * 1024 * 1024  # bounded


def test_max_queued_tasks_reaches_the_runtime_config() -> None:
    config_map = builders.build_children(svc(limits={"maxQueuedTasks": 250, "maxQueuedInputBytes": 2_000_000}))[0]
    loaded = config.RuntimeConfig.model_validate_json(config_map["data"][runtimeconfig.CONFIG_KEY])
    assert loaded.max_queued_tasks == 250 and loaded.max_queued_input_bytes == 2_000_000


def test_service_monitor_finds_its_ports() -> None:
    children = builders.build_children(svc())
    monitor = next(c for c in children if c["kind"] == "ServiceMonitor")
    services = [c for c in children if c["kind"] == "Service"]
    selected = [
        s
        for s in services
        if all(s["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ]
    ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports


def test_version_default_and_revision() -> None:
    s = svc()
    deployment = next(c for c in builders.build_children(s) if c["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"agentops/agent-runtime:{__version__}"
    assert builders.desired(s).revision == builders.desired(svc()).revision
    assert builders.desired(s).revision == builders.desired(svc(api={"replicas": 9}, alerts={"queueDepth": 3})).revision
    assert builders.desired(s).revision != builders.desired(svc(image="me/rt:v2")).revision
    assert builders.desired(s).revision != builders.desired(svc(worker={"concurrency": 3})).revision
    assert (
        builders.desired(s, operator_version="0.0.1").revision != builders.desired(s, operator_version="0.0.2").revision
    )

"""The generated CustomResourceDefinition.

Covers:
- `crds/agentservices.agentops.dev.yaml` is exactly `crd.crd_yaml()` (stale file fails);
- a valid structural schema: no `$ref`/`anyOf`/`title`, only JSONSchemaProps keywords, a type on
  every node, no `additionalProperties: false`, no preserve-unknown-fields, every spec field
  described, every default valid against its own schema;
- `kubernetes-validate` (strict) accepts it as apiextensions.k8s.io/v1 for Kubernetes 1.30 and the
  newest schemas it ships;
- names, short name, category, status subresource and printer columns (the budget ones in `-o wide`
  only) pointing at real status fields of the right type;
- every model's `cel_rules` sit on that model's node, compile with a CEL parser, and their
  `fieldPath`s name real properties; the root caps metadata.name at 63 characters, a DNS-1035
  label (it names Services);
- schema defaults agree with the pydantic defaults (defaulting a minimal spec through the schema
  and parsing it gives the same model as parsing it bare);
- `docs/reference.md` is exactly `reference.markdown()` and lists every spec field and rule.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from agent_operator.api import crd, models, reference

from tests.support.crdcheck import apply_defaults, cel_failures, json_schema

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "crds" / "agentservices.agentops.dev.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return crd.build_crd()


@pytest.fixture(scope="module")
def schema(manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path."""
    yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_is_up_to_date() -> None:
    assert COMMITTED.read_text() == crd.crd_yaml(), "crds/ is stale: run `make crd`"


def test_crd_yaml_round_trips(manifest: dict[str, Any]) -> None:
    assert yaml.safe_load(crd.crd_yaml()) == manifest


def test_structural_schema(schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        assert "type" in node, f"{path}: no type"
        assert set(node) <= crd.ALLOWED_KEYWORDS, f"{path}: {set(node) - crd.ALLOWED_KEYWORDS}"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        if node["type"] == "array":
            assert "items" in node, path
        if node.get("exclusiveMinimum") is not None:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
    assert "$ref" not in crd.crd_yaml()
    assert "anyOf" not in crd.crd_yaml()


def test_every_spec_and_status_field_is_described(schema: dict[str, Any]) -> None:
    for part in ("spec", "status"):
        for path, node in nodes(schema["properties"][part], part):
            if not path.endswith(("[]", "{}")) or "properties" in node:  # scalar items need none
                assert node.get("description"), f"{path}: no description"


def test_every_default_validates_against_its_schema(schema: dict[str, Any]) -> None:
    checked = 0
    for _, node in nodes(schema["properties"]["spec"], "spec"):
        if "default" in node:
            jsonschema.Draft4Validator(json_schema(node)).validate(node["default"])
            checked += 1
    assert checked > 30, "defaults went missing from the schema"


def test_status_has_no_defaults(schema: dict[str, Any]) -> None:
    assert not [path for path, node in nodes(schema["properties"]["status"], "status") if "default" in node]


def test_optionals_are_nullable(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["image"]["nullable"] is True
    assert spec["budget"]["properties"]["dailyUSD"] == {
        "description": models.Budget.model_fields["daily_usd"].description,
        "type": "number",
        "nullable": True,
        "minimum": 0,
    }
    assert "nullable" not in spec["model"]


def test_bounds_enums_patterns_and_defaults_come_from_the_models(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    autoscaling = spec["autoscaling"]["properties"]
    assert autoscaling["targetQueueDepthPerReplica"]["default"] == 50
    assert autoscaling["targetCPUUtilization"]["default"] == 70
    assert autoscaling["maxReplicas"]["minimum"] == 1
    assert autoscaling["engine"]["enum"] == ["hpa", "keda"]
    provider = spec["model"]["properties"]["providers"]["items"]
    assert provider["properties"]["kind"]["enum"] == ["anthropic", "openai-compatible"]
    assert provider["properties"]["name"]["pattern"] == models.DNS_LABEL
    assert provider["required"] == ["name", "model"]
    assert spec["canary"]["properties"]["steps"]["default"] == [10, 50, 100]
    assert spec["canary"]["properties"]["maxP95LatencySeconds"]["exclusiveMinimum"] is True
    assert spec["alerts"]["properties"]["for"]["default"] == "5m"
    assert spec["imagePullPolicy"]["enum"] == ["Always", "IfNotPresent", "Never"]
    assert set(schema["properties"]["spec"]["required"]) == {"model", "redis"}
    # A factory default that differs from the nested model's own defaults is spelled out.
    assert spec["worker"]["properties"]["resources"]["default"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_schema_defaults_agree_with_the_model_defaults(schema: dict[str, Any]) -> None:
    minimal = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    defaulted = apply_defaults(copy.deepcopy(minimal), schema)
    assert defaulted["spec"] != minimal["spec"], "the schema applied no defaults"
    assert models.AgentService.from_manifest(defaulted) == models.AgentService.from_manifest(minimal)


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_kubernetes_validate_accepts_the_crd(manifest: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


def test_kubernetes_validate_rejects_an_unknown_keyword(manifest: dict[str, Any]) -> None:
    broken = copy.deepcopy(manifest)
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["minLenght"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_names_subresource_and_columns(manifest: dict[str, Any], schema: dict[str, Any]) -> None:
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "agentservices.agentops.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["agsvc"]
    assert spec["names"]["categories"] == ["all"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Ready", "Canary", "Spent", "Remaining", "Age"]
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert [name for name, column in columns.items() if column.get("priority")] == ["Spent", "Remaining"]  # -o wide
    for name in ("Phase", "Ready", "Canary", "Spent", "Remaining"):
        node = schema
        for part in columns[name]["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == columns[name]["type"], name


def rule_models() -> list[type[models.Model]]:
    """The spec models that declare CEL rules."""
    return [m for m in vars(models).values() if isinstance(m, type) and issubclass(m, models.Model) and m.cel_rules]


def test_every_models_cel_rules_are_on_its_node(schema: dict[str, Any]) -> None:
    assert len(rule_models()) >= 7
    for model in rule_models():
        found = [node for _, node in nodes(schema) if node.get("x-kubernetes-validations") == model.cel_rules]
        assert len(found) == 1, f"{model.__name__}'s CEL rules are not on exactly one node"
        assert {f.alias or n for n, f in model.model_fields.items()} == set(found[0]["properties"])


def test_cel_rules_compile_and_field_paths_exist(schema: dict[str, Any]) -> None:
    env = celpy.Environment()
    count = 0
    for path, node in nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            env.compile(rule["rule"])
            assert rule["message"], path
            if "fieldPath" in rule:
                target = node
                for part in rule["fieldPath"].lstrip(".").split("."):
                    target = target["properties"][part]  # KeyError: the fieldPath names no property
            count += 1
    # Each model with rules appears once in the tree, so every rule is there exactly once.
    assert count == len(crd.ROOT_RULES) + sum(len(m.cel_rules) for m in rule_models())


def test_root_caps_the_name(schema: dict[str, Any]) -> None:
    assert models.SERVICE_NAME_MAX_LENGTH == models.ObjectMeta.model_fields["name"].metadata[1].max_length == 63
    name = schema["properties"]["metadata"]["properties"]["name"]
    assert (name["maxLength"], name["pattern"]) == (63, models.DNS_1035_LABEL)
    assert set(schema["properties"]["metadata"]["properties"]) == {"name"}  # all a CRD may restrict
    minimal = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    for length, failures in [(63, []), (64, ["(root): " + crd.ROOT_RULES[0]["message"]])]:
        minimal["metadata"]["name"] = "a" * length
        assert cel_failures(apply_defaults(copy.deepcopy(minimal), schema), schema) == failures
    # A Service name starts with a letter (IsDNS1035Label), so the AgentService's does.
    pattern = re.compile(name["pattern"])
    assert pattern.match("a-1") and not pattern.match("1-a") and not pattern.match("a-") and not pattern.match("A")


def test_committed_reference_is_up_to_date() -> None:
    committed = ROOT / "docs" / "reference.md"
    assert committed.read_text() == reference.markdown(), "docs/reference.md is stale: run `agentctl reference`"


def test_reference_lists_every_spec_field_and_rule(schema: dict[str, Any]) -> None:
    text = reference.markdown()
    for path, node in nodes(schema["properties"]["spec"], "spec"):
        if not path.endswith(("[]", "{}")):
            assert f"| `{path.replace('{}', '.<key>')}` |" in text, path
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"] in text

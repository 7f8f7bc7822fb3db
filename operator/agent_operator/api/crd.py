"""The AgentService CustomResourceDefinition, generated from the pydantic models.

`models.AgentServiceSpec` and `models.AgentServiceStatus` are the single source of truth; this
module turns their JSON schema into a Kubernetes structural schema: every `$ref` inlined,
`anyOf [X, null]` mapped to `nullable: true`, titles dropped, `additionalProperties: false`
dropped (forbidden in structural schemas: the API server prunes unknown fields instead), numeric
`exclusiveMinimum` turned into the OpenAPI v3.0 boolean form, defaults kept (including those of
`default_factory` fields), and each model's `cel_rules` emitted as `x-kubernetes-validations`.
See https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema
"""

from __future__ import annotations

import copy
from typing import Any, Final

import yaml
from agent_operator.api import models
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

CRD_NAME: Final = f"{models.PLURAL}.{models.GROUP}"
CATEGORIES: Final = ["all"]

# Keywords a structural schema may carry (apiextensions.k8s.io/v1 JSONSchemaProps, minus the
# ones we never emit such as $ref, anyOf, allOf, oneOf, not, definitions).
ALLOWED_KEYWORDS: Final = frozenset(
    {
        "type",
        "description",
        "default",
        "nullable",
        "enum",
        "format",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource",
    }
)

KEY_ORDER: Final = ("description", "type", "nullable", "default")

# The name names Services, so it is a DNS-1035 label (at most 63 characters, a letter first); child
# names longer than their kind allows are shortened with a hash (manifests/naming.py). A structural
# schema may restrict metadata.name (and nothing else in metadata): the pattern lives there, because
# a root CEL `matches()` on a name the CEL cost estimator sees as unbounded could exceed the rule
# cost budget. The length is also a root CEL rule (constant cost), so `kubectl apply` names the reason.
ROOT_RULES: Final = [
    {
        "rule": f"size(self.metadata.name) <= {models.SERVICE_NAME_MAX_LENGTH}",
        "message": (
            f"metadata.name must be at most {models.SERVICE_NAME_MAX_LENGTH} characters (it names the Services)"
        ),
    },
]
# Only `type` and `properties.name`/`generateName`: kube-apiserver refuses a CRD whose metadata
# schema says anything else, a description included.
METADATA_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "name": {
            "type": "string",
            "description": "Name of the AgentService; every child's name derives from it.",
            "maxLength": models.SERVICE_NAME_MAX_LENGTH,
            "pattern": models.DNS_1035_LABEL,
        }
    },
}


class SchemaError(Exception):
    """The models produced a JSON schema construct with no structural-schema equivalent."""


def _model_classes() -> dict[str, type[BaseModel]]:
    """Every pydantic model of `models`, by class name (the key pydantic uses in `$defs`)."""
    return {
        name: obj
        for name, obj in vars(models).items()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == models.__name__
    }


def _property_name(name: str, field: FieldInfo) -> str:
    return field.alias or name


def _factory_default(field: FieldInfo) -> Any:
    """The JSON form of a `default_factory` default, every nested default written out.

    Not `{}`: kube-apiserver checks an object's default against the object's CEL rules as written,
    without applying the nested defaults first, so `{}` fails every rule that reads a field
    (`no such key: minReplicas`) and the CRD is refused.
    """
    assert field.default_factory is not None
    assert field.annotation is not None
    value = field.default_factory()  # type: ignore[call-arg]
    adapter: TypeAdapter[Any] = TypeAdapter(field.annotation)
    return adapter.dump_python(value, mode="json", by_alias=True, exclude_none=True)


class _Converter:
    """Turns one pydantic JSON schema (with `$defs`) into a structural schema."""

    def __init__(self, defs: dict[str, Any], *, defaults: bool) -> None:
        self.defs = defs
        self.defaults = defaults
        self.classes = _model_classes()

    def convert(self, node: dict[str, Any], model: type[BaseModel] | None = None) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            target = self.convert(self.defs[name], self.classes.get(name))
            # Sibling keywords (a field's own description or default) override the referenced ones.
            return {**target, **self.convert(node)}
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
            if len(branches) != 1:
                raise SchemaError(f"unsupported union in schema: {branches}")
            merged = {**self.convert(branches[0]), **self.convert(node), "nullable": True}
            return merged
        out: dict[str, Any] = {}
        for key, value in node.items():
            self._keyword(out, key, value)
        if model is not None:
            self._annotate(out, model)
        return out

    def _keyword(self, out: dict[str, Any], key: str, value: Any) -> None:
        """Translate one JSON-schema keyword into `out`."""
        if key == "title" or (key == "additionalProperties" and value is False):
            return
        if key in {"additionalProperties", "items"}:
            out[key] = self.convert(value)
        elif key == "properties":
            out[key] = {prop: self.convert(schema) for prop, schema in value.items()}
        elif key in {"exclusiveMinimum", "exclusiveMaximum"} and not isinstance(value, bool):
            # JSON Schema 2020-12 numeric form -> OpenAPI v3.0 boolean form.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default":
            if value is not None and self.defaults:
                out[key] = value
        elif key not in ALLOWED_KEYWORDS:
            raise SchemaError(f"keyword {key!r} has no structural-schema equivalent")
        else:
            out[key] = copy.deepcopy(value)

    def _annotate(self, out: dict[str, Any], model: type[BaseModel]) -> None:
        """Add what pydantic's schema leaves out: factory defaults and the model's CEL rules."""
        properties = out.get("properties", {})
        for name, field in model.model_fields.items():
            prop = properties.get(_property_name(name, field))
            if prop is None:
                continue
            if self.defaults and field.default_factory is not None:
                prop["default"] = _factory_default(field)
        rules = getattr(model, "cel_rules", [])
        if rules:
            out["x-kubernetes-validations"] = [dict(rule) for rule in rules]


def _ordered(node: Any) -> Any:
    """Put `description` and `type` first in every schema node, the rest in a stable order."""
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    first = [key for key in KEY_ORDER if key in node]
    rest = sorted(key for key in node if key not in KEY_ORDER)
    out: dict[str, Any] = {}
    for key in first + rest:
        value = node[key]
        if key == "properties":
            out[key] = {prop: _ordered(schema) for prop, schema in value.items()}
        elif key in {"items", "additionalProperties"}:
            out[key] = _ordered(value)
        else:
            out[key] = value
    return out


def structural_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural schema of one model, every reference inlined."""
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _ordered(_Converter(defs, defaults=defaults).convert(raw, model))
    return schema


def open_api_schema() -> dict[str, Any]:
    """The `openAPIV3Schema` of the AgentService resource."""
    return {
        "type": "object",
        "description": "An LLM-agent service: task API, workers, autoscaling, limits, alerts and canary rollouts.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": copy.deepcopy(METADATA_SCHEMA),
            "spec": structural_schema(models.AgentServiceSpec),
            # Status is written by the operator only: no defaults, so it shows exactly what was written.
            "status": structural_schema(models.AgentServiceStatus, defaults=False),
        },
        "x-kubernetes-validations": [dict(rule) for rule in ROOT_RULES],
    }


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "agentservice-operator", "app.kubernetes.io/part-of": "agentops"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                        {"name": "Canary", "type": "integer", "jsonPath": ".status.canary.weight"},
                        # `kubectl get agsvc -o wide` only (priority 1): empty for services without dailyUSD.
                        {
                            "name": "Spent",
                            "type": "number",
                            "jsonPath": ".status.budget.spentTodayUSD",
                            "description": "USD spent this UTC day (status.budget, from Prometheus).",
                            "priority": 1,
                        },
                        {
                            "name": "Remaining",
                            "type": "number",
                            "jsonPath": ".status.budget.remainingUSD",
                            "description": "USD of spec.budget.dailyUSD still to spend today (status.budget).",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as YAML, exactly as committed in `crds/`."""
    header = "# Generated by `agentctl crd` from agent_operator/api/models.py. Do not edit: run `make crd`.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)

"""The CRD's structural schema and CEL rules, checked offline as the API server would (jsonschema, cel-python).

Shared by the unit tests of the models and the CRD and by the examples' tests.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import pydantic
from agent_operator.api import models, validation
from celpy import celtypes

ROOT_PATH = "(root)"


def json_schema(node: dict[str, Any], *, root: bool = False, closed: bool = True) -> dict[str, Any]:
    """OpenAPI v3.0 structural schema -> JSON Schema Draft 4 (nullable, strict field validation).

    Objects with properties reject unknown fields, as the API server does under kubectl's strict
    field validation, except `metadata`, which is ObjectMeta (the CRD restricts only its name).
    """
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in out:
        out["properties"] = {
            name: json_schema(sub, closed=not (root and name == "metadata")) for name, sub in out["properties"].items()
        }
        if closed:
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = json_schema(out[key])
    return out


def display_path(parts: Iterator[Any] | list[Any]) -> str:
    return validation.field_path(list(parts)) or ROOT_PATH


def schema_errors(body: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(json_schema(schema, root=True))
    return sorted(f"{display_path(list(e.absolute_path))}: {e.validator}" for e in validator.iter_errors(body))


# --- the CRD's CEL rules, evaluated as the API server does ---------------------------------------


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill in schema defaults, recursively, like the API server's structural defaulting."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(value[name], sub)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name in value:
            value[name] = apply_defaults(value[name], schema["additionalProperties"])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def to_cel(value: Any, schema: dict[str, Any]) -> Any:
    """A JSON value as the CEL value the API server builds from it (numbers typed by the schema)."""
    kind = schema.get("type")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return celtypes.MapType(
            {
                celtypes.StringType(k): to_cel(v, props.get(k) or (extra if isinstance(extra, dict) else {}))
                for k, v in value.items()
                if v is not None
            }
        )
    if isinstance(value, list):
        return celtypes.ListType([to_cel(item, schema.get("items", {})) for item in value])
    if kind == "number":
        return celtypes.DoubleType(float(value))
    if kind == "integer":
        return celtypes.IntType(value)
    return celpy.json_to_cel(value)


def is_sorted(items: celtypes.ListType) -> celtypes.BoolType:
    """Kubernetes' `<list>.isSorted()` (k8s.io/apiserver/pkg/cel/library/lists.go)."""
    values = list(items)
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(values)))


CEL_ENV = celpy.Environment()


def evaluate(rule: str, value: Any, schema: dict[str, Any]) -> bool:
    program = CEL_ENV.program(CEL_ENV.compile(rule), functions={"isSorted": is_sorted})
    result = program.evaluate({"self": to_cel(value, schema)})
    if not isinstance(result, celtypes.BoolType):
        raise AssertionError(f"rule {rule!r} did not evaluate to a bool: {result!r}")
    return bool(result)


def cel_failures(value: Any, schema: dict[str, Any], path: list[Any] | None = None) -> list[str]:
    """`path: message` for every CEL rule the value breaks, reported at the rule's fieldPath."""
    path = path or []
    if value is None:
        return []
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not evaluate(rule["rule"], value, schema):
            field = [part for part in rule.get("fieldPath", "").split(".") if part]
            failures.append(f"{display_path([*path, *field])}: {rule['message']}")
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name in value:
                failures += cel_failures(value[name], sub, [*path, name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name, item in value.items():
            failures += cel_failures(item, schema["additionalProperties"], [*path, name])
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            failures += cel_failures(item, schema["items"], [*path, index])
    return failures


def crd_cel_failures(body: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    return sorted(cel_failures(apply_defaults(copy.deepcopy(body), schema), schema))


def pydantic_paths(body: dict[str, Any]) -> list[str]:
    try:
        models.AgentService.from_manifest(body)
    except pydantic.ValidationError as exc:
        return [problem.path for problem in validation.problems_from(exc)]
    return []


def is_within(path: str, ancestor: str) -> bool:
    """Whether field path `path` is `ancestor` or lies below it."""
    if ancestor == ROOT_PATH:
        return True
    return path == ancestor or path.startswith((ancestor + ".", ancestor + "["))

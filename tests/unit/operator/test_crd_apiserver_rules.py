"""Rules kube-apiserver applies to the CRD itself, checked fast (the cluster tests apply it for real).

Both were found when the real API server refused the generated CRD that the dev cluster took:
- a default is checked against the CEL rules of its own node as written, with no nested defaults
  applied first, so an object default must satisfy its rules on its own (`{}` did not);
- the `metadata` schema may hold `type` and the `name`/`generateName` properties and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agent_operator.api import crd

from tests.support.crdcheck import cel_failures


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "(root)", schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_every_default_satisfies_the_cel_rules_of_its_node_as_written() -> None:
    checked = 0
    for path, node in nodes(openapi_schema()):
        if "default" in node and node.get("x-kubernetes-validations"):
            checked += 1
            assert cel_failures(node["default"], node) == [], path
    assert checked >= 2  # autoscaling and canary at least: the test must see the rules it guards


def test_metadata_schema_holds_only_what_the_apiserver_allows() -> None:
    metadata = openapi_schema()["properties"]["metadata"]
    assert set(metadata) <= {"type", "properties"}
    assert set(metadata["properties"]) <= {"name", "generateName"}

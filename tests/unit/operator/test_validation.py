"""Turning user input and its errors into `validation.Problem`s.

Covers:
- field paths: camelCase names, list indexes, map keys that need quoting;
- cross-field errors reported at the field to change, pydantic's "Value error, " prefix gone;
- rule wording for bounds, lengths, unknown and missing fields, enums, and every pattern the CRD
  uses (no raw regular expression reaches a user);
- YAML loading: several documents with their start lines, empty documents skipped, syntax
  errors with file, line and column; unreadable files (missing, directory, not UTF-8);
- documents that are not AgentService objects; `spec_problems` for the operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
from agent_operator.api import crd, models, validation

from tests.unit.operator.test_crd import nodes


def body(**spec: Any) -> dict[str, Any]:
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


def problems(**spec: Any) -> list[str]:
    return [str(p) for p in validation.spec_problems(body(**spec))]


def test_field_paths() -> None:
    assert validation.field_path(["spec", "model", "providers", 0, "name"]) == "spec.model.providers[0].name"
    assert validation.field_path(["spec", "budget", "prices", "gpt-4.1", "inputPerMtok"]) == (
        'spec.budget.prices["gpt-4.1"].inputPerMtok'
    )
    assert validation.field_path([]) == ""


def test_valid_spec_has_no_problems() -> None:
    assert validation.spec_problems(body()) == []


def test_cross_field_problem_names_the_field_and_rule() -> None:
    assert problems(autoscaling={"minReplicas": 4, "maxReplicas": 2}) == [
        "spec.autoscaling.maxReplicas: must be >= minReplicas (4)"
    ]


def test_value_error_prefix_is_stripped() -> None:
    (line,) = problems(canary={"steps": [50, 10, 100]})
    assert line == "spec.canary.steps: canary steps must be strictly increasing (got [50, 10, 100])"


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        ({"limits": {"maxStepsPerTask": 0}}, "spec.limits.maxStepsPerTask: must be >= 1 (got 0)"),
        ({"alerts": {"errorRate": 1.5}}, "spec.alerts.errorRate: must be <= 1 (got 1.5)"),
        ({"alerts": {"p95LatencySeconds": 0}}, "spec.alerts.p95LatencySeconds: must be > 0 (got 0)"),
        ({"image": "x" * 600}, "spec.image: must be at most 512 characters"),
        ({"canary": {"steps": []}}, "spec.canary.steps: must have at least 1 item"),
        ({"replicas": 3}, "spec.replicas: unknown field (not part of the AgentService API)"),
        ({"autoscaling": {"engine": "vpa"}}, "spec.autoscaling.engine: must be one of: hpa, keda (got 'vpa')"),
        (
            {"canary": {"interval": "1 minute"}},
            "spec.canary.interval: must be a duration such as 30s, 5m or 1h30m, with at most six digits a number "
            "(got '1 minute')",
        ),
        (
            {"api": {"resources": {"requests": {"cpu": "lots"}}}},
            "spec.api.resources.requests.cpu: must be a Kubernetes quantity such as 250m, 1 or 512Mi (got 'lots')",
        ),
        (
            {"redis": {"url": "http://r"}},
            "spec.redis.url: must be a redis[s]:// URL, or redis[s]+cluster:// or redis[s]+sentinel:// (got 'http://r')",
        ),
        (
            {"env": [{"name": "1 A", "value": "x"}]},
            "spec.env[0].name: must be a valid environment variable name (got '1 A')",
        ),
    ],
)
def test_rules_in_words(spec: dict[str, Any], line: str) -> None:
    assert problems(**spec) == [line]


def test_missing_field_and_several_problems_one_line_each() -> None:
    manifest = body(limits={"maxStepsPerTask": 0}, alerts={"queueDepth": 0})
    del manifest["spec"]["redis"]
    lines = [str(p) for p in validation.spec_problems(manifest)]
    assert lines == [
        "spec.limits.maxStepsPerTask: must be >= 1 (got 0)",
        "spec.redis: required field is missing",
        "spec.alerts.queueDepth: must be >= 1 (got 0)",
    ]


def test_every_pattern_of_the_crd_has_words(tmp_path: Path) -> None:
    schema = crd.open_api_schema()
    patterns = {node["pattern"] for _, node in nodes(schema) if "pattern" in node}
    assert patterns and patterns <= set(validation.PATTERN_MEANINGS)


def test_problems_from_maps_every_error() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        models.AgentService.from_manifest(body(autoscaling={"minReplicas": 4, "maxReplicas": 2}, image=1))
    assert [str(p) for p in validation.problems_from(info.value)] == [
        "spec.image: Input should be a valid string (got 1)",
        "spec.autoscaling.maxReplicas: must be >= minReplicas (4)",
    ]


# --- files and documents -------------------------------------------------------------------------


def test_documents_with_lines_and_empty_ones_skipped() -> None:
    text = "# c\na: 1\n---\n---\nb: 2\n...\n"
    docs = validation.load_documents("f.yaml", text)
    assert [(d.index, d.line, d.body) for d in docs] == [(1, 2, {"a": 1}), (2, 5, {"b": 2})]
    assert docs[1].where == "f.yaml:5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: 1\n b: 2\n", "f.yaml:2:3: YAML syntax error: mapping values are not allowed here"),
        ("a: [1, 2\n", "f.yaml:2:1: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
        ("a:\n\t- 1\n", "f.yaml:2:1: YAML syntax error: found character '\\t' that cannot start any token"),
    ],
)
def test_yaml_syntax_errors_name_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(validation.InputError) as info:
        validation.load_documents("f.yaml", text)
    assert str(info.value) == message


def test_unreadable_files(tmp_path: Path) -> None:
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    cases = {
        str(tmp_path / "nope.yaml"): "no such file",
        str(tmp_path): "is a directory, not a manifest file",
        str(binary): "not a UTF-8 text file",
    }
    for source, message in cases.items():
        with pytest.raises(validation.InputError) as info:
            validation.read_text(source)
        assert str(info.value) == f"{source}: {message}"


def _document(payload: Any) -> validation.Document:
    return validation.Document(source="f.yaml", index=3, line=7, body=payload)


def test_documents_that_are_not_agentservices() -> None:
    with pytest.raises(validation.InvalidManifest) as info:
        validation.parse_agent_service(_document(["a"]))
    assert info.value.headline == "document 3 is a list, not an agentops.dev/v1alpha1/AgentService object"
    with pytest.raises(validation.InvalidManifest) as info:
        validation.parse_agent_service(_document({"apiVersion": "apps/v1", "kind": "Deployment"}))
    assert info.value.headline == "document 3 is apps/v1/Deployment, not agentops.dev/v1alpha1/AgentService"
    assert info.value.problems == []


def test_invalid_agentservice_lists_problems_under_its_name() -> None:
    manifest = body(autoscaling={"maxReplicas": 0})
    with pytest.raises(validation.InvalidManifest) as info:
        validation.parse_agent_service(_document(manifest))
    assert info.value.headline == 'AgentService "agent" is invalid:'
    assert [str(p) for p in info.value.problems] == ["spec.autoscaling.maxReplicas: must be >= 1 (got 0)"]
    del manifest["metadata"]
    with pytest.raises(validation.InvalidManifest) as info:
        validation.parse_agent_service(_document(manifest))
    assert info.value.headline == "AgentService (document 3) is invalid:"
    assert str(info.value.problems[0]) == "metadata: required field is missing"


def test_valid_document_parses() -> None:
    svc = validation.parse_agent_service(_document(body()))
    assert svc.metadata.name == "agent"

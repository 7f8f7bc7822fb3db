"""The examples, through the real `agentctl` and against the generated CRD.

Covers:
- every valid example renders through `agentctl render` (a subprocess of the installed console
  script): exit 0, multi-document YAML of objects; and several files in one call;
- every invalid example exits 2 printing exactly the problem lines of its `# expect:` comments
  (header lines aside), and never a traceback;
- every example against the CRD's `openAPIV3Schema` with `jsonschema` (Draft 4, `nullable`
  translated, unknown fields rejected as kubectl's strict field validation does): valid ones pass,
  invalid ones fail exactly as their `# schema: <path>: <keyword>` comments say;
- the CRD's CEL rules (`x-kubernetes-validations`) evaluated with cel-python after applying the
  schema's defaults as the API server does: valid examples pass, invalid ones fail exactly as
  their `# cel: <path>: <message>` comments say, at the field (or an ancestor of the field) that
  pydantic names: both halves reject for the same reason;
- `full.yaml` sets every field of every spec model.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from agent_operator.api import crd, models

from tests.support.crdcheck import (
    crd_cel_failures,
    is_within,
    pydantic_paths,
    schema_errors,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
AGENTCTL = Path(sys.executable).parent / "agentctl"
HEADER = re.compile(r'^error: .+:\d+: AgentService (".*"|\(document \d+\)) is invalid:$')


def run_render(*files: Path) -> subprocess.CompletedProcess[str]:
    args = [str(AGENTCTL), "render"]
    for file in files:
        args += ["-f", str(file.relative_to(ROOT))]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def annotations(path: Path, key: str) -> list[str]:
    """The values of `# key: value` comment lines, `{file}` replaced by the path render sees."""
    prefix = f"# {key}: "
    lines = path.read_text().splitlines()
    return [
        line.removeprefix(prefix).replace("{file}", str(path.relative_to(ROOT)))
        for line in lines
        if line.startswith(prefix)
    ]


def load(path: Path) -> dict[str, Any]:
    body = yaml.safe_load(path.read_text())
    assert isinstance(body, dict)
    return body


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result: dict[str, Any] = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


# --- the CRD's schema as a JSON-schema validator -------------------------------------------------


# --- valid examples ------------------------------------------------------------------------------


def test_the_three_documented_examples_exist() -> None:
    assert {p.name for p in VALID} >= {"minimal.yaml", "full.yaml", "canary.yaml"}
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_renders(path: Path) -> None:
    result = run_render(path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    documents = list(yaml.safe_load_all(result.stdout))
    name = load(path)["metadata"]["name"]
    assert documents, "render printed nothing"
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= document.keys()
        assert document["metadata"]["labels"]["app.kubernetes.io/instance"] == name


def test_render_takes_several_files_in_order() -> None:
    together = run_render(*VALID)
    assert together.returncode == 0, together.stderr
    separately = "".join(run_render(path).stdout for path in VALID)
    assert together.stdout == separately


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_passes_the_crd_schema_and_cel_rules(path: Path, schema: dict[str, Any]) -> None:
    body = load(path)
    assert schema_errors(body, schema) == []
    assert crd_cel_failures(body, schema) == []
    assert not any(line.startswith("# expect") for line in path.read_text().splitlines())


def _model_fields(model: type[pydantic.BaseModel]) -> set[str]:
    return set(model.model_fields)


def _collect_set_fields(value: Any, seen: dict[type[pydantic.BaseModel], set[str]]) -> None:
    if isinstance(value, pydantic.BaseModel):
        seen.setdefault(type(value), set()).update(value.model_fields_set)
        for name in value.model_fields_set:
            _collect_set_fields(getattr(value, name), seen)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect_set_fields(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_set_fields(item, seen)


def _spec_models(model: type[pydantic.BaseModel], found: set[type[pydantic.BaseModel]]) -> None:
    found.add(model)
    for field in model.model_fields.values():
        for arg in _type_args(field.annotation):
            if isinstance(arg, type) and issubclass(arg, pydantic.BaseModel) and arg not in found:
                _spec_models(arg, found)


def _type_args(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _type_args(arg)


def _unset_fields(path: Path) -> set[str]:
    svc = models.AgentService.from_manifest(load(path))
    seen: dict[type[pydantic.BaseModel], set[str]] = {}
    _collect_set_fields(svc.spec, seen)
    every: set[type[pydantic.BaseModel]] = set()
    _spec_models(models.AgentServiceSpec, every)
    return {f"{model.__name__}.{field}" for model in every for field in _model_fields(model) - seen.get(model, set())}


# Fields that exclude each other: full.yaml sets one, another example must set the other.
EXCLUSIVE = {
    "RedisSpec.url_secret_ref": "RedisSpec.url",
    # KEDA's keys of the urlSecretRef Secret (examples/keda.yaml)
    "RedisSpec.keda": "RedisSpec.url",
    "RedisKeda.address_key": "RedisSpec.url",
    "RedisKeda.password_key": "RedisSpec.url",
    "RedisKeda.username_key": "RedisSpec.url",
    "RedisKeda.database_index": "RedisSpec.url",
}


def test_full_example_sets_every_field() -> None:
    missing = _unset_fields(EXAMPLES / "full.yaml")
    assert missing == set(EXCLUSIVE)
    for field, alternative in EXCLUSIVE.items():
        assert alternative not in missing
        assert any(field not in _unset_fields(path) for path in VALID), f"no example sets {field}"


# --- invalid examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_exits_2_with_the_stated_problems(path: Path) -> None:
    expected = annotations(path, "expect")
    assert expected, f"{path.name} states no `# expect:` line"
    result = run_render(path)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if not HEADER.match(line)]
    assert problems == expected


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_by_the_crd_for_the_same_reason(path: Path, schema: dict[str, Any]) -> None:
    cel_expected = sorted(annotations(path, "cel"))
    schema_expected = sorted(annotations(path, "schema"))
    if not cel_expected and not schema_expected:
        # Not an AgentService at all (YAML syntax, another kind): the CRD never sees it.
        assert all(line.startswith("error: ") for line in annotations(path, "expect"))
        return
    body = load(path)
    assert schema_errors(body, schema) == schema_expected
    if schema_expected:
        return  # the API server stops at schema errors; pydantic's path is checked below
    assert crd_cel_failures(body, schema) == cel_expected
    model_paths = pydantic_paths(body)
    assert model_paths, "pydantic accepts what the CRD rejects"
    for failure in cel_expected:
        cel_path = failure.split(": ", 1)[0]
        assert any(is_within(p, cel_path) for p in model_paths), (failure, model_paths)


@pytest.mark.parametrize("path", [p for p in INVALID if annotations(p, "schema")], ids=lambda p: p.name)
def test_schema_rejection_and_model_rejection_agree(path: Path) -> None:
    model_paths = pydantic_paths(load(path))
    assert model_paths, "pydantic accepts what the CRD schema rejects"
    for failure in annotations(path, "schema"):
        schema_path = failure.rsplit(": ", 1)[0]
        assert any(is_within(p, schema_path) for p in model_paths), (failure, model_paths)

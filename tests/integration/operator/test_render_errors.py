"""`agentctl render` errors a new user hits (issue 15), through the installed console script.

Covers: a file with no AgentService (empty, comment-only, an empty standard input) exits 2 with
`no AgentService in FILE`; each problem names the line of its own field (nested mappings, list
items, a missing field at the mapping that lacks it, in the second document of a file); a type
error shows the value that was given (a scalar as written, a mapping or list by kind).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.integration.operator.test_render_cli import agentctl

MANIFEST = textwrap.dedent(
    """\
    apiVersion: agentops.dev/v1alpha1
    kind: AgentService
    metadata:
      name: typed
    spec:
      model:
        providers:
          - name: claude
            model: claude-sonnet-4-5
            apiKeySecretRef: {name: llm-keys, key: anthropic}
          - name: backup
            model: other
            weight: lots
            apiKeySecretRef: {name: llm-keys, key: other}
      api:
        replicas: three
      image: {repository: x}
      redis:
        url: redis://redis:6379/0
    """
)


def test_a_file_without_an_agentservice_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    comments = tmp_path / "comments.yaml"
    comments.write_text("# an AgentService will go here\n---\n# and here\n")
    for path in (empty, comments):
        result = agentctl("render", "-f", str(path))
        assert (result.returncode, result.stdout, result.stderr) == (2, "", f"error: no AgentService in {path}\n")
    result = agentctl("render", "-f", "-", stdin="")
    assert (result.returncode, result.stderr) == (2, "error: no AgentService in <stdin>\n")


def test_each_problem_names_its_field_line_and_the_value_given(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    first = "# a valid one first\n" + MANIFEST.replace("name: typed", "name: fine").replace(
        "weight: lots", "weight: 1"
    ).replace("replicas: three", "replicas: 3").replace("image: {repository: x}", "image: x")
    path.write_text(first + "---\n" + MANIFEST)
    offset = len(first.splitlines()) + 1  # the second document's first line is offset + 1
    result = agentctl("render", "-f", str(path))
    assert result.returncode == 2
    header, *problems = result.stderr.splitlines()
    assert header == f'error: {path}:{offset + 1}: AgentService "typed" is invalid:'
    assert sorted(problems) == [
        f"{path}:{offset + 13}: spec.model.providers[1].weight: Input should be a valid integer, unable to parse "
        "string as an integer (got 'lots')",
        f"{path}:{offset + 16}: spec.api.replicas: Input should be a valid integer, unable to parse string as an "
        "integer (got 'three')",
        f"{path}:{offset + 17}: spec.image: Input should be a valid string (got a mapping)",
    ]


def test_a_missing_field_points_at_the_mapping_that_lacks_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    path.write_text(
        MANIFEST.replace("weight: lots", "weight: 1")
        .replace("replicas: three", "replicas: 3")
        .replace("image: {repository: x}\n", "")
        .replace("- name: backup\n        model: other\n", "- model: other\n")
    )
    result = agentctl("render", "-f", str(path))
    assert result.returncode == 2
    problems = result.stderr.splitlines()[1:]
    assert f"{path}:11: spec.model.providers[1].name: required field is missing" in problems, problems

"""`agentctl` as a user runs it (subprocesses of the installed console script).

Covers:
- `agentctl render` prints exactly `builders.build_children` for each AgentService, several per
  file and several files, `-f -` from standard input, multi-line strings as literal blocks;
- one bad document fails the whole run (exit 2, nothing on stdout) and every problem of every
  document is listed, one per line; a missing file is a clear one-line error; no traceback;
- `agentctl crd` prints the committed CRD;
- `agentctl demo` renders the examples into a summary table (kind/name per AgentService), and
  fails cleanly when there is nothing to render;
- usage errors (no subcommand, no -f, stray options) exit 2 with argparse's usage line;
- `agentctl operator` hands its options to `agent_operator.run` (`--help` is the operator's).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from agent_operator.api import models
from agent_operator.manifests import builders

ROOT = Path(__file__).resolve().parents[3]
AGENTCTL = Path(sys.executable).parent / "agentctl"
EXAMPLES = ROOT / "examples"


def agentctl(
    *args: str, stdin: str | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENTCTL), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def services(path: Path) -> list[models.AgentService]:
    return [models.AgentService.from_manifest(doc) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_render_prints_exactly_what_the_builders_build() -> None:
    paths = [EXAMPLES / "minimal.yaml", EXAMPLES / "full.yaml", EXAMPLES / "canary.yaml"]
    result = agentctl("render", *(arg for p in paths for arg in ("-f", str(p))))
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    expected = [child for p in paths for svc in services(p) for child in builders.build_children(svc)]
    assert rendered == expected
    assert result.stdout.startswith("---\n")


def test_render_reads_several_documents_and_stdin(tmp_path: Path) -> None:
    first = (EXAMPLES / "minimal.yaml").read_text()
    second = first.replace("name: support-agent", "name: billing-agent")
    result = agentctl("render", "-f", "-", stdin=f"{first}\n---\n{second}")
    assert result.returncode == 0, result.stderr
    instances = {doc["metadata"]["labels"]["app.kubernetes.io/instance"] for doc in yaml.safe_load_all(result.stdout)}
    assert instances == {"support-agent", "billing-agent"}


def test_multiline_strings_are_literal_blocks() -> None:
    result = agentctl("render", "-f", str(EXAMPLES / "minimal.yaml"))
    assert "config.json: |" in result.stdout
    assert "support-agent.json: |" in result.stdout


def test_every_problem_of_every_document_one_line_each(tmp_path: Path) -> None:
    good = (EXAMPLES / "minimal.yaml").read_text()
    bad = good.replace("name: support-agent", "name: Bad_Name").replace(
        "  redis:",
        "  autoscaling:\n    minReplicas: 5\n    maxReplicas: 3\n  limits:\n    maxStepsPerTask: 0\n  redis:",
    )
    path = tmp_path / "mixed.yaml"
    path.write_text(f"{good}---\n{bad}")
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: Secret\n")
    result = agentctl("render", "-f", str(path), "-f", str(other))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = path.read_text().splitlines()

    def line_of(text: str, after: int = 0) -> int:
        """The 1-based line of the first line after `after` holding `text` (the example's length may change)."""
        return next(i for i, line in enumerate(lines, 1) if i > after and text in line)

    second = line_of("apiVersion:", after=len(good.splitlines()))  # the second document's first key
    assert result.stderr.splitlines() == [
        f'error: {path}:{second}: AgentService "Bad_Name" is invalid:',
        f"{path}:{line_of('name: Bad_Name')}: metadata.name: must be a DNS-1035 label: lowercase letters, digits "
        "and '-', starting with a letter and ending alphanumeric (got 'Bad_Name')",
        f"{path}:{line_of('maxReplicas: 3')}: spec.autoscaling.maxReplicas: must be >= minReplicas (5)",
        f"{path}:{line_of('maxStepsPerTask: 0')}: spec.limits.maxStepsPerTask: must be >= 1 (got 0)",
        f"error: {other}:1: document 1 is v1/Secret, not agentops.dev/v1alpha1/AgentService",
    ]


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    result = agentctl("render", "-f", "nowhere.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "error: nowhere.yaml: no such file\n")


def test_crd_prints_the_committed_crd() -> None:
    result = agentctl("crd")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "crds" / "agentservices.agentops.dev.yaml").read_text()


# The whole demo (its canary part included) takes about a minute on 2 idle cores and several on
# busy ones: the limits guard against a hang, not a slow machine.
@pytest.mark.timeout(900)
def test_demo_runs_render_operator_and_runtime() -> None:
    """`agentctl demo` (what `make demo` runs): the render table, the operator, the runtime."""
    result = agentctl("demo", timeout=800)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = lines.index(
        next(line for line in lines if line.split() == ["AGENTSERVICE", "KIND", "NAME", "API", "VERSION"])
    )
    table_end = next(i for i in range(header, len(lines)) if not lines[i].strip())
    rows = [line.split() for line in lines[header + 1 : table_end]]
    expected = [
        [f"{svc.metadata.namespace}/{svc.metadata.name}", child["kind"], child["metadata"]["name"], child["apiVersion"]]
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for svc in services(path)
        for child in builders.build_children(svc)
    ]
    assert rows == expected
    # the operator section: the service became Ready, edits reached the children, steady state writes nothing
    assert any(line.split()[:3] == ["Ready", "True", "AllReplicasReady"] for line in lines if line.strip())
    assert "steady state: 0 write requests" in result.stdout
    # the runtime section: a tool-using task ran to completion on the local model
    assert any("-> succeeded" in line for line in lines)
    assert any(line.strip().startswith("answer:") for line in lines)


def test_demo_without_examples_fails_cleanly(tmp_path: Path) -> None:
    result = agentctl("demo", "--examples", str(tmp_path))
    assert (result.returncode, result.stderr) == (2, f"error: no examples in {tmp_path}\n")


def test_usage_errors() -> None:
    for args in ((), ("render",)):
        result = agentctl(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("usage: agentctl")
        assert "Traceback" not in result.stderr


def test_operator_options_belong_to_the_operator_entry_point() -> None:
    result = agentctl("operator", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: agentctl operator")
    assert "--namespace" in result.stdout
    stray = agentctl("crd", "--namespace", "x")
    assert stray.returncode == 2
    assert "unrecognized arguments: --namespace x" in stray.stderr

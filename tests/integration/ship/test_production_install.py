"""What `pip install .` without extras gives: the operator and the runtime, without the development fakes.

Covers: the package's declared dependencies name neither kmock nor the development package; every
console script answers `--help` (and `agentctl operator` and `agent-runtime worker` their own) in a
process where importing kmock or agentops_dev fails, as it does in a production install and in the
image; `agentctl demo` there says in one line how to get the development package.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEVELOPMENT_ONLY = ("kmock", "agentops_dev")

# Runs a console script's target in a process where the development-only packages cannot be imported,
# as in a production install, even though the test venv has them.
BLOCKED_RUN = """
import importlib, sys
for name in {blocked!r}:
    sys.modules[name] = None  # the documented block: imports fail, importlib.util.find_spec says None
module, _, function = {target!r}.partition(":")
sys.argv = [{script!r}, *{args!r}]
sys.exit(getattr(importlib.import_module(module), function)())
"""


def scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, str] = project["scripts"]
    return found


def run_blocked(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = BLOCKED_RUN.format(blocked=DEVELOPMENT_ONLY, target=scripts()[script], script=script, args=list(args))
    command = [sys.executable, "-c", code]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_dependencies_name_no_development_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
             for requirement in project["dependencies"]]  # fmt: skip
    assert not {"kmock", "agentops-dev", "agentops_dev"} & set(names)


@pytest.mark.parametrize(
    ("script", "args", "usage"),
    [
        ("agentctl", ["--help"], "usage: agentctl"),
        ("agentctl", ["operator", "--help"], "usage: agentctl operator"),
        ("agent-runtime", ["--help"], "usage: agent-runtime"),
        ("agent-runtime", ["worker", "--help"], "usage: agent-runtime worker"),
        ("agent-runtime", ["api", "--help"], "usage: agent-runtime api"),
        ("kubectl-agentservice", ["--help"], "usage: kubectl agentservice"),
    ],
)
def test_entry_points_run_without_the_development_packages(script: str, args: list[str], usage: str) -> None:
    done = run_blocked(script, *args)
    assert done.returncode == 0, done.stderr
    assert usage in done.stdout
    assert "agentops_dev" not in done.stderr and "kmock" not in done.stderr


def test_demo_without_the_development_package_says_how_to_get_it() -> None:
    done = run_blocked("agentctl", "demo")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "make demo" in lines[0] and "pip install ./dev" in lines[0]

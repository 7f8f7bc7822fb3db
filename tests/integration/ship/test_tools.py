"""The project-local tool binaries that `make setup` unpacks from the PyPI wheel.

Covers: `helm version` and `kubectl version --client` from `<repo>/.tools/bin` answer with a
version (they are used by the chart and end-to-end tests), and kubectl is 1.30 or newer.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TOOLS = ROOT / ".tools" / "bin"


def run(binary: str, *args: str) -> str:
    path = TOOLS / binary
    assert path.is_file(), f"{path} is missing: run `make setup` (scripts/setup.sh)"
    result = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_helm_answers_version() -> None:
    assert re.fullmatch(r"v\d+\.\d+\.\d+\S*\n", run("helm", "version", "--short"))


def test_kubectl_answers_client_version() -> None:
    version = json.loads(run("kubectl", "version", "--client", "-o", "json"))["clientVersion"]
    assert version["major"] == "1"
    assert int(version["minor"].rstrip("+")) >= 30

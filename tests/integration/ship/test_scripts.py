"""The shell scripts under `scripts/`, checked without running them.

Covers:
- every `scripts/*.sh` parses (`bash -n`, always) and is clean under the real `shellcheck` (when it
  is installed: `apt-get install shellcheck`), is executable, has a bash shebang and `set -euo pipefail`;
- both checks reject a broken script (so they can fail);
- `scripts/e2e-kind.sh` says at the top that CI does not run it, and cleans up with a trap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))
SHELLCHECK = shutil.which("shellcheck")
needs_shellcheck = pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed")


def bash_n(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30, check=False)


def shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    assert SHELLCHECK is not None
    return subprocess.run(
        [SHELLCHECK, "--shell=bash", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_there_are_scripts() -> None:
    assert {p.name for p in SCRIPTS} >= {"setup.sh", "e2e-kind.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_strict(script: Path) -> None:
    result = bash_n(script)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@needs_shellcheck
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_shellcheck_clean(script: Path) -> None:
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN_SYNTAX = '#!/usr/bin/env bash\nset -euo pipefail\nif true; then\n  echo "unterminated"\n'
BROKEN_LINT = "#!/usr/bin/env bash\nset -euo pipefail\nfiles=$(ls)\nrm $files\n"


def test_bash_n_rejects_a_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.sh"
    path.write_text(BROKEN_SYNTAX)
    result = bash_n(path)
    assert result.returncode != 0 and "syntax error" in result.stderr


@needs_shellcheck
def test_shellcheck_rejects_an_unquoted_expansion(tmp_path: Path) -> None:
    path = tmp_path / "sloppy.sh"
    path.write_text(BROKEN_LINT)
    assert bash_n(path).returncode == 0  # valid bash, still wrong
    result = shellcheck(path)
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_e2e_kind_says_it_is_not_run_in_ci_and_cleans_up() -> None:
    text = (ROOT / "scripts" / "e2e-kind.sh").read_text()
    header = text.split("\nset -euo pipefail\n", 1)[0]
    assert "NOT RUN IN CI" in header
    assert "trap cleanup EXIT" in text
    for step in (
        "scripts/image.sh",
        "kind load image-archive",
        "helm --kube-context",
        "--for=condition=Ready",
        "-auth",
        "port-forward",
    ):
        assert step in text, step

"""The Dockerfile, checked without a Docker engine.

Covers: multi-stage build with a slim base; the final stage runs as a non-root user, carries a
HEALTHCHECK and no build tools or secrets; every entry point it names is a console script of
the package that exists and answers `--help`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_multi_stage_slim() -> None:
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all("slim" in image for image in froms)


def test_final_stage_is_non_root_with_healthcheck() -> None:
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert any(keyword == "HEALTHCHECK" for keyword, _ in stage)


def test_final_stage_has_no_build_steps_or_secrets() -> None:
    stage = final_stage()
    runs = " ".join(args for keyword, args in stage if keyword == "RUN")
    assert "pip install" not in runs and "apt-get" not in runs
    for keyword, args in stage:
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"(KEY|TOKEN|PASSWORD|SECRET)\w*=", args, re.IGNORECASE), args


def test_entry_points_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    stage = dict(final_stage())
    entrypoint = stage["ENTRYPOINT"].strip('[]" ').split('"')[0]
    command = stage["CMD"].strip('[]" ').split('"')[0]
    assert entrypoint in scripts, f"ENTRYPOINT {entrypoint} is not a console script"
    executable = shutil.which(entrypoint, path=str(Path(sys.executable).parent))
    assert executable is not None, f"{entrypoint} is not installed in the test environment"
    help_text = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True).stdout
    assert command in help_text, f"CMD {command} is not a subcommand of {entrypoint}"
    # The operator runs from the same image as `agentctl operator` (the chart overrides the entry point).
    assert "agentctl" in scripts

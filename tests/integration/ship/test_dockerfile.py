"""The Dockerfile, checked without a Docker engine.

Covers: multi-stage build with a slim base pinned to a full Python version (the suite's own
minor version; a digest can be given as a build argument); the dependencies installed with
`-c constraints.txt`, which pins every distribution of the test venv (a stale file fails), and the
set-up installs the venv with the same file, so the suite never runs on versions nobody chose; the
final stage runs as a non-root user, with no build tools or secrets; every entry point it names
is a console script of the package that exists and answers `--help`. The health checks are
tested against the real entry points in test_health_probes.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


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


def base_image() -> str:
    """The default of the PYTHON_IMAGE build argument every stage starts from."""
    (arg,) = [args for keyword, args in instructions() if keyword == "ARG" and args.startswith("PYTHON_IMAGE=")]
    return arg.split("=", 1)[1]


def test_multi_stage_slim_pinned_base() -> None:
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(image.split()[0] == "${PYTHON_IMAGE}" for image in froms)
    image = base_image()
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+@sha256:[0-9a-f]{64}", image)
    assert match, f"{image}: pin a full version and its digest"
    assert (int(match[1]), int(match[2])) == sys.version_info[:2], "the image runs the Python the suite runs"


def test_dependencies_are_installed_with_the_constraints_file() -> None:
    build = instructions()[: max(i for i, (keyword, _) in enumerate(instructions()) if keyword == "FROM")]
    copies = " ".join(args for keyword, args in build if keyword == "COPY")
    installs = [args for keyword, args in build if keyword == "RUN" and "pip install" in args]
    assert "constraints.txt" in copies.split()
    assert installs and all("-c constraints.txt" in args for args in installs), installs
    assert not any("--upgrade" in args for args in installs), "an unpinned upgrade defeats the constraints"


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))  # type: ignore[misc]


def test_constraints_file_is_fresh() -> None:
    """constraints.txt is what `make constraints` generates from this venv: the extras resolve within it."""
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "constraints.py")], capture_output=True, text=True, check=True
    ).stdout
    assert (ROOT / "constraints.txt").read_text() == generated, "constraints.txt is stale: run `make constraints`"
    assert {"kopf", "fastapi", "redis", "anthropic", "opentelemetry-sdk", "pytest", "kmock"} <= set(_pins())


def test_every_installed_distribution_is_pinned_at_its_version() -> None:
    """The venv holds exactly the pinned set (the set-up installs with -c constraints.txt), never the index's newest.

    What can drift by our own hand is checked; what the index offers today is not: a new upstream
    release changes nothing here until `make constraints` moves the pins.
    """
    from importlib import metadata

    def canonical(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    ours_and_installers = {"agentservice-operator", "agentops-dev", "pip", "setuptools", "wheel"}
    installed = {
        canonical(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if canonical(dist.metadata["Name"]) not in ours_and_installers
    }
    pins = _pins()
    assert sorted(set(installed) - set(pins)) == [], (
        "installed but not pinned: add it to pyproject.toml and run `make constraints`"
    )
    assert sorted(set(pins) - set(installed)) == [], "pinned but not installed: run `make setup`"
    assert {name: v for name, v in installed.items() if pins[name] != v} == {}, (
        "installed at another version than pinned"
    )


def test_setup_installs_with_the_constraints_file() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if "pip install" in line and "-e '.[dev]'" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert "constraints.txt -nt" in setup, "a change of the pins reinstalls the venv"


def test_final_stage_is_non_root() -> None:
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users, "the final stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"0", "root"}


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

"""The how-to docs are written for a reader who is not us.

Covers: README.md and docs/*.md carry no internal history or jargon ("issue 14", "fence", "poke",
"floor"), every repository path they name in backticks (`tests/...`, `scripts/...`, `docs/...`,
`examples/...`, `charts/...`, `bench/...`) exists, and scripts/setup.sh asks for the Go the pinned
modules need (the highest `go` directive of the wrapper modules).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WORDS = re.compile(r"\bissue \d+|\bfenc(e|ed|ing)\b|\bpok(e|es|ed|ing)\b|\bfloor(s|ed)?\b", re.IGNORECASE)
PATH = re.compile(r"`((?:tests|scripts|docs|examples|charts|bench|operator|agent_runtime|dev)/[^`\s:*<>{}]+)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_internal_words(page: Path) -> None:
    found = [m.group(0) for m in WORDS.finditer(page.read_text())]
    assert found == [], f"{page.name}: {found}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page: Path) -> None:
    missing = sorted({m.group(1).rstrip(".,;)") for m in PATH.finditer(page.read_text())} - {""})
    missing = [p for p in missing if not (ROOT / p.split("::")[0]).exists()]
    assert missing == [], f"{page.name}: {missing}"


def test_setup_asks_for_the_go_the_modules_need() -> None:
    versions = []
    for gomod in ROOT.glob("tests/*/go.mod"):
        text = gomod.read_text()
        match = re.search(r"^go (\d+)\.(\d+)", text, re.MULTILINE)
        assert match is not None
        versions.append((int(match[1]), int(match[2])))
        needs = re.search(r"needs Go (\d+)\.(\d+)", text)
        if needs:
            versions.append((int(needs[1]), int(needs[2])))
    major, minor = max(versions)
    assert f"Go {major}.{minor}+" in (ROOT / "scripts" / "setup.sh").read_text()

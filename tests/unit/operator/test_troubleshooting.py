"""docs/troubleshooting.md names every condition and Event reason the operator writes.

Covers: each CamelCase reason literal of `status.py` (conditions and Events) and each canary
decision reason (`machine.Reason`, the Events' reasons) has a row on the page.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from agent_operator import status
from agent_operator.canary import machine

ROOT = Path(__file__).resolve().parents[3]
PAGE = (ROOT / "docs" / "troubleshooting.md").read_text()
CAMEL = re.compile(r"[A-Z][a-z]+(?:[A-Z][a-z]+)+")
NOT_REASONS = {"AnalysisReady"}  # a condition type, described by its own section
ONE_WORD_REASONS = {"Valid", "Promoted"}


def status_reasons() -> set[str]:
    tree = ast.parse(Path(status.__file__).read_text())
    found = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and CAMEL.fullmatch(node.value)
    }
    return (found - NOT_REASONS) | ONE_WORD_REASONS


def test_every_reason_has_a_row() -> None:
    reasons = status_reasons() | {reason.value for reason in machine.Reason}
    assert len(reasons) > 40  # the walk must see them
    missing = sorted(r for r in reasons if f"`{r}`" not in PAGE)
    assert missing == []

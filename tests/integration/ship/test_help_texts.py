"""Help texts say what the commands do (issue 15): `agentctl demo --help` names every part of the
demo, not only the render step; `kubectl agentservice --help` lists every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def help_of(*args: str) -> str:
    result = subprocess.run([*args, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())  # argparse wraps at the terminal width


def test_demo_help_describes_every_part() -> None:
    text = help_of(str(BIN / "agentctl"), "demo")
    for part in (
        "1. render the examples",
        "2. run the real operator on an embedded dev cluster",
        "3. run the runtime",
        "4. a canary rollout judged by a real Prometheus",
    ):
        assert part in text, text
    assert "redis-server" in text and "the local model" in text and "worker" in text
    assert "rolled back" in text and "promoted step by step" in text and "kubectl agentservice get" in text


def test_plugin_help_lists_every_command() -> None:
    text = help_of(str(BIN / "kubectl-agentservice"))
    for command in ("get", "list", "promote", "abort", "pause", "resume", "history", "eval"):
        assert f" {command} " in text, (command, text)

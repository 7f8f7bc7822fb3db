"""The Argo CD health check (Lua) for AgentService, run in a real Lua runtime (lupa).

Covers: every health status the script can return, from sample statuses shaped like the
operator's; and that docs/gitops.md embeds the script verbatim (no drift).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa
import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "docs" / "argocd" / "agentservice-health.lua"


def run_health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT.read_text())
    return str(result["status"]), str(result["message"])


def condition(ctype: str, status: str, message: str = "") -> dict[str, str]:
    return {"type": ctype, "status": status, "reason": "Test", "message": message}


def agentservice(status: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "svc", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    ("status", "expected", "message_part"),
    [
        (None, "Progressing", "Waiting for the operator"),
        ({"observedGeneration": 2, "conditions": [condition("Ready", "True")]}, "Progressing", "generation 3"),
        (
            {"observedGeneration": 3, "conditions": [condition("Ready", "True", "4/4 pods ready")]},
            "Healthy",
            "4/4 pods ready",
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [
                    condition("Ready", "False"),
                    condition("SpecInvalid", "True", "spec.autoscaling.maxReplicas: must be >= minReplicas (2)"),
                ],
            },
            "Degraded",
            "maxReplicas",
        ),
        (
            {"observedGeneration": 3, "conditions": [condition("SecretMissing", "True", "secret anthropic not found")]},
            "Degraded",
            "anthropic",
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [condition("ChildConflict", "True", "ConfigMap/demo-config already exists")],
            },
            "Degraded",
            "ConfigMap/demo-config",
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [condition("Ready", "True")],
                "canary": {"phase": "RolledBack", "weight": 0, "message": "error rate 0.31 > 0.05"},
            },
            "Degraded",
            "0.31 > 0.05",
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [condition("Ready", "True")],
                "canary": {"phase": "Paused", "weight": 10, "message": "too little traffic"},
            },
            "Suspended",
            "10%",
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [condition("Ready", "True")],
                "canary": {"phase": "Progressing", "weight": 50},
            },
            "Progressing",
            "50%",
        ),
        (
            {
                "observedGeneration": 3,
                "conditions": [condition("Ready", "True")],
                "canary": {"phase": "Promoted", "weight": 100},
            },
            "Healthy",
            "",
        ),
        (
            {"observedGeneration": 3, "conditions": [condition("Degraded", "True", "worker pods crash-looping")]},
            "Degraded",
            "crash-looping",
        ),
        (
            {"observedGeneration": 3, "conditions": [condition("Ready", "False", "1/4 pods ready")]},
            "Progressing",
            "1/4",
        ),
    ],
)
def test_health_status(status: dict[str, Any] | None, expected: str, message_part: str) -> None:
    health, message = run_health(agentservice(status))
    assert health == expected
    assert message_part in message


def test_gitops_doc_embeds_the_script_verbatim() -> None:
    doc = (ROOT / "docs" / "gitops.md").read_text()
    script = SCRIPT.read_text()
    indented = "\n".join(("    " + line) if line else "" for line in script.splitlines())
    assert indented in doc, "docs/gitops.md is stale: re-embed docs/argocd/agentservice-health.lua"

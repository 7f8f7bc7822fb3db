"""The operator's layers, read from its imports: no cycles, and a pure core that imports no I/O.

Covers: the import graph of `agent_operator` has no cycle; the API, the builders, object identity,
the canary state machine, its analysis, the layout of the tracks, the rollout history and the
budget status rules import nothing from the Kubernetes I/O (`kube/`), the Prometheus client, the
orchestration above them, nor any library that does I/O; nothing in `agent_operator` or
`agent_runtime` imports the development package (`agentops_dev`) at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "operator" / "agent_operator"
PURE = (
    "agent_operator.objects",
    "agent_operator.api.",
    "agent_operator.manifests.",
    "agent_operator.canary.machine",
    "agent_operator.canary.analysis",
    "agent_operator.canary.evaluation",
    "agent_operator.canary.tracks",
    "agent_operator.canary.rollouthistory",
    "agent_operator.budget",
    "agent_operator.policy",
)
IO = (
    "agent_operator.kube",
    "agent_operator.canary.prometheus",
    "agent_operator.canary.rollouts",
    "agent_operator.status",
    "agent_operator.budgetreport",
    "agent_operator.reconcile",
    "agent_operator.handlers",
    "agent_operator.run",
    "aiohttp",
    "kopf",
    "redis",
    "httpx",
    "anthropic",
    "prometheus_api_client",
    "kubernetes",
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module `path` imports (`from a import b` counts as `a.b`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path, PACKAGE.parent): path for path in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports(path) if i in modules} for name, path in modules.items()}


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != 1, " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_pure_core_imports_no_io() -> None:
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path, PACKAGE.parent)
        # A trailing dot names a whole package; otherwise one module (`budget`, not `budgetreport`).
        if not any(name == p or (p.endswith(".") and name.startswith(p)) for p in PURE):
            continue
        bad = {i for i in imports(path) if any(i == io or i.startswith(f"{io}.") for io in IO)}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_production_module_loads_the_development_package_at_import() -> None:
    for package in (PACKAGE, ROOT / "agent_runtime"):
        for path in package.rglob("*.py"):
            bad = {i for i in imports(path, top_level_only=True) if i.split(".")[0] == "agentops_dev"}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"

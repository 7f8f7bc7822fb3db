"""Fixtures of the plugin's tests: the dev cluster (over HTTP on loopback), a kubeconfig naming it,
and `plugin(...)`, which runs `kubectl agentservice` in-process (in a thread: the cluster serves
from this event loop) with a frozen clock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import io
from pathlib import Path

import pytest
from agent_operator.plugin import cli
from agentops_dev import devcluster

from tests.integration.operator.conftest import cluster  # noqa: F401 - the dev cluster fixture, shared
from tests.integration.operator.test_canary_rollout import op  # noqa: F401 - the canary operator fixture, shared

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: dev, cluster: {{server: "{url}"}}}}]
users: [{{name: dev, user: {{}}}}]
contexts:
  - {{name: dev, context: {{cluster: dev, user: dev, namespace: default}}}}
  - {{name: team-b, context: {{cluster: dev, user: dev, namespace: team-b}}}}
current-context: dev
"""


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def kubeconfig(cluster: tuple[devcluster.DevCluster, str], tmp_path: Path) -> Path:  # noqa: F811
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(url=cluster[1]))
    return path


async def plugin(kubeconfig: Path, *args: str, now: datetime.datetime | None = None) -> Result:
    """`kubectl agentservice --kubeconfig KUBECONFIG ARGS`, its exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    clock = (lambda: now) if now is not None else cli.utcnow
    code = await asyncio.to_thread(
        cli.main, ["--kubeconfig", str(kubeconfig), *args], now=clock, stdout=out, stderr=err
    )
    return Result(code, out.getvalue(), err.getvalue())

"""`kubectl agentservice get | list | history` output, compared with committed snapshots.

The dev cluster holds a service in the middle of a rollout (a failed analysis, one canary worker
not ready, two finished rollouts, Events, the day's spend against its daily budget) and one at rest
(no budget) in another namespace, all written over HTTP as the operator and the Deployment
controller would. Every time in them is relative to the service's creation, and the plugin's clock
is frozen at creation + 10.5 minutes, so the text is the same on every run. `UPDATE_SNAPSHOTS=1`
rewrites the files (review the diff).

Also covers the one-line errors (exit 1): not found, no rollout in progress, forbidden, an
unreachable cluster; and that `-n` and `--context` pick the namespace.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
from agent_operator.api import models
from agent_operator.plugin import views
from agentops_dev import devcluster

from tests.integration.operator.conftest import AGSVC, agent_service
from tests.integration.operator.plugin.conftest import plugin

SNAPSHOTS = Path(__file__).parent / "snapshots"
STABLE, CANARY, OLDER, REJECTED = "3b8e0c6f1a", "9d3e7b1c44", "0a1b2c3d4e", "7c2d9e4f10"
ERROR_QUERY = (
    'sum(rate(agent_requests_total{service="support-agent", namespace="default", track="canary", '
    'status="failed"}[2m])) / sum(rate(agent_requests_total{service="support-agent", namespace="default", '
    'track="canary", status=~"succeeded|failed"}[2m]))'
)
LATENCY_QUERY = (
    'histogram_quantile(0.95, sum by (le) (rate(agent_latency_seconds_bucket{service="support-agent", '
    'namespace="default", track="canary"}[2m])))'
)


def snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the snapshot (UPDATE_SNAPSHOTS=1 rewrites it)"


def at(base: datetime.datetime, minutes: float) -> str:
    return (base + datetime.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def patch_status(url: str, path: str, status: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.patch(
            f"{path}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        response.raise_for_status()


def deployment(name: str, service: str, replicas: int) -> dict[str, Any]:
    labels = {"app.kubernetes.io/instance": service, "app.kubernetes.io/managed-by": "agentservice-operator"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/instance": service}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/instance": service}}, "spec": {"containers": []}},
        },
    }


def event(
    svc: dict[str, Any], name: str, when: str, reason: str, message: str, *, type_: str = "Normal"
) -> dict[str, Any]:
    meta = svc["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "name": meta["name"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }


@pytest.fixture
async def world(cluster: tuple[devcluster.DevCluster, str]) -> datetime.datetime:
    """The objects of the snapshots; returns the frozen 'now'."""
    emulator, url = cluster
    tools = {
        "builtin": ["calculator"],
        "mcpServers": [
            {"name": "time", "url": "http://time.tools.svc:8000/mcp", "allowTools": ["get_current_time"]},
            {"name": "clock", "command": ["mcp-server-time"], "sideEffects": "none"},
        ],
    }
    body = agent_service(
        "support-agent", canary={"enabled": True, "steps": [10, 50, 100]}, budget={"dailyUSD": 5.0}, tools=tools
    )
    svc = await emulator.put_object(AGSVC, body)
    created = views.parse_time(svc["metadata"]["creationTimestamp"])
    assert created is not None
    canary = {
        "phase": "Progressing",
        "weight": 10,
        "actualWeight": 25,
        "stepIndex": 0,
        "stableRevision": STABLE,
        "canaryRevision": CANARY,
        "consecutiveFailures": 1,
        "totalFailures": 1,
        "message": "holding at weight 10, 1 of failureLimit 2 failed analyses: error-rate 0.12 > 0.05",
        "lastAnalysis": {
            "time": at(created, 8),
            "weight": 10,
            "verdict": "failure",
            "checks": [
                {
                    "name": "error-rate",
                    "query": ERROR_QUERY,
                    "value": 0.12,
                    "samples": 50,
                    "threshold": "<= 0.05",
                    "verdict": "failure",
                    "message": "canary error rate 0.12 > 0.05",
                },
                {
                    "name": "p95-latency",
                    "query": LATENCY_QUERY,
                    "value": 3.2,
                    "samples": 50,
                    "threshold": "<= 60",
                    "verdict": "success",
                },
            ],
        },
        "rollouts": [
            {
                "revision": STABLE,
                "stableRevision": OLDER,
                "outcome": "Promoted",
                "reason": "AnalysisPassed",
                "message": f"revision {STABLE} promoted: every step passed",
                "finishedTime": at(created, -180),
            },
            {
                "revision": REJECTED,
                "stableRevision": STABLE,
                "outcome": "RolledBack",
                "reason": "FailureLimitReached",
                "message": f"revision {REJECTED} rolled back, {STABLE} kept: 2 of failureLimit 2 failed analyses",
                "finishedTime": at(created, -30),
            },
        ],
    }
    conditions = [
        {
            "type": "Ready",
            "status": "True",
            "reason": "AllReplicasReady",
            "message": "6/7 pods ready",
            "lastTransitionTime": at(created, 1),
        },
        {
            "type": "Promoted",
            "status": "False",
            "reason": "RolloutProgressing",
            "message": canary["message"],
            "lastTransitionTime": at(created, 6),
        },
        {
            "type": "Paused",
            "status": "False",
            "reason": "NotPaused",
            "message": "",
            "lastTransitionTime": at(created, 6),
        },
        {
            "type": "AnalysisReady",
            "status": "True",
            "reason": "PrometheusConfigured",
            "message": "analyses query http://prometheus:9090",
            "lastTransitionTime": at(created, 6),
        },
    ]
    path = f"/apis/{AGSVC}".replace(models.PLURAL, f"namespaces/default/{models.PLURAL}") + "/support-agent"
    now = created + datetime.timedelta(minutes=10, seconds=30)
    budget = {
        "dailyUSD": 5.0,
        "day": now.strftime("%Y-%m-%d"),  # the frozen clock's UTC day: "today" on any day
        "spentTodayUSD": 1.25,
        "reservedUSD": 0.0125,
        "remainingUSD": 3.7375,
        "heldTasks": 2,
        "observedAt": at(created, 8),
    }
    status = {
        "phase": "Ready",
        "replicas": 7,
        "readyReplicas": 6,
        "revision": STABLE,
        "canary": canary,
        "conditions": conditions,
        "budget": budget,
    }
    await patch_status(url, path, status)
    for name, replicas, ready in (
        ("support-agent-api", 2, 2),
        ("support-agent-api-canary", 1, 1),
        ("support-agent-worker", 3, 3),
        ("support-agent-worker-canary", 1, 0),
    ):
        await emulator.put_object("apps/v1/deployments", deployment(name, "support-agent", replicas))
        await patch_status(
            url, f"/apis/apps/v1/namespaces/default/deployments/{name}", {"replicas": replicas, "readyReplicas": ready}
        )
    events = [
        event(
            svc,
            "support-agent.1",
            at(created, 6),
            "RolloutStarted",
            f"rollout started for revision {CANARY} at weight 10",
        ),
        event(
            svc,
            "support-agent.2",
            at(created, 8),
            "AnalysisFailed",
            "analysis at weight 10: failure; error-rate failure: 0.12 (threshold <= 0.05, 50 requests)",
            type_="Warning",
        ),
    ]
    for item in events:
        await emulator.put_object("v1/events", item)
    idle = agent_service("billing-agent", namespace="team-b")
    await emulator.put_object(AGSVC, idle)
    path_b = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/team-b/{models.PLURAL}/billing-agent"
    await patch_status(
        url,
        path_b,
        {
            "phase": "Ready",
            "replicas": 2,
            "readyReplicas": 2,
            "revision": OLDER,
            "canary": {"phase": "Idle", "stableRevision": OLDER},
        },
    )
    # 30 s of slack: billing-agent may be created a second after support-agent and must still read 10m
    return now


async def test_get_shows_the_rollout_replicas_analysis_conditions_and_events(
    world: datetime.datetime, kubeconfig: Path
) -> None:
    result = await plugin(kubeconfig, "get", "support-agent", now=world)
    assert (result.code, result.err) == (0, "")
    snapshot("get.txt", result.out)


async def test_list_and_list_all_namespaces(world: datetime.datetime, kubeconfig: Path) -> None:
    result = await plugin(kubeconfig, "list", now=world)
    assert (result.code, result.err) == (0, "")
    snapshot("list.txt", result.out)
    everywhere = await plugin(kubeconfig, "list", "-A", now=world)
    assert (everywhere.code, everywhere.err) == (0, "")
    snapshot("list-all-namespaces.txt", everywhere.out)


async def test_history(world: datetime.datetime, kubeconfig: Path) -> None:
    result = await plugin(kubeconfig, "history", "support-agent", now=world)
    assert (result.code, result.err) == (0, "")
    snapshot("history.txt", result.out)
    at_rest = await plugin(kubeconfig, "-n", "team-b", "history", "billing-agent", now=world)
    assert (at_rest.code, at_rest.out) == (0, "no finished rollouts recorded\n")


async def test_namespace_from_the_flag_or_the_context(world: datetime.datetime, kubeconfig: Path) -> None:
    by_flag = await plugin(kubeconfig, "list", "-n", "team-b", now=world)
    by_context = await plugin(kubeconfig, "--context", "team-b", "list", now=world)
    assert by_flag == by_context
    assert by_flag.out.splitlines()[1].split()[0] == "billing-agent"


async def test_errors_are_one_line_and_exit_1(world: datetime.datetime, kubeconfig: Path) -> None:
    cases = {
        ("get", "nobody"): 'error: agentservice "nobody" not found in namespace "default"\n',
        ("history", "nobody"): 'error: agentservice "nobody" not found in namespace "default"\n',
        ("-n", "team-b", "promote", "billing-agent"): (
            'error: agentservice "billing-agent" has no rollout in progress (rollout phase Idle)\n'
        ),
        ("-n", "team-b", "abort", "billing-agent"): (
            'error: agentservice "billing-agent" has no rollout in progress (rollout phase Idle)\n'
        ),
    }
    for args, expected in cases.items():
        result = await plugin(kubeconfig, *args, now=world)
        assert (result.code, result.out, result.err) == (1, "", expected), args


async def test_forbidden_is_one_line(
    world: datetime.datetime, cluster: tuple[devcluster.DevCluster, str], kubeconfig: Path
) -> None:
    emulator, _ = cluster
    message = 'agentservices.agentops.dev "support-agent" is forbidden: User "viewer" cannot get resource'
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
        "message": message,
    }
    emulator["get", kmock.resource(models.GROUP, models.VERSION, models.PLURAL)] << 403 << status
    result = await plugin(kubeconfig, "get", "support-agent", now=world)
    assert (result.code, result.out, result.err) == (1, "", f"error: forbidden: {message}\n")


async def test_an_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    from agentops_dev.localredis import free_port

    path = tmp_path / "kubeconfig"
    from tests.integration.operator.plugin.conftest import KUBECONFIG

    url = f"http://127.0.0.1:{free_port()}"
    path.write_text(KUBECONFIG.format(url=url))
    result = await plugin(path, "list")
    assert result.code == 1
    assert result.err.startswith(f"error: cannot reach the cluster at {url}: ")
    assert len(result.err.splitlines()) == 1


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mall good\x1b[0m\u202egnp.exe\r\nfake line\x9b"


async def test_tenant_strings_reach_the_terminal_without_control_characters(
    cluster: tuple[devcluster.DevCluster, str], kubeconfig: Path
) -> None:
    """Issue 27, point 9: terminal escape sequences (and bidi overrides) a tenant writes into a
    status message, a condition, an annotation or an Event never reach the admin's terminal."""
    emulator, url = cluster
    svc = await emulator.put_object(AGSVC, agent_service("hostile", canary={"enabled": True}))
    path = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/default/{models.PLURAL}/hostile"
    await patch_status(
        url,
        path,
        {
            "phase": "Progressing",
            "canary": {"phase": "Progressing", "weight": 10, "message": HOSTILE},
            "conditions": [{"type": "Ready", "status": "False", "reason": "X", "message": HOSTILE}],
        },
    )
    created = views.parse_time(svc["metadata"]["creationTimestamp"])
    assert created is not None
    await emulator.put_object("v1/events", event(svc, "hostile.1", at(created, 1), "Evil", HOSTILE, type_="Warning"))
    for args in (("get", "hostile"), ("list",), ("list", "-A"), ("history", "hostile")):
        result = await plugin(kubeconfig, *args, now=created + datetime.timedelta(minutes=2))
        assert result.code == 0, result.err
        printed = result.out + result.err
        assert not [c for c in printed if c != "\n" and (ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c == "\u202e")]
    shown = (await plugin(kubeconfig, "get", "hostile", now=created + datetime.timedelta(minutes=2))).out
    assert "?]0;owned??[2J?[31mall good?[0m?gnp.exe??fake line?" in shown

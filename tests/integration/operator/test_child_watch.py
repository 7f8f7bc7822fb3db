"""Drift repaired by the child watches, on the dev cluster, with a resync too long to help.

Covers, with the operator's resync interval at an hour (so that only the watches can act):
- a service becomes Ready from its Deployments' status, which only a watch delivers;
- a deleted Deployment and a deleted ConfigMap come back, with the same content;
- hand edits are reverted: a Deployment's replicas, image and an env var's value, a ConfigMap's
  data, a Service's port;
- a change the watch sees that needs no repair (an annotation someone adds to a Deployment) makes
  a reconcile and zero writes, and the operator's own writes after a repair do not keep it busy:
  over several seconds after the repair settled, no reconcile and no write;
- the operator's own writes come back as events and poke nobody: five services created at once
  are reconciled once each (kopf's create handler), with no child event counted;
- a service's children are known to prune from the watches, not from LISTs with its label selector
  (seven per new service, each a scan of the namespace for the API server): an operator restarted
  after autoscaling was turned off prunes the HPAs it finds through the watches, with no such LIST;
- the auth Secret is not watched (RBAC cannot narrow Secrets by label): its repair is the resync's
  (tests/integration/operator/test_reconcile.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from agent_operator import opmetrics
from agent_operator.kube import watch
from agent_operator.manifests import naming
from agentops_dev import devcluster

from tests.integration.operator.conftest import (
    Operator,
    agent_service,
    events,
    eventually,
    kopf_handled,
    quiet_and_ready,
    ready_service,
)

NO_RESYNC = 3600.0  # longer than any test: a repair seen here came through a watch
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def watched(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[Operator]:
    emulator, url = cluster
    handle = Operator(cluster=emulator, url=url, metrics=opmetrics.create())
    await handle.start(resync=NO_RESYNC)
    try:
        yield handle
    finally:
        await handle.halt()


def counter(op: Operator, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for metric in op.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == f"agentservice_operator_{name}" and labels.items() <= sample.labels.items()
    )


def operator_writes(op: Operator, mark: int) -> list[str]:
    """The operator's own write requests since `mark` (the test's edits are not its)."""
    return [
        f"{r.method} {r.resource.plural if r.resource else ''}/{r.name or ''} {r.subresource or ''}".rstrip()
        for r in op.cluster.writes(mark)
        if r.headers.get("User-Agent", "").startswith(naming.FIELD_MANAGER)
    ]


async def edit(op: Operator, path: str, patch: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.patch(op.url + path, json=patch, headers=MERGE)
        assert response.status == 200, await response.text()


async def delete(op: Operator, path: str) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.delete(op.url + path)
        assert response.status == 200, await response.text()


async def test_deleted_children_come_back_through_the_watch(watched: Operator) -> None:
    children = await ready_service(watched, agent_service())  # Ready: the Deployments' status came by watch
    worker, config = children["Deployment/demo-worker"], children["ConfigMap/demo-config"]
    events = counter(watched, "child_events_total", kind="Deployment")

    await delete(watched, "/apis/apps/v1/namespaces/default/deployments/demo-worker")
    await delete(watched, "/api/v1/namespaces/default/configmaps/demo-config")
    back = await eventually(
        lambda: (
            (c := watched.children())
            and c.get("Deployment/demo-worker", {}).get("metadata", {}).get("uid")
            not in (None, worker["metadata"]["uid"])
            and c.get("ConfigMap/demo-config", {}).get("metadata", {}).get("uid")
            not in (None, config["metadata"]["uid"])
            and c
        )
    )
    assert back["Deployment/demo-worker"]["spec"] == worker["spec"]
    assert back["ConfigMap/demo-config"]["data"] == config["data"]
    assert counter(watched, "child_events_total", kind="Deployment") > events


async def test_hand_edits_are_reverted_through_the_watch(watched: Operator) -> None:
    children = await ready_service(watched, agent_service(env=[{"name": "FEATURE_X", "value": "on"}]))
    api = children["Deployment/demo-api"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    port = children["Service/demo-api"]["spec"]["ports"]
    intruded = [{**container, "image": "intruder:latest", "env": [{"name": "FEATURE_X", "value": "off"}]}]
    await edit(
        watched,
        "/apis/apps/v1/namespaces/default/deployments/demo-api",
        {"spec": {"replicas": 9, "template": {"spec": {"containers": intruded}}}},
    )
    await edit(watched, "/api/v1/namespaces/default/configmaps/demo-config", {"data": {"config.json": "{}"}})
    await edit(
        watched, "/api/v1/namespaces/default/services/demo-api", {"spec": {"ports": [{**port[0], "port": 1234}]}}
    )

    def reverted() -> bool:
        now = watched.children()
        live = now["Deployment/demo-api"]["spec"]
        env = {e["name"]: e.get("value") for e in live["template"]["spec"]["containers"][0].get("env", [])}
        return (
            live["replicas"] == 2
            and live["template"]["spec"]["containers"][0]["image"] == container["image"]
            and env.get("FEATURE_X") == "on"
            and now["ConfigMap/demo-config"]["data"] == children["ConfigMap/demo-config"]["data"]
            and now["Service/demo-api"]["spec"]["ports"] == port
        )

    await eventually(reverted)


async def test_a_change_needing_no_repair_and_the_repairs_own_echo_write_nothing(watched: Operator) -> None:
    await ready_service(watched, agent_service())
    # Someone annotates a Deployment: the watch sees a change, the reconcile finds nothing to do.
    reconciles = counter(watched, "reconciles_total")
    mark = watched.cluster.request_count
    await edit(
        watched,
        "/apis/apps/v1/namespaces/default/deployments/demo-worker",
        {"metadata": {"annotations": {"example.com/owner-team": "search"}}},
    )
    await eventually(lambda: counter(watched, "reconciles_total") > reconciles)
    assert operator_writes(watched, mark) == []

    # A repair writes (the Deployment, then the status: not ready), the Deployment controller rolls
    # it out, the status goes Ready again with its Event; nothing follows.
    readied = len(events(watched, "Ready"))
    await delete(watched, "/apis/apps/v1/namespaces/default/deployments/demo-api")
    await eventually(lambda: watched.condition("Ready").get("status") == "False")
    await watched.cluster.simulate_rollouts("default")
    await eventually(lambda: len(events(watched, "Ready")) == readied + 1)
    await quiet_and_ready(watched)
    # The rollout's status events may have poked one more repair while the one that wrote Ready ran:
    # it runs a spacing later and writes nothing. Wait it out: a mark inside it would count it.
    await eventually(lambda: counter(watched, "repairs_pending") == 0)
    mark, reconciles = watched.cluster.request_count, counter(watched, "reconciles_total")
    await asyncio.sleep(3.0)  # several seconds of steady state: nothing may happen in them
    assert operator_writes(watched, mark) == []
    assert counter(watched, "reconciles_total") == reconciles


async def test_the_echoes_of_a_burst_of_creations_poke_nobody(watched: Operator) -> None:
    names = [f"burst-{i}" for i in range(5)]
    for name in names:
        await watched.put(agent_service(name=name))
    for name in names:  # every child applied, the status written (Progressing: no Deployment controller here)
        await eventually(lambda name=name: watched.status(name).get("phase") == "Progressing")
        await eventually(lambda name=name: kopf_handled(watched, name))
    await asyncio.sleep(2.0)  # a poke would have been reconciled within 0.1 s: nothing may come
    assert counter(watched, "child_events_total") == 0
    assert counter(watched, "reconciles_total") == len(names)  # kopf's create handler, once each


async def test_prune_finds_a_services_children_through_the_watches_not_lists(watched: Operator) -> None:
    hpa = {"autoscaling": {"enabled": True, "engine": "hpa", "minReplicas": 1, "maxReplicas": 4}}
    await ready_service(watched, agent_service(**hpa))
    assert any(k.startswith("HorizontalPodAutoscaler/") for k in watched.children())

    # Autoscaling turned off while the operator is down: the new one knows nothing of the HPAs yet.
    await watched.halt()
    await watched.put(agent_service(autoscaling={"enabled": False}))
    mark = watched.cluster.request_count
    await watched.start(resync=NO_RESYNC)
    await eventually(lambda: not any(k.startswith("HorizontalPodAutoscaler/") for k in watched.children()))

    requests = watched.cluster._requests[mark:]
    selected = [r for r in requests if r.method == "GET" and r.name is None and r.params.get("labelSelector")]
    assert selected, "the watches list with the managed-by selector"
    assert {r.params["labelSelector"] for r in selected} == {watch.SELECTOR}, "no LIST with the service's selector"

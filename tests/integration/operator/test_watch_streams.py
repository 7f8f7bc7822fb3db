"""The child watches (`kube.watch`) against the dev cluster, without the rest of the operator.

Covers: the API server selects the children (the watch carries the managed-by label selector, an
unlabelled object never arrives); a new, changed or deleted child pokes its controlling
AgentService, a change of status alone does not, except for Deployments (their status is
reported); the echo of the operator's own apply pokes nobody, a later change does; an object
without an AgentService controller pokes nothing; a child that loses the
label pokes its owner; a lost connection whose changes were compacted away (410) is listed
again, and exactly the owners of what changed meanwhile are poked; a kind the cluster does not
serve is logged once, retried quietly, and watched once it is served. What a stream says each
owner controls (`owned`, the prune inventory's source) follows the list and every change, is
unknown until the first list (`Children.owned` waits for it, then gives up) and empty for a kind
not served.

The pokes land in a queue in arrival order, so "this change poked nobody" is checked by making a
later change and seeing that its poke is the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
import pytest
import structlog
from agent_operator import opmetrics
from agent_operator.api import models
from agent_operator.kube import client as kube_client
from agent_operator.kube import watch
from agentops_dev import devcluster
from agentops_dev.waiting import eventually

HPAS = "autoscaling/v2/horizontalpodautoscalers"
CONFIGMAPS = "v1/configmaps"
DEPLOYMENTS = "apps/v1/deployments"
SCALEDOBJECTS = "keda.sh/v1alpha1/scaledobjects"


def kind_of(plural: str) -> watch.Kind:
    api_version, _, resource = plural.rpartition("/")
    (kind,) = (
        k
        for k in watch.WATCHED
        if k.api_version == api_version and kube_client.PLURALS[api_version, k.kind] == resource
    )
    return kind


def child(
    plural: str,
    name: str,
    owner: str | None,
    *,
    labelled: bool = True,
    controller: bool = True,
    namespace: str = "default",
    **body: Any,
) -> dict[str, Any]:
    api_version, _, _ = plural.rpartition("/")
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labelled:
        meta["labels"] = {"app.kubernetes.io/managed-by": "agentservice-operator"}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": owner,
                "uid": owner,
                "controller": controller,
            }
        ]
    return {"apiVersion": api_version, "kind": kind_of(plural).kind, "metadata": meta, **body}


class Watching:
    """One `watch.Stream` running against the dev cluster, its pokes in a queue."""

    def __init__(self, cluster: devcluster.DevCluster, url: str, plural: str, **options: Any) -> None:
        async def login() -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, default_namespace="default")

        self.cluster = cluster
        self.plural = plural
        self.metrics = opmetrics.create()
        self.client = kube_client.Client(login, self.metrics)
        self.pokes: asyncio.Queue[str] = asyncio.Queue()
        self.stream = watch.Stream(self.client, kind_of(plural), None, self.pokes.put_nowait, self.metrics, **options)
        self.task: asyncio.Task[None] | None = None

    def requests(self, *, watching: bool) -> list[Any]:
        """This resource's list (or watch) requests so far."""
        return [
            r
            for r in self.cluster._requests
            if r.resource == kmock.resource(self.plural)
            and r.method == "GET"
            and r.name is None
            and (r.params.get("watch") == "true") == watching
        ]

    async def start(self) -> None:
        self.task = asyncio.create_task(self.stream.run_forever())
        await eventually(lambda: self.requests(watching=True))  # listed, and watching

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.client.close()

    async def next_poke(self) -> str:
        return await asyncio.wait_for(self.pokes.get(), timeout=10)

    def events(self) -> float:
        return sum(s.value for m in self.metrics.registry.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.fixture
async def watching(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[Any]:
    started: list[Watching] = []

    async def start(plural: str, **options: Any) -> Watching:
        handle = Watching(*cluster, plural, **options)
        started.append(handle)
        await handle.start()
        return handle

    try:
        yield start
    finally:
        for handle in started:
            await handle.stop()


async def patch_status(cluster: devcluster.DevCluster, plural: str, name: str, status: dict[str, Any]) -> None:
    live = cluster.live(plural, "default", name)
    assert live is not None
    key = (kmock.resource(plural), "default", name)
    async with cluster._lock:
        await cluster._update(key, live, {**live, "status": status}, subresource="status")


async def test_changes_poke_the_owner_and_a_status_alone_does_not(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    w = await watching(HPAS)
    assert w.requests(watching=True)[0].params["labelSelector"] == watch.SELECTOR  # selected by the server

    await emulator.put_object(HPAS, child(HPAS, "a-worker", "uid-a", spec={"maxReplicas": 3}))
    assert await w.next_poke() == "uid-a"  # new
    await patch_status(emulator, HPAS, "a-worker", {"currentReplicas": 2})  # the HPA controller's own field
    await emulator.put_object(HPAS, child(HPAS, "a-worker", "uid-a", spec={"maxReplicas": 9}))
    assert await w.next_poke() == "uid-a"  # the spec edit; the status change before it poked nobody

    # Not an AgentService's child: labelled but without a controller reference, or not labelled at all.
    await emulator.put_object(HPAS, child(HPAS, "loose", "uid-x", controller=False, spec={"maxReplicas": 1}))
    await emulator.put_object(HPAS, child(HPAS, "unlabelled", "uid-y", labelled=False, spec={"maxReplicas": 1}))
    await emulator.delete_object(HPAS, "default", "unlabelled")
    await emulator.delete_object(HPAS, "default", "a-worker")
    assert await w.next_poke() == "uid-a"  # deleted; nothing before it

    # Losing the label is leaving the selection: the API server reports it as deleted.
    await emulator.put_object(HPAS, child(HPAS, "b-worker", "uid-b", spec={"maxReplicas": 3}))
    assert await w.next_poke() == "uid-b"
    await emulator.put_object(HPAS, child(HPAS, "b-worker", "uid-b", labelled=False, spec={"maxReplicas": 3}))
    assert await w.next_poke() == "uid-b"
    assert w.pokes.empty()


async def test_the_echo_of_an_own_apply_pokes_nobody_and_a_later_change_does(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    w = await watching(CONFIGMAPS)
    await w.client.apply(child(CONFIGMAPS, "a-config", "uid-a", data={"k": "1"}))  # the operator's own write
    await emulator.put_object(CONFIGMAPS, child(CONFIGMAPS, "b-config", "uid-b", data={"k": "1"}))
    assert await w.next_poke() == "uid-b"  # nothing before it: the apply's echo poked nobody
    await emulator.put_object(CONFIGMAPS, child(CONFIGMAPS, "a-config", "uid-a", data={"k": "2"}))
    assert await w.next_poke() == "uid-a"  # someone else's change after it does
    assert w.pokes.empty()


async def test_a_deployments_status_pokes_its_owner(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    await emulator.put_object(DEPLOYMENTS, child(DEPLOYMENTS, "a-api", "uid-a", spec={"replicas": 1}))
    w = await watching(DEPLOYMENTS)  # listed with the Deployment already there: no poke for it
    await patch_status(emulator, DEPLOYMENTS, "a-api", {"readyReplicas": 1})
    assert await w.next_poke() == "uid-a"  # the AgentService reports its Deployments' status
    assert w.pokes.empty()


async def test_a_compacted_gap_is_listed_again_and_pokes_exactly_what_changed(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    for name, owner in (("a-config", "uid-a"), ("b-config", "uid-b"), ("c-config", "uid-c")):
        await emulator.put_object(CONFIGMAPS, child(CONFIGMAPS, name, owner, data={"k": "1"}))
    w = await watching(CONFIGMAPS)
    assert len(w.requests(watching=False)) == 1

    # The connection is lost; meanwhile one child goes, one changes, and the history is compacted.
    async with emulator.watch_gap(CONFIGMAPS):
        await emulator.delete_object(CONFIGMAPS, "default", "a-config")
        await emulator.put_object(CONFIGMAPS, child(CONFIGMAPS, "b-config", "uid-b", data={"k": "2"}))

    assert {await w.next_poke(), await w.next_poke()} == {"uid-a", "uid-b"}
    assert len(w.requests(watching=False)) == 2  # 410 on resuming: listed again
    await emulator.put_object(CONFIGMAPS, child(CONFIGMAPS, "c-config", "uid-c", data={"k": "3"}))
    assert await w.next_poke() == "uid-c"  # watching again; c was not poked by the list
    assert w.pokes.empty()


async def test_an_ended_watch_resumes_without_listing(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    w = await watching(CONFIGMAPS)
    await emulator.end_watches(CONFIGMAPS)  # the API server's timeout
    await eventually(lambda: len(w.requests(watching=True)) == 2)
    await emulator.put_object(CONFIGMAPS, child(CONFIGMAPS, "a-config", "uid-a", data={"k": "1"}))
    assert await w.next_poke() == "uid-a"
    assert len(w.requests(watching=False)) == 1


async def test_a_kind_not_served_is_skipped_quietly_and_watched_once_served(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    resource = kmock.resource(SCALEDOBJECTS)
    info = emulator.resources[resource]
    del emulator.resources[resource]  # KEDA's CRD is not installed
    handle = Watching(emulator, cluster[1], SCALEDOBJECTS, unserved_retry=0.05)
    try:
        with structlog.testing.capture_logs() as logs:
            handle.task = asyncio.create_task(handle.stream.run_forever())
            await eventually(lambda: len(handle.requests(watching=False)) >= 5)  # tried again, and again
            assert handle.stream.owned("uid-a", "default") == frozenset()  # not served: no objects of the kind
            emulator.resources[resource] = info  # installed
            await eventually(lambda: handle.requests(watching=True))
            await emulator.put_object(SCALEDOBJECTS, child(SCALEDOBJECTS, "a-worker", "uid-a", spec={}))
            assert await handle.next_poke() == "uid-a"
            assert handle.stream.owned("uid-a", "default") == {"a-worker"}
    finally:
        await handle.stop()
    said = [(e["log_level"], e["event"]) for e in logs]
    assert said == [("info", "child_watch_not_served"), ("info", "child_watch_running")], said


async def test_owned_follows_the_list_and_every_change(cluster: Any, watching: Any) -> None:
    emulator, _ = cluster
    await emulator.put_object(HPAS, child(HPAS, "a-worker", "uid-a", spec={}))
    await emulator.put_object(HPAS, child(HPAS, "a-loose", "uid-a", controller=False, spec={}))
    w = await watching(HPAS)
    assert w.stream.owned("uid-a", "default") == {
        "a-worker"
    }  # from the list; a reference not the controller's owns nothing

    await emulator.put_object(HPAS, child(HPAS, "a-api", "uid-a", spec={}))
    assert await w.next_poke() == "uid-a"
    assert w.stream.owned("uid-a", "default") == {"a-worker", "a-api"}
    await emulator.put_object(HPAS, child(HPAS, "a-api", "uid-b", spec={}))  # the controller changes hands
    assert {await w.next_poke(), await w.next_poke()} == {"uid-a", "uid-b"}
    assert (w.stream.owned("uid-a", "default"), w.stream.owned("uid-b", "default")) == ({"a-worker"}, {"a-api"})
    await emulator.delete_object(HPAS, "default", "a-worker")
    assert await w.next_poke() == "uid-a"
    assert w.stream.owned("uid-a", "default") == frozenset()
    await emulator.put_object(HPAS, child(HPAS, "a-api", "uid-b", labelled=False, spec={}))  # leaves the selection
    assert await w.next_poke() == "uid-b"
    assert w.stream.owned("uid-b", "default") == frozenset()

    # A gap: what the list after it finds replaces what the stream knew.
    async with emulator.watch_gap(HPAS):
        await emulator.put_object(HPAS, child(HPAS, "c-worker", "uid-c", spec={}))
    assert await w.next_poke() == "uid-c"
    assert w.stream.owned("uid-c", "default") == {"c-worker"}


async def test_a_forged_owner_reference_in_another_namespace_owns_nothing_in_the_owners(
    cluster: Any, watching: Any
) -> None:
    """Issue 27, point 3: a child is an owner's only in its own namespace. The attacker's object names
    the victim's uid as its controller and the victim's unowned object's name; it never enters the
    victim's inventory, neither from the list nor from a watch event."""
    emulator, _ = cluster
    await emulator.put_object(HPAS, child(HPAS, "victim-worker", "uid-a", spec={}))
    await emulator.put_object(HPAS, child(HPAS, "precious", "uid-a", namespace="attacker", spec={}))
    w = await watching(HPAS)
    assert w.stream.owned("uid-a", "default") == {"victim-worker"}
    assert w.stream.owned("uid-a", "attacker") == {"precious"}  # its own namespace's business only
    await emulator.put_object(HPAS, child(HPAS, "also-precious", "uid-a", namespace="attacker", spec={}))
    assert await w.next_poke() == "uid-a"
    assert w.stream.owned("uid-a", "default") == {"victim-worker"}
    await emulator.delete_object(HPAS, "attacker", "precious")
    assert await w.next_poke() == "uid-a"
    assert w.stream.owned("uid-a", "attacker") == {"also-precious"}
    assert w.stream.owned("uid-a", "default") == {"victim-worker"}


async def test_children_owned_waits_for_the_first_list_then_gives_up(cluster: Any) -> None:
    emulator, url = cluster
    await emulator.put_object(HPAS, child(HPAS, "a-worker", "uid-a", spec={}))

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    api = kube_client.Client(login, opmetrics.create())
    hpa = ("autoscaling/v2", "HorizontalPodAutoscaler", "default", "uid-a")
    try:
        # Never listed (not started): unknown once the wait is over; a kind no stream covers: unknown.
        idle = watch.Children(api, lambda _: None, opmetrics.create(), kinds=[kind_of(HPAS)], sync_wait=0.05)
        assert await idle.owned(*hpa) is None
        assert await idle.owned("v1", "ConfigMap", "default", "uid-a") is None

        # Asked before the first list: the answer comes when the list lands.
        children = watch.Children(api, lambda _: None, opmetrics.create(), kinds=[kind_of(HPAS)])
        asking = asyncio.create_task(children.owned(*hpa))
        await asyncio.sleep(0)  # the question is asked first
        assert not asking.done()
        running = asyncio.create_task(children.run_forever())
        try:
            assert await asyncio.wait_for(asking, 10) == {"a-worker"}
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running

        # A first list that fails: unknown as soon as it has failed, not after the whole wait.
        emulator["list", kmock.resource(HPAS)] << 500
        failing = watch.Children(api, lambda _: None, opmetrics.create(), kinds=[kind_of(HPAS)], sync_wait=3600)
        running = asyncio.create_task(failing.run_forever())
        try:
            assert await asyncio.wait_for(failing.owned(*hpa), 10) is None
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    finally:
        await api.close()


async def test_a_silent_watch_call_ends_instead_of_failing(cluster: Any) -> None:
    _, url = cluster

    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    api = kube_client.Client(login, opmetrics.create())
    try:
        params = {"watch": "true", "resourceVersion": "1", "labelSelector": watch.SELECTOR}
        events = [e async for e in api.stream("/api/v1/configmaps", params, read_timeout=0.3)]
    finally:
        await api.close()
    assert events == []  # the dev cluster never ends a watch itself: the silence did, without an error

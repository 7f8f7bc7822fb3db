"""The operator writes only its own children, on the dev cluster with the real operator.

Covers:
- an unowned ConfigMap and Secret that carry a child's name (the runtime config and the auth
  Secret) exist before the AgentService: neither is written (no request to them, same
  resourceVersion and data, no ownerReference added); the condition `ChildConflict` is True
  naming kind and name, Ready is False with reason ChildConflict, a Warning Event says the same;
  the pods, which would consume those objects, are not rolled out; the other children are;
- deleting the AgentService garbage-collects its own children and leaves the foreign objects
  exactly as they were;
- an object controlled by another owner is a conflict too; once the foreign object is removed the
  operator creates its own and the service becomes Ready by itself, nobody touching the spec;
- a forged controller ownerReference in another namespace never prunes anything in the owner's
  namespace (issue 27), and every prune delete re-reads, re-checks the controller and carries the
  uid and resourceVersion it read as preconditions (a 409 when the object changed meanwhile).
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from agent_operator import opmetrics
from agent_operator.api import models
from agent_operator.kube import prune
from agentops_dev import devcluster

from tests.integration.operator.conftest import (
    AGSVC,
    Operator,
    agent_service,
    direct_client,
    events,
    eventually,
)


def config_map(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", **extra},
        "data": {"owner": "someone else", "config.json": '{"theirs": true}'},
    }


def auth_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "demo-auth", "namespace": "default"},
        "data": {"token": base64.b64encode(b"their-token").decode()},
    }


def live(op: Operator, plural: str, name: str) -> dict[str, Any] | None:
    return op.cluster.live(plural, "default", name)


def writes_to(op: Operator, mark: int, plural: str, name: str) -> list[Any]:
    return [
        r for r in op.cluster.writes(mark) if r.resource is not None and r.resource.plural == plural and r.name == name
    ]


async def test_foreign_objects_are_left_alone_and_survive_deletion(operator: Operator) -> None:
    foreign_config = await operator.cluster.put_object("v1/configmaps", config_map("demo-config"))
    foreign_secret = await operator.cluster.put_object("v1/secrets", auth_secret())
    before = {"config": copy.deepcopy(foreign_config), "secret": copy.deepcopy(foreign_secret)}
    mark = operator.cluster.request_count
    await operator.put(agent_service())

    conflict = await eventually(lambda: (c := operator.condition("ChildConflict")).get("status") == "True" and c)
    assert conflict["reason"] == "ChildConflict"
    assert "ConfigMap/demo-config" in conflict["message"] and "Secret/demo-auth" in conflict["message"]
    ready = operator.condition("Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildConflict")
    assert operator.status()["phase"] == "Degraded"
    warning = (await eventually(lambda: events(operator, "ChildConflict")))[0]
    assert warning["type"] == "Warning" and "ConfigMap/demo-config" in warning["message"]

    # the rest of the service is in place, but no pod would run on someone else's config or token
    await eventually(lambda: "Service/demo-api" in operator.children())
    await operator.settle(passes=3)
    assert not [k for k in operator.children() if k.startswith("Deployment/")]
    assert writes_to(operator, mark, "configmaps", "demo-config") == []
    assert writes_to(operator, mark, "secrets", "demo-auth") == []
    assert live(operator, "v1/configmaps", "demo-config") == before["config"]
    assert live(operator, "v1/secrets", "demo-auth") == before["secret"]

    await operator.cluster.delete_object(AGSVC, "default", "demo")
    await eventually(lambda: operator.service() is None)
    await eventually(lambda: "Service/demo-api" not in operator.children())  # its own children are gone
    assert live(operator, "v1/configmaps", "demo-config") == before["config"]
    assert live(operator, "v1/secrets", "demo-auth") == before["secret"]


async def test_a_conflict_clears_by_itself_once_the_object_is_gone(operator: Operator) -> None:
    other_owner = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "someone",
        "uid": "0c1f0a4e-0000-4000-8000-000000000001",
        "controller": True,
    }
    dashboard = await operator.cluster.put_object(
        "v1/configmaps", config_map("demo-dashboard", ownerReferences=[other_owner])
    )
    await operator.put(agent_service())
    conflict = await eventually(lambda: (c := operator.condition("ChildConflict")).get("status") == "True" and c)
    assert "ConfigMap/demo-dashboard" in conflict["message"]
    # not a pod input: the workloads roll out, the foreign dashboard stays as it is
    await eventually(lambda: len([k for k in operator.children() if k.startswith("Deployment/")]) == 2)
    await operator.cluster.simulate_rollouts()
    assert live(operator, "v1/configmaps", "demo-dashboard") == dashboard
    assert operator.condition("Ready")["reason"] == "ChildConflict"

    await operator.cluster.delete_object("v1/configmaps", "default", "demo-dashboard")
    await eventually(lambda: operator.condition("ChildConflict").get("status") == "False")
    await eventually(lambda: operator.status().get("phase") == "Ready")
    ours = live(operator, "v1/configmaps", "demo-dashboard")
    owner = operator.service()
    assert ours is not None and owner is not None
    assert ours["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert ours["metadata"]["ownerReferences"][0]["kind"] == models.KIND


NETPOLS = "networking.k8s.io/v1/networkpolicies"


def network_policy(name: str, namespace: str, owner_uid: str | None = None, **metadata: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, **metadata}
    if owner_uid is not None:
        meta["labels"] = {"app.kubernetes.io/managed-by": "agentservice-operator", "app.kubernetes.io/instance": "demo"}
        meta["ownerReferences"] = [
            {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "name": "demo",
                "uid": owner_uid,
                "controller": True,
            }
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


async def test_a_forged_owner_reference_in_another_namespace_prunes_nothing(operator: Operator) -> None:
    """Issue 27, point 3: the attacker's NetworkPolicy, in its own namespace, names the victim's uid as
    controller and an unowned object of the victim's namespace; after an operator restart (the prune
    inventory established anew from the watches) and a reconcile of the victim, that object stands."""
    await operator.put(agent_service())
    await eventually(lambda: "Service/demo-api" in operator.children())
    victim = operator.service()
    assert victim is not None
    precious = await operator.cluster.put_object(NETPOLS, network_policy("precious", "default"))
    await operator.halt()
    await operator.cluster.put_object(NETPOLS, network_policy("precious", "attacker", victim["metadata"]["uid"]))
    changed = copy.deepcopy(victim)
    changed["spec"]["worker"]["replicas"] = 1
    generation = (await operator.put(changed))["metadata"]["generation"]
    mark = operator.cluster.request_count
    await operator.start()
    await eventually(lambda: operator.status().get("observedGeneration") == generation)
    assert operator.cluster.live(NETPOLS, "default", "precious") == precious
    assert [r for r in operator.cluster.writes(mark) if r.method == "DELETE"] == []


async def test_prune_reads_again_and_deletes_only_what_it_read_as_the_owners(
    cluster: tuple[devcluster.DevCluster, str],
) -> None:
    """Each prune delete re-reads the object, re-checks its controller, and carries the uid and
    resourceVersion it read as preconditions; an inventory naming another's object deletes nothing."""
    emulator, url = cluster
    owner = {"metadata": {"name": "demo", "namespace": "default", "uid": "uid-a"}}
    mine = await emulator.put_object(NETPOLS, network_policy("demo-old", "default", "uid-a"))
    theirs = await emulator.put_object(NETPOLS, network_policy("demo-stale", "default", "uid-b"))

    async def watched(api_version: str, kind: str, namespace: str, uid: str) -> frozenset[str]:
        # As a stale inventory would: it still names an object whose controller changed hands.
        return frozenset({"demo-old", "demo-stale"}) if kind == "NetworkPolicy" else frozenset()

    inventory = prune.Inventory()
    inventory.follow(watched)
    async with direct_client(url, opmetrics.create()) as client:
        mark = emulator.request_count
        deleted = await prune.prune(client, inventory, owner, desired=[], named=[], present=[], selector={})
    assert [ref.name for ref in deleted] == ["demo-old"]
    assert emulator.live(NETPOLS, "default", "demo-stale") == theirs
    (delete,) = [r for r in emulator.writes(mark) if r.method == "DELETE"]
    assert delete.name == "demo-old"
    assert delete.data["preconditions"] == {
        "uid": mine["metadata"]["uid"],
        "resourceVersion": mine["metadata"]["resourceVersion"],
    }


async def test_a_delete_whose_object_changed_since_it_was_read_is_refused(
    cluster: tuple[devcluster.DevCluster, str],
) -> None:
    emulator, url = cluster
    read = await emulator.put_object(NETPOLS, network_policy("demo-old", "default", "uid-a"))
    await emulator.put_object(NETPOLS, network_policy("demo-old", "default", "uid-b"))  # changed hands since
    async with direct_client(url, opmetrics.create()) as client:
        meta = read["metadata"]
        gone = await client.delete(
            "networking.k8s.io/v1", "NetworkPolicy", "default", "demo-old",
            uid=meta["uid"], resource_version=meta["resourceVersion"],
        )  # fmt: skip
    assert gone is False
    assert emulator.live(NETPOLS, "default", "demo-old") is not None

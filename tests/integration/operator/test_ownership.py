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
  operator creates its own and the service becomes Ready by itself, nobody touching the spec.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from agent_operator.api import models

from tests.integration.operator.conftest import AGSVC, Operator, agent_service, events, eventually


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

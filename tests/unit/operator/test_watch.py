"""The child watches' pure parts and their place in the RBAC rules.

Covers: every kind the builders emit is either watched or named as not watched, with the reason
(Secrets); the generated rules grant list and watch on exactly the watched kinds, and never on
Secrets; `owner_of` finds only an AgentService controller; the fingerprint ignores what the API
server moves by itself, ignores the status except for the kinds the AgentService reports on, and is
the same for a list item (no apiVersion or kind) and the watch event of the same object.
"""

from __future__ import annotations

import copy
from typing import Any

from agent_operator import rbac
from agent_operator.api import models
from agent_operator.kube import client, watch


def test_every_child_kind_is_watched_or_says_why_not() -> None:
    watched = {(k.api_version, k.kind) for k in watch.WATCHED}
    assert watched.isdisjoint(watch.UNWATCHED)
    assert rbac.child_kinds() == watched | set(watch.UNWATCHED)
    assert set(watch.UNWATCHED) == {("v1", "Secret")}


def test_rules_grant_list_and_watch_on_the_watched_kinds_only() -> None:
    document = rbac.rules_document()
    for kind in watch.WATCHED:
        group, resource = kind.api_version.rpartition("/")[0], client.PLURALS[kind.api_version, kind.kind]
        assert rbac.allows(document, group, resource, "list"), kind
        assert rbac.allows(document, group, resource, "watch"), kind
    assert not rbac.allows(document, "", "secrets", "list")
    assert not rbac.allows(document, "", "secrets", "watch")


def ref(**fields: Any) -> dict[str, Any]:
    base = {"apiVersion": models.API_VERSION, "kind": models.KIND, "name": "demo", "uid": "u-1", "controller": True}
    return {**base, **fields}


def test_owner_is_an_agentservice_controller() -> None:
    def owner(*refs: dict[str, Any]) -> str | None:
        return watch.owner_of({"metadata": {"ownerReferences": list(refs)}})

    assert owner(ref()) == "u-1"
    assert owner(ref(controller=False)) is None
    assert owner(ref(kind="ReplicaSet")) is None
    assert owner(ref(apiVersion="other.example/v1")) is None
    assert owner(ref(controller=False), ref(uid="u-2")) == "u-2"
    assert watch.owner_of({"metadata": {}}) is None


DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "demo-api", "uid": "d-1", "resourceVersion": "7", "managedFields": [{"manager": "a"}]},
    "spec": {"replicas": 2},
    "status": {"readyReplicas": 1},
}


def changed(edit: Any, *, with_status: bool) -> bool:
    after = copy.deepcopy(DEPLOYMENT)
    edit(after)
    return watch.fingerprint(after, with_status=with_status) != watch.fingerprint(DEPLOYMENT, with_status=with_status)


def test_fingerprint_moves_with_what_a_repair_may_need() -> None:
    def moved(a: dict[str, Any]) -> None:
        a["metadata"].update(resourceVersion="8", managedFields=[{"manager": "b"}])

    assert not changed(moved, with_status=True)
    assert changed(lambda a: a["spec"].update(replicas=9), with_status=False)
    assert changed(lambda a: a["metadata"].update(labels={"x": "y"}), with_status=False)
    assert changed(lambda a: a["metadata"].update(ownerReferences=[ref()]), with_status=False)
    assert not changed(lambda a: a["status"].update(readyReplicas=2), with_status=False)
    assert changed(lambda a: a["status"].update(readyReplicas=2), with_status=True)
    item = {k: v for k, v in DEPLOYMENT.items() if k not in ("apiVersion", "kind")}  # as in a list
    assert watch.fingerprint(item, with_status=True) == watch.fingerprint(DEPLOYMENT, with_status=True)

"""Prune: delete the owned children a spec no longer wants, and the canary track's objects at rest.

Deployments are never pruned because the spec stopped wanting them: the canary plan decides when
the canary track goes (`remove=`). A Deployment or Service the operator owns under a name the
naming rule no longer gives (an upgrade that shortens long names, manifests/naming.py) is a
leftover, though, and is deleted: two worker Deployments must not both consume the queue.
Nothing someone else controls is ever deleted: each delete reads the object first, re-checks that
its controller ownerReference is this AgentService's uid, and carries the uid and resourceVersion
it read as preconditions, so the API server refuses it if the object was replaced or changed
meanwhile. The inventory is keyed by namespace and owner, and only ever names objects of the
owner's own namespace: an ownerReference is written by whoever writes the object, so one in another
namespace that names this owner's uid (owner references never cross namespaces) is a forgery, and
never makes the operator touch the owner's namespace (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Final

import structlog
from agent_operator import objects
from agent_operator.kube.client import Client
from agent_operator.objects import ObjectRef

log = structlog.get_logger(__name__)

# Children that a spec change can make unwanted (autoscaling off, engine switched, budgets or policy
# or alerts disabled); they are deleted when owned and no longer desired.
PRUNABLE: Final = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
)
# Children that every spec has, but whose names can change with the naming rule; deleted when owned
# and named as no child of this AgentService is (neither track), never because of the spec.
RENAMEABLE: Final = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
)
LISTED: Final = PRUNABLE + RENAMEABLE


# (api_version, kind, namespace, owner uid) -> the names of the owner's children of that kind as the
# child watches know them, or None when they cannot say (not listed in time): `watch.Children.owned`.
Watched = Callable[[str, str, str, str], Awaitable[Collection[str] | None]]


class Inventory:
    """The prunable and renameable children known to exist, per owner uid, once established.

    The first prune of an owner after start-up establishes each of those kinds: from the child
    watches when they have listed that kind (`follow`), else by a LIST with the owner's label
    selector. From then on the inventory follows what apply found or wrote, so a resync pass over
    N services costs no LIST calls. The watches matter at scale: each LIST costs the API server a
    scan of every object of the kind in the namespace, seven per new service.
    """

    def __init__(self) -> None:
        # By owner uid, with the owner's namespace: only ever names objects of that namespace, and an
        # entry is used only for an owner of the same (namespace, uid).
        self._known: dict[str, tuple[str, set[ObjectRef]]] = {}
        self._watched: Watched | None = None  # set by `follow`

    def follow(self, watched: Watched) -> None:
        """Establish new owners from the child watches (`watch.Children.owned`) from now on."""
        self._watched = watched

    def forget(self, owner_uid: str) -> None:
        """Drop what is known about an owner's children (the owner was deleted)."""
        self._known.pop(owner_uid, None)

    async def known(
        self, client: Client, owner: Mapping[str, Any], present: Sequence[ObjectRef], selector: Mapping[str, str]
    ) -> set[ObjectRef]:
        """The owner's prunable and renameable children: listed once, then kept up to date from `present`."""
        meta = owner["metadata"]
        uid, namespace = str(meta.get("uid")), str(meta["namespace"])
        entry = self._known.get(uid)
        known = entry[1] if entry is not None and entry[0] == namespace else None
        if known is not None:
            known.update(ref for ref in present if (ref.api_version, ref.kind) in LISTED and ref.namespace == namespace)
            return known
        known = set()
        for api_version, kind in LISTED:
            names = await self._watched(api_version, kind, namespace, uid) if self._watched is not None else None
            if names is None:
                names = [
                    obj["metadata"]["name"]
                    for obj in await client.list_objects(api_version, kind, namespace, selector=selector)
                    if objects.owned_by(obj, meta.get("uid"))  # never someone else's object
                ]
            known.update(ObjectRef(api_version, kind, namespace, name) for name in names)
        self._known[uid] = (namespace, known)
        return known


async def prune(
    client: Client,
    inventory: Inventory,
    owner: Mapping[str, Any],
    *,
    desired: Sequence[ObjectRef],
    named: Sequence[ObjectRef],
    present: Sequence[ObjectRef],
    selector: Mapping[str, str],
    remove: Sequence[ObjectRef] = (),
    live: Mapping[ObjectRef, Any] | None = None,
) -> tuple[ObjectRef, ...]:
    """Delete owned children of the prunable kinds that are not `desired`, and of the renameable
    kinds that are not `named`, then `remove`; return them.

    `named`: every child the builders name for this AgentService, both tracks (`Desired.refs` and
    `Desired.canary_refs`). `present`: the desired children that apply found or wrote (they exist
    now). `remove`: objects to delete when the owner controls them as read in `live` (the canary
    track at rest).
    """
    known = await inventory.known(client, owner, present, selector)
    wanted, names = set(desired), set(named)
    deleted = []
    for ref in sorted(known):
        kind = (ref.api_version, ref.kind)
        if (kind in PRUNABLE and ref in wanted) or (kind in RENAMEABLE and ref in names):
            continue
        found = await client.get(ref.api_version, ref.kind, ref.namespace, ref.name)
        outcome = await _delete_owned(client, owner, ref, found)
        if outcome is not False:  # deleted, or not ours to delete: either way no longer this owner's child
            known.discard(ref)
        if outcome:
            deleted.append(ref)
    return tuple(deleted) + await _remove(client, owner, remove, live or {})


async def _delete_owned(
    client: Client, owner: Mapping[str, Any], ref: ObjectRef, obj: Mapping[str, Any] | None
) -> bool | None:
    """Delete `obj` (as read, named `ref`) when it is in the owner's namespace and the owner controls
    it: True when deleted, None when it is absent or not the owner's, False when the API server
    refused the preconditions (replaced or changed since it was read: the next pass reads it again).
    """
    meta = owner["metadata"]
    if obj is None or ref.namespace != meta.get("namespace") or not objects.owned_by(obj, meta.get("uid")):
        if obj is not None:
            log.debug("prune_skipped_not_owned", child=ref.key, namespace=ref.namespace)
        return None
    found = obj.get("metadata", {})
    log.info("prune", child=ref.key)
    done = await client.delete(
        ref.api_version,
        ref.kind,
        ref.namespace,
        ref.name,
        uid=str(found.get("uid", "")),
        resource_version=str(found.get("resourceVersion", "")),
    )
    return done


async def _remove(
    client: Client, owner: Mapping[str, Any], refs: Sequence[ObjectRef], live: Mapping[ObjectRef, Any]
) -> tuple[ObjectRef, ...]:
    """Delete each of `refs` that the owner controls (as read in `live`); return those deleted."""
    deleted = []
    for ref in refs:
        if await _delete_owned(client, owner, ref, live.get(ref)):
            deleted.append(ref)
    return tuple(deleted)

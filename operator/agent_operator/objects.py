"""Object identity: one spelling of "which Kubernetes object"; what the operator reads off a live object.

Whether an AgentService controls it, and a Deployment's roll-out state (its controller's own fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True, order=True)
class ObjectRef:
    """An object by apiVersion, kind, namespace and name."""

    api_version: str
    kind: str
    namespace: str | None
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ObjectRef:
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])

    @property
    def key(self) -> str:
        """`Kind/name`: unique among one AgentService's children, and what Events and conditions name."""
        return f"{self.kind}/{self.name}"

    def __str__(self) -> str:
        return self.key


def owned_by(obj: Mapping[str, Any] | None, owner_uid: str | None) -> bool:
    """Whether `obj` carries a controller ownerReference to the object with `owner_uid`."""
    if obj is None or not owner_uid:
        return False
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") is True and ref.get("uid") == owner_uid for ref in refs)


Live = dict[ObjectRef, dict[str, Any] | None]


def owned(live: Mapping[ObjectRef, dict[str, Any] | None], owner_uid: str | None) -> Live:
    """`live` with every object the owner does not control replaced by None (as if absent).

    What the decisions of a reconcile (the auth token, the canary layout, the workloads' state)
    read: an object someone else controls says nothing about this AgentService.
    """
    return {ref: obj if owned_by(obj, owner_uid) else None for ref, obj in live.items()}


def conflicts(
    desired: Sequence[Mapping[str, Any]], live: Mapping[ObjectRef, Mapping[str, Any] | None], owner_uid: str | None
) -> tuple[ObjectRef, ...]:
    """Each desired child that exists but is not controlled by the owner."""
    refs = (ObjectRef.of(child) for child in desired)
    return tuple(ref for ref in refs if (obj := live.get(ref)) is not None and not owned_by(obj, owner_uid))


def keys(refs: Iterable[ObjectRef]) -> str:
    """`Kind/name, Kind/name` for a message."""
    return ", ".join(ref.key for ref in refs)


@dataclasses.dataclass(frozen=True)
class Workload:
    """Roll-out state of one Deployment, as read from the API."""

    name: str
    desired: int
    ready: int
    updated: int
    current: bool  # the controller has observed the latest generation
    failure: str = ""  # why the Deployment controller gave up (ProgressDeadlineExceeded, ReplicaFailure)

    @property
    def rolled_out(self) -> bool:
        return self.current and self.updated >= self.desired and self.ready >= self.desired


def workload(deployment: Mapping[str, Any]) -> Workload:
    """Read a live Deployment's roll-out state (the Deployment controller's own fields)."""
    meta = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", 1))
    failure = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False":
            failure = f"{cond.get('reason', 'ProgressDeadlineExceeded')}: {cond.get('message', '')}".rstrip(": ")
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            failure = f"{cond.get('reason', 'ReplicaFailure')}: {cond.get('message', '')}".rstrip(": ")
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    return Workload(
        name=str(meta.get("name", "")),
        desired=desired,
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        current=generation is None or (observed is not None and int(observed) >= int(generation)),
        failure=failure,
    )

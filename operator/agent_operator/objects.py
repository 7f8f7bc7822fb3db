"""Object identity: one spelling of "which Kubernetes object", and who controls it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
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


def keys(refs: Iterable[ObjectRef]) -> str:
    """`Kind/name, Kind/name` for a message."""
    return ", ".join(ref.key for ref in refs)

"""Apply: write each child that differs from its live object, and only the operator's own.

Ownership. A child is written only when it is absent or already controlled by its AgentService
(a controller ownerReference with the same uid). An object of a child's name that someone else
created is left exactly as it is, never adopted: an apply with `force` would take its fields
over, and a controller ownerReference would have the garbage collector delete it with the
AgentService. `apply_all` reports it as a conflict (the `ChildConflict` condition), and the
next reconcile after its owner removes it creates the operator's own.

A write is a server-side apply (`PATCH ...?fieldManager=agentservice-operator&force=true`):
the API server merges what the operator owns and leaves other managers' fields alone. Replicas
under an autoscaler: the builders leave `spec.replicas` out, so the operator never writes it;
and when autoscaling is turned on for a Deployment whose replicas the operator applied before,
it first hands the field over (a replicas-only apply by a separate manager, as the Kubernetes
docs prescribe) so that dropping it from the operator's apply does not reset it to 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import kopf
import orjson
import structlog
from agent_operator import objects
from agent_operator.kube import diff
from agent_operator.kube.client import ApiError, Client
from agent_operator.manifests import naming
from agent_operator.objects import ObjectRef

log = structlog.get_logger(__name__)

HANDOVER_MANAGER: Final = f"{naming.FIELD_MANAGER}-handover"


@dataclasses.dataclass(frozen=True)
class Result:
    """What `apply_all` did."""

    written: tuple[ObjectRef, ...] = ()  # each child written
    live: dict[ObjectRef, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the live object of each child
    skipped: tuple[str, ...] = ()  # kinds the cluster does not serve
    conflicts: tuple[ObjectRef, ...] = ()  # children left alone: someone else's object


def adopt(children: Sequence[Mapping[str, Any]], owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Copies of `children` owned by `owner` (controller ownerReference), hash-stamped."""
    adopted = [orjson.loads(orjson.dumps(child)) for child in children]
    kopf.append_owner_reference(adopted, owner=kopf.Body(cast(kopf.RawBody, dict(owner))))
    return [diff.stamp(child) for child in adopted]  # already private copies: stamped in place


async def read_live(client: Client, refs: Sequence[ObjectRef]) -> objects.Live:
    """The live object of every ref (None when absent), read concurrently."""
    lives = await asyncio.gather(*(client.read(ref) for ref in refs))
    return dict(zip(refs, lives, strict=True))


async def apply_all(
    client: Client,
    desired: Sequence[Mapping[str, Any]],
    live: Mapping[ObjectRef, dict[str, Any] | None],
    *,
    owner_uid: str | None,
) -> Result:
    """Apply each desired child whose live object differs; in order, one write per changed child.

    A child is written only when it is absent or already controlled by the owner (`owner_uid`).
    An object of that name that someone else created is never touched (an apply with `force`
    would take its fields over and a controller ownerReference would hand it to the garbage
    collector with the AgentService): it is reported in `Result.conflicts` instead.
    """
    written: list[ObjectRef] = []
    result_live: dict[ObjectRef, dict[str, Any]] = {}
    skipped: list[str] = []
    foreign: list[ObjectRef] = []
    for child in desired:
        ref = ObjectRef.of(child)
        current = live.get(ref)
        if current is not None and not objects.owned_by(current, owner_uid):
            log.warning("child_conflict", child=ref.key, owners=current.get("metadata", {}).get("ownerReferences"))
            foreign.append(ref)
            continue
        reasons = diff.needs_write(child, current)
        if not reasons:
            assert current is not None
            result_live[ref] = current
            continue
        log.info("apply", child=ref.key, drift=reasons[:5])
        try:
            handover = _handover(child, current)
            if handover is not None:
                await client.apply(handover, manager=HANDOVER_MANAGER)
            result_live[ref] = await client.apply(child)
        except ApiError as exc:
            if exc.status == 404 and current is None:  # the cluster does not serve this kind (no CRD)
                skipped.append(child["kind"])
                continue
            raise
        written.append(ref)
    return Result(
        written=tuple(written), live=result_live, skipped=tuple(sorted(set(skipped))), conflicts=tuple(foreign)
    )


def _handover(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The replicas-only apply that hands `spec.replicas` to an autoscaler (see the module doc), if one is due.

    Due when an autoscaler now owns the replicas of a Deployment that the operator applied them to before.
    """
    if live is None or desired.get("kind") != "Deployment" or "replicas" in desired.get("spec", {}):
        return None
    if "replicas" not in live.get("spec", {}) or not diff.owns_field(live, naming.FIELD_MANAGER, "spec", "replicas"):
        return None
    meta = desired["metadata"]
    return {
        "apiVersion": desired["apiVersion"],
        "kind": desired["kind"],
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
        "spec": {"replicas": live["spec"]["replicas"]},
    }

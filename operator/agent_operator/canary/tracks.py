"""The children of both tracks for one decided canary status, and the plan that carries them. Pure.

Level-based: the layout follows the decided status only (never the action), so a repeated
reconcile lands on the same children. The rules (which track runs what, and with how many
replicas) are in docs/canary.md, "How the operator runs it".
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from agent_operator.api import models
from agent_operator.canary import evaluation as gates_of
from agent_operator.canary import machine
from agent_operator.manifests import builders, naming, templatehash
from agent_operator.manifests import evaluation as evaluation_manifests
from agent_operator.objects import ObjectRef

from agent_runtime import constants

Live = Mapping[ObjectRef, Mapping[str, Any] | None]


@dataclasses.dataclass(frozen=True)
class Layout:
    """The children of both tracks for one decided status."""

    children: list[dict[str, Any]]
    remove: tuple[ObjectRef, ...]  # canary objects to delete (at rest)
    actual_weight: int
    deployments: tuple[ObjectRef, ...]  # the Deployments that should exist
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one reconcile does about canaries: children to apply, objects to delete, the status."""

    children: list[dict[str, Any]]
    live: dict[ObjectRef, dict[str, Any] | None]  # live objects of the canary track, read for the plan
    remove: tuple[ObjectRef, ...]
    prior: models.CanaryStatus
    status: models.CanaryStatus
    decision: machine.Decision
    analysis: models.Analysis | None
    deployments: tuple[ObjectRef, ...]
    desired_revision: str
    spec: models.Canary
    warnings: tuple[str, ...] = ()


def live_revision(desired: builders.Desired, live: Live) -> str:
    """The revision the live stable Deployments run (both must exist and carry their hash), or ''."""
    hashes = {}
    for component, (stable, _) in desired.deployments.items():
        value = (((live.get(stable) or {}).get("metadata") or {}).get("annotations") or {}).get(
            naming.TEMPLATE_HASH_ANNOTATION
        )
        if not value:
            return ""
        hashes[component.value] = str(value)
    return templatehash.combine(hashes)


def _kept_template(child: dict[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """`child` (a stable Deployment built from the spec) running the live Deployment's pod template."""
    kept = copy.deepcopy(child)
    template = copy.deepcopy(live.get("spec", {}).get("template") or {})
    if template.get("metadata", {}).get("creationTimestamp", "") is None:
        del template["metadata"]["creationTimestamp"]  # the API server's null placeholder
    kept["spec"]["template"] = template
    live_meta = live.get("metadata", {})
    revision = (live_meta.get("annotations") or {}).get(naming.TEMPLATE_HASH_ANNOTATION)
    if revision:
        kept["metadata"]["annotations"][naming.TEMPLATE_HASH_ANNOTATION] = revision
    version = (template.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/version")
    if version:
        kept["metadata"]["labels"]["app.kubernetes.io/version"] = version
    return kept


def _canary_count(stable: int, weight: int) -> int:
    """Canary replicas beside `stable` autoscaled ones for `weight` percent (at least one)."""
    if weight >= 100:
        return max(stable, 1)
    return max(1, (stable * weight + (100 - weight) // 2) // (100 - weight))


def _with_replicas(deployment: dict[str, Any], replicas: int) -> dict[str, Any]:
    """A copy of `deployment` with `spec.replicas` set (first, where the builder puts it)."""
    laid = copy.deepcopy(deployment)
    laid["spec"] = {"replicas": replicas, **{k: v for k, v in laid["spec"].items() if k != "replicas"}}
    return laid


def _counts(desired: builders.Desired, weight: int, live: Live) -> dict[naming.Component, tuple[int | None, int, int]]:
    """(stable, canary, actual weight) replicas of each component during a rollout at `weight`."""
    counts: dict[naming.Component, tuple[int | None, int, int]] = {}
    built = {ObjectRef.of(child): child for child in desired.children}
    for component, (stable_ref, _) in desired.deployments.items():
        total = built[stable_ref]["spec"].get("replicas")  # None: an autoscaler owns the count
        if total is None:
            replicas = (live.get(stable_ref) or {}).get("spec", {}).get("replicas")
            # Kubernetes' default is 1; 0 is real (KEDA scaled the stable workers to zero) and is
            # kept, so the actual weight reads 100 % rather than pretending stable has a pod.
            stable = 1 if replicas is None else int(replicas)
            count = _canary_count(stable, weight)
            counts[component] = (None, count, round(100 * count / (count + stable)))
        else:
            split = machine.split(int(total), weight)
            counts[component] = (split.stable, split.canary, split.actual_weight)
    return counts


def _before_gate(deployment: dict[str, Any], component: naming.Component, revision: str) -> dict[str, Any]:
    """A canary Deployment while the `before` gate stands: no API pod (no user-facing endpoint), one
    worker reading the candidate's own lane (its evaluation Jobs serve the API in-process)."""
    if component == naming.Component.API:
        return _with_replicas(deployment, 0)
    return _in_lane(_with_replicas(deployment, 1), revision)


def _in_lane(deployment: dict[str, Any], revision: str) -> dict[str, Any]:
    """The canary workers reading the candidate's lane only, while a gate's suites run: during a step's
    gate the canary API pods go on taking user tasks into the main queue, which stable's workers serve."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        *(e for e in container.get("env", []) if e.get("name") != constants.QUEUE_LANE_ENV),
        {"name": constants.QUEUE_LANE_ENV, "value": evaluation_manifests.lane(revision)},
    ]
    return deployment


def same_pods(desired: builders.Desired, weight: int, other: int, live: Live) -> bool:
    """Whether two weights give every component the same replicas of each track.

    Weights are served by replica counts only, so a step between two such weights changes no pod
    and no traffic (2 workers run one canary pod at 10 %, 20 % and 50 % alike).
    """
    return _counts(desired, weight, live) == _counts(desired, other, live)


def layout(desired: builders.Desired, status: models.CanaryStatus, live: Live) -> Layout:
    """The children of both tracks for `status`."""
    keep = status.stable_revision != desired.revision
    active = machine.rollout_active(status)
    counts = _counts(desired, status.weight, live) if active else {}
    stable_of = {stable: component for component, (stable, _) in desired.deployments.items()}
    stable_config = desired.config_maps[0]

    out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for built in desired.children:
        ref = ObjectRef.of(built)
        current = live.get(ref)
        child = built
        if keep and ref == stable_config and current is not None:
            child = {**built, "data": dict(current.get("data") or {})}
        component = stable_of.get(ref)
        if component is not None:
            if keep and current is not None:
                child = _kept_template(built, current)
            elif keep:
                warnings.append(
                    f"{ref.key} is missing and revision {status.stable_revision} cannot be rebuilt from its hash: "
                    f"recreated from the spec's template"
                )
            stable_count = counts[component][0] if component in counts else None
            if stable_count is not None:
                child = _with_replicas(child, stable_count)
        out.append(child)

    deployments = list(stable_of)
    remove: tuple[ObjectRef, ...] = ()
    if active:
        canary_of = {canary: component for component, (_, canary) in desired.deployments.items()}
        for built in desired.canary:
            ref = ObjectRef.of(built)
            component = canary_of.get(ref)
            if component is None:
                out.append(built)  # the canary ConfigMap
            elif status.gate == gates_of.BEFORE:
                out.append(_before_gate(built, component, status.canary_revision))
                deployments.append(ref)
            elif status.gate and component == naming.Component.WORKER:
                laid = _with_replicas(built, counts[component][1])
                out.append(_in_lane(laid, status.canary_revision))
                deployments.append(ref)
            else:
                out.append(_with_replicas(built, counts[component][1]))
                deployments.append(ref)
    else:
        remove = tuple(ref for ref in desired.canary_refs if live.get(ref) is not None)
    actual = counts[naming.Component.WORKER][2] if active and status.gate != gates_of.BEFORE else 0
    return Layout(out, remove, actual, tuple(deployments), tuple(warnings))

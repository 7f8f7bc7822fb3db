"""The desired state of one AgentService, built once: every child manifest, in a fixed order.

Pure: an `AgentService` model in, plain dicts out, no I/O and no ownerReferences (the operator
adopts the children when it applies them). `agentctl render` prints exactly `Desired.children`,
and the operator applies exactly that list, so what a GitOps review sees is what the cluster gets.

Order: configuration first (ConfigMap, auth Secret), then Services, Deployments, autoscalers,
disruption budgets, network policy and the monitoring children. The canary track (its ConfigMap
and Deployments) is built beside them, for the rollout to lay out when one runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from agent_operator import __version__
from agent_operator.api import models
from agent_operator.manifests import (
    autoscaling,
    dashboard,
    monitoring,
    naming,
    runtimeconfig,
    templatehash,
    workloads,
)
from agent_operator.objects import ObjectRef

COMPONENTS = (naming.Component.API, naming.Component.WORKER)

# The children of one AgentService are built, held and sent at once, by up to 32 reconciles at a
# time: their size is bounded before anything is built (issue 27: a 1.4 MB spec rendered 5.6 MB and
# took 27 MB to build). Each byte of the spec's JSON lands in at most RENDER_COPIES bytes of
# children: env values and pod annotations in the four Deployments of both tracks, the runtime
# configuration in the ConfigMaps of both tracks (a JSON string in JSON: twice the escapes, once
# per track). RENDER_BASE is what any spec renders (templates, the dashboard; 41 KB with the
# longest names). tests/unit/operator/test_bounds.py holds the estimate to be an upper bound.
RENDER_CEILING: Final = 512 * 1024
RENDER_COPIES: Final = 4
RENDER_BASE: Final = 64 * 1024


def rendered_size_bound(svc: models.AgentService) -> int:
    """An upper bound of the bytes (as JSON) of every child `desired(svc)` builds, both tracks; cheap."""
    return RENDER_BASE + RENDER_COPIES * len(svc.spec.model_dump_json(by_alias=True, exclude_defaults=True))


def check_size(svc: models.AgentService) -> None:
    """Refuse (ValueError naming the figures) a spec whose children could pass `RENDER_CEILING`."""
    bound = rendered_size_bound(svc)
    if bound > RENDER_CEILING:
        raise ValueError(
            f"spec: its children could take {bound} bytes, more than the ceiling of {RENDER_CEILING}; shorten"
            " env values, podAnnotations, the system prompt or budget.prices"
        )


@dataclasses.dataclass(frozen=True)
class Desired:
    """Everything one AgentService wants, with the names the reconcile needs to find its parts."""

    children: list[dict[str, Any]]  # the steady state, in apply order
    canary: list[dict[str, Any]]  # the canary track: its ConfigMap, then one Deployment per component
    revision: str  # fingerprint of the pod templates of API and worker (`status.revision`)
    config_digest: str  # digest of the runtime ConfigMap's data, on every pod template
    deployments: dict[naming.Component, tuple[ObjectRef, ObjectRef]]  # (stable, canary) per component
    config_maps: tuple[ObjectRef, ObjectRef]  # (stable, canary) runtime ConfigMaps
    auth_secret: ObjectRef
    selector: dict[str, str]  # labels of everything this AgentService owns

    @property
    def refs(self) -> list[ObjectRef]:
        return [ObjectRef.of(child) for child in self.children]

    @property
    def canary_refs(self) -> list[ObjectRef]:
        """The canary track's objects, ConfigMap first."""
        return [ObjectRef.of(child) for child in self.canary]

    @property
    def stable_deployments(self) -> tuple[ObjectRef, ...]:
        return tuple(stable for stable, _ in self.deployments.values())

    @property
    def pod_inputs(self) -> frozenset[ObjectRef]:
        """The children the pods consume: their token and their mounted config (both tracks)."""
        return frozenset({self.auth_secret, *self.config_maps})


def desired(svc: models.AgentService, *, operator_version: str | None = None) -> Desired:
    """Every child of `svc` in a deterministic order; `operator_version` defaults to the operator's own."""
    check_size(svc)  # before anything is built
    operator_version = operator_version or __version__
    app_version = workloads.app_version(svc, operator_version)
    data = runtimeconfig.config_data(svc)
    digest = runtimeconfig.config_hash(data)
    stable = {
        component: workloads.build_deployment(svc, component, operator_version=operator_version, config_digest=digest)
        for component in COMPONENTS
    }
    children: list[dict[str, Any]] = [
        runtimeconfig.build_config_map(svc, app_version=app_version, data=data),
        runtimeconfig.build_auth_secret(svc, app_version=app_version),
        workloads.build_api_service(svc, operator_version=operator_version),
        workloads.build_worker_metrics_service(svc, operator_version=operator_version),
        *stable.values(),
    ]
    children.extend(autoscaling.build_autoscalers(svc, operator_version=operator_version))
    if svc.spec.pod_disruption_budget.enabled:
        children.extend(
            workloads.build_pod_disruption_budget(svc, component, operator_version=operator_version)
            for component in COMPONENTS
        )
    if svc.spec.network_policy.enabled:
        children.append(workloads.build_network_policy(svc, operator_version=operator_version))
    rule = monitoring.build_prometheus_rule(svc, app_version=app_version)
    if rule is not None:
        children.append(rule)
    children.append(monitoring.build_service_monitor(svc, app_version=app_version))
    children.append(dashboard.build_dashboard(svc, app_version=app_version))

    canary = {
        component: workloads.build_deployment(
            svc, component, operator_version=operator_version, track=naming.Track.CANARY, config_digest=digest
        )
        for component in COMPONENTS
    }
    canary_config = runtimeconfig.build_config_map(svc, app_version=app_version, track=naming.Track.CANARY, data=data)
    hashes = {c.value: stable[c]["metadata"]["annotations"][naming.TEMPLATE_HASH_ANNOTATION] for c in COMPONENTS}
    return Desired(
        children=children,
        canary=[canary_config, *canary.values()],
        revision=templatehash.combine(hashes),
        config_digest=digest,
        deployments={c: (ObjectRef.of(stable[c]), ObjectRef.of(canary[c])) for c in COMPONENTS},
        config_maps=(ObjectRef.of(children[0]), ObjectRef.of(canary_config)),
        auth_secret=ObjectRef.of(children[1]),
        selector=naming.instance_labels(svc.metadata.name),
    )


def build_children(svc: models.AgentService, *, operator_version: str | None = None) -> list[dict[str, Any]]:
    """The steady-state children of `svc` (what `agentctl render` prints)."""
    return desired(svc, operator_version=operator_version).children

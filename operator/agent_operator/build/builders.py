"""The desired state of one AgentService: every child manifest, in a fixed order.

Pure: an `AgentService` model in, plain dicts out, no I/O and no ownerReferences (the operator
adopts the children when it applies them). `agentctl render` prints exactly this list, and the
operator applies exactly this list, so what a GitOps review sees is what the cluster gets.

Order: configuration first (ConfigMap, auth Secret), then Services, Deployments, autoscalers,
disruption budgets, network policy and the monitoring children. The canary Deployments are not
part of the steady state: the rollout logic builds them with `workloads.build_deployment(...,
track=Track.CANARY, replicas=n)` and `runtimeconfig.build_config_map(..., track=Track.CANARY)`.
"""

from __future__ import annotations

from typing import Any

from agent_operator import __version__
from agent_operator.build import autoscaling, dashboard, monitoring, naming, runtimeconfig, templatehash, workloads
from agent_operator.api import models

COMPONENTS = (naming.Component.API, naming.Component.WORKER)


def build_children(svc: models.AgentService, *, version: str | None = None) -> list[dict[str, Any]]:
    """Every child of `svc` in a deterministic order; `version` defaults to the operator's own."""
    operator_version = version or __version__
    labels_version = workloads.app_version(svc, operator_version)
    data = runtimeconfig.config_data(svc)
    digest = runtimeconfig.config_hash(data)
    children: list[dict[str, Any]] = [
        runtimeconfig.build_config_map(svc, version=labels_version, data=data),
        runtimeconfig.build_auth_secret(svc, version=labels_version),
        workloads.build_api_service(svc, version=operator_version),
        workloads.build_worker_metrics_service(svc, version=operator_version),
    ]
    children.extend(
        workloads.build_deployment(svc, component, version=operator_version, config_digest=digest)
        for component in COMPONENTS
    )
    children.extend(autoscaling.build_autoscalers(svc, version=operator_version))
    if svc.spec.pod_disruption_budget.enabled:
        children.extend(
            workloads.build_pod_disruption_budget(svc, component, version=operator_version) for component in COMPONENTS
        )
    if svc.spec.network_policy.enabled:
        children.append(workloads.build_network_policy(svc, version=operator_version))
    rule = monitoring.build_prometheus_rule(svc, version=labels_version)
    if rule is not None:
        children.append(rule)
    children.append(monitoring.build_service_monitor(svc, version=labels_version))
    children.append(dashboard.build_dashboard(svc, version=labels_version))
    return children


def revision(svc: models.AgentService, *, version: str | None = None) -> str:
    """One fingerprint of the desired pod templates of API and worker (for `status.revision`)."""
    operator_version = version or __version__
    digest = runtimeconfig.config_hash(runtimeconfig.config_data(svc))
    return templatehash.combine(
        {
            component.value: workloads.pod_template_hash(svc, component, version=operator_version, config_digest=digest)
            for component in COMPONENTS
        }
    )

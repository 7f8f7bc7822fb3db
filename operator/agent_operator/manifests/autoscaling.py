"""Autoscalers of one AgentService: HorizontalPodAutoscalers (autoscaling/v2) and the KEDA ScaledObject.

Workers scale on queue depth: with the `hpa` engine through the Object metric `agent_queue_depth`
(served by a Prometheus metrics adapter) plus CPU; with the `keda` engine through one
`redis-streams` trigger (`redis-cluster-streams`, `redis-sentinel-streams` by the Redis mode) per
priority stream, reading each stream's length directly from Redis (and, with `redis.urlSecretRef`,
a TriggerAuthentication naming the Secret keys KEDA reads the address and password from). The API
always scales on CPU with an HPA. Autoscalers target the stable Deployments only: during a rollout
the operator sizes the canary explicitly.
"""

from __future__ import annotations

from typing import Any, Final

from agent_operator.api import models
from agent_operator.manifests import naming, redisconfig, runtimeconfig, workloads

from agent_runtime import constants

KEDA_API_VERSION: Final = "keda.sh/v1alpha1"


def _target_ref(service: str, component: naming.Component) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": naming.deployment_name(service, component)}


def _cpu_metric(target_utilization: int) -> dict[str, Any]:
    return {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target_utilization}},
    }


def _queue_depth_metric(service: str, target_per_replica: int) -> dict[str, Any]:
    """Queue depth as an Object metric of the AgentService, averaged over the worker pods.

    Every runtime pod reports the *whole* queue's depth (waiting + pending, one figure for the
    service), so a `Pods` metric would average N copies of the total and ask for N times too many
    replicas. An `Object` metric with an `AverageValue` target is divided by the pod count by the
    HPA itself: desired = ceil(depth / targetQueueDepthPerReplica), which is what KEDA does too.
    The metrics adapter maps the series' `service` label to the AgentService (docs/autoscaling.md).
    """
    return {
        "type": "Object",
        "object": {
            "describedObject": {"apiVersion": models.API_VERSION, "kind": models.KIND, "name": service},
            "metric": {"name": constants.METRIC_QUEUE_DEPTH},
            "target": {"type": "AverageValue", "averageValue": str(target_per_replica)},
        },
    }


def _behavior(spec: models.Autoscaling) -> dict[str, Any]:
    return {"scaleDown": {"stabilizationWindowSeconds": spec.scale_down_stabilization_seconds}}


def build_hpa(svc: models.AgentService, component: naming.Component, *, operator_version: str) -> dict[str, Any]:
    """The HPA of one component's stable Deployment (worker: queue depth and CPU; API: CPU)."""
    name = svc.metadata.name
    spec = svc.spec.autoscaling
    metrics = [_cpu_metric(spec.target_cpu_utilization)]
    if component == naming.Component.WORKER:
        metrics.insert(0, _queue_depth_metric(name, spec.target_queue_depth_per_replica))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": naming.deployment_name(name, component),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(name, component.value, workloads.app_version(svc, operator_version)),
        },
        "spec": {
            "scaleTargetRef": _target_ref(name, component),
            # An HPA cannot scale to zero (minReplicas >= 1); only the KEDA engine may, for workers.
            "minReplicas": max(1, spec.min_replicas),
            "maxReplicas": spec.max_replicas,
            "metrics": metrics,
            "behavior": _behavior(spec),
        },
    }


def redis_trigger_connection(redis: models.RedisSpec) -> dict[str, str]:
    """The connection metadata of a KEDA Redis trigger (see `redisconfig.keda_trigger`)."""
    return redisconfig.keda_trigger(redis).metadata


def _worker_labels(svc: models.AgentService, operator_version: str) -> dict[str, str]:
    name = svc.metadata.name
    return naming.standard_labels(name, naming.Component.WORKER.value, workloads.app_version(svc, operator_version))


def build_scaled_object(svc: models.AgentService, *, operator_version: str) -> dict[str, Any]:
    """The KEDA ScaledObject of the stable worker Deployment: one redis-streams trigger per priority.

    Each trigger counts its stream's entries (XLEN): no `consumerGroup`, on purpose. With a consumer
    group, KEDA's redis-streams scaler counts the group's *pending* entries (XPENDING) and ignores
    `streamLength`: at zero workers nothing is delivered, so nothing is pending, and the workers never
    wake. With `lagCount` it counts the group's lag, the entries not delivered yet: tasks in flight do
    not count, so a queue whose last tasks are running looks idle and the last worker is taken away
    under them (and KEDA 2.16 refused `activationLagCount: 0` there, so one task woke nothing: keda
    #6478, #7835). The runtime deletes an entry when it acknowledges it, so XLEN is exactly the
    waiting + pending work of that priority, the same figure as `agent_queue_depth`; a stream that
    does not exist yet counts 0 (keda #7447 does not arise). KEDA activates a trigger when its count
    is above `activationLagCount` (the lag mode's name; the threshold applies to every mode): 0, so
    one waiting task wakes a worker, and the workers go to zero only when nothing is waiting or running.
    """
    name = svc.metadata.name
    spec = svc.spec.autoscaling
    trigger = redisconfig.keda_trigger(svc.spec.redis)  # by mode: -streams, -cluster-, -sentinel-
    keys = runtimeconfig.runtime_config(svc).keys()  # the very keys the runtime uses (namespace and service)
    auth_name = naming.deployment_name(name, naming.Component.WORKER)
    triggers = [
        {
            "type": trigger.type,
            "name": f"queue-{priority}",
            "metadata": {
                **trigger.metadata,
                "stream": keys.stream(priority),
                "streamLength": str(spec.target_queue_depth_per_replica),
                "activationLagCount": "0",
            },
            # A dict of its own per trigger: a shared one would render as a YAML anchor and alias.
            **({"authenticationRef": {"name": auth_name}} if trigger.secret_refs else {}),
        }
        for priority in constants.PRIORITIES
    ]
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": {
            "name": naming.deployment_name(name, naming.Component.WORKER),
            "namespace": svc.metadata.namespace,
            "labels": _worker_labels(svc, operator_version),
        },
        "spec": {
            "scaleTargetRef": _target_ref(name, naming.Component.WORKER),
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "pollingInterval": spec.polling_interval_seconds,
            # From the last task seen to zero workers (a count of 1 or more keeps them).
            "cooldownPeriod": spec.scale_down_stabilization_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": triggers,
        },
    }


def build_trigger_authentication(svc: models.AgentService, *, operator_version: str) -> dict[str, Any] | None:
    """The TriggerAuthentication of the ScaledObject's triggers, when KEDA needs Secret keys (urlSecretRef, a CA).

    It names the Secret and keys; KEDA reads them itself (the operator never reads or copies them).
    """
    refs = redisconfig.keda_trigger(svc.spec.redis).secret_refs
    if not refs:
        return None
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "TriggerAuthentication",
        "metadata": {
            "name": naming.deployment_name(svc.metadata.name, naming.Component.WORKER),
            "namespace": svc.metadata.namespace,
            "labels": _worker_labels(svc, operator_version),
        },
        "spec": {"secretTargetRef": refs},
    }


def build_autoscalers(svc: models.AgentService, *, operator_version: str) -> list[dict[str, Any]]:
    """Every autoscaler of the service (and the TriggerAuthentication KEDA needs), or none when disabled."""
    if not svc.spec.autoscaling.enabled:
        return []
    api = build_hpa(svc, naming.Component.API, operator_version=operator_version)
    if svc.spec.autoscaling.engine == models.AutoscalingEngine.KEDA:
        auth = build_trigger_authentication(svc, operator_version=operator_version)
        return [api, *([auth] if auth is not None else []), build_scaled_object(svc, operator_version=operator_version)]
    return [api, build_hpa(svc, naming.Component.WORKER, operator_version=operator_version)]

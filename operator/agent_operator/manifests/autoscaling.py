"""Autoscalers of one AgentService: HorizontalPodAutoscalers (autoscaling/v2) and the KEDA ScaledObject.

Workers scale on queue depth: with the `hpa` engine through the Pods metric `agent_queue_depth`
(served by a Prometheus metrics adapter) plus CPU; with the `keda` engine through one
`redis-streams` trigger (`redis-cluster-streams`, `redis-sentinel-streams` by the Redis mode) per
priority stream, reading the consumer group's pending entries
directly from Redis. The API always scales on CPU with an HPA. Autoscalers target the stable
Deployments only: during a rollout the operator sizes the canary explicitly.
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
    return redisconfig.keda_trigger(redis)[1]


def build_scaled_object(svc: models.AgentService, *, operator_version: str) -> dict[str, Any]:
    """The KEDA ScaledObject of the stable worker Deployment: one redis-streams trigger per priority."""
    name = svc.metadata.name
    spec = svc.spec.autoscaling
    trigger_type, connection = redisconfig.keda_trigger(svc.spec.redis)  # by mode: -streams, -cluster-, -sentinel-
    keys = runtimeconfig.runtime_config(svc).keys()  # the very keys the runtime uses (namespace and service)
    triggers = [
        {
            "type": trigger_type,
            "name": f"queue-{priority}",
            "metadata": {
                **connection,
                "stream": keys.stream(priority),
                "consumerGroup": constants.CONSUMER_GROUP,
                # The runtime deletes an entry when it acknowledges it, so XLEN is waiting + pending:
                # the same figure as agent_queue_depth (for one priority stream).
                "streamLength": str(spec.target_queue_depth_per_replica),
            },
        }
        for priority in constants.PRIORITIES
    ]
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": {
            "name": naming.deployment_name(name, naming.Component.WORKER),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(
                name, naming.Component.WORKER.value, workloads.app_version(svc, operator_version)
            ),
        },
        "spec": {
            "scaleTargetRef": _target_ref(name, naming.Component.WORKER),
            "minReplicaCount": spec.min_replicas,
            "maxReplicaCount": spec.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": triggers,
        },
    }


def build_autoscalers(svc: models.AgentService, *, operator_version: str) -> list[dict[str, Any]]:
    """Every autoscaler of the service, or none when autoscaling is disabled."""
    if not svc.spec.autoscaling.enabled:
        return []
    api = build_hpa(svc, naming.Component.API, operator_version=operator_version)
    if svc.spec.autoscaling.engine == models.AutoscalingEngine.KEDA:
        return [api, build_scaled_object(svc, operator_version=operator_version)]
    return [api, build_hpa(svc, naming.Component.WORKER, operator_version=operator_version)]

"""Monitoring children of an AgentService: the PrometheusRule (five alerts; six with MCP servers), the ServiceMonitor.

Pure: spec in, plain manifests out. Every series name comes from `agent_runtime.constants`, so a
rename in the runtime cannot leave an alert watching a metric that no longer exists. Every query
is scoped to one service with `service="<name>"` and `namespace="<ns>"` matchers: both labels are
the scrape target's (the ServiceMonitor's relabelling), never what a pod exposes.
"""

from __future__ import annotations

from typing import Any, Final

from agent_operator import __version__
from agent_operator.api import models
from agent_operator.manifests import naming, workloads

from agent_runtime import constants

MONITORING_API_VERSION: Final = "monitoring.coreos.com/v1"
COMPONENT: Final = "monitoring"
SCRAPE_INTERVAL: Final = "30s"

ALERT_ERROR_RATE: Final = "AgentServiceHighErrorRate"
ALERT_LATENCY: Final = "AgentServiceHighLatency"
ALERT_COST: Final = "AgentServiceHighCost"
ALERT_QUEUE_DEPTH: Final = "AgentServiceQueueBacklog"
ALERT_PROVIDERS_DOWN: Final = "AgentServiceAllProvidersDown"
ALERT_TOOL_SERVER_DOWN: Final = "AgentServiceToolServerDown"


def number(value: float) -> str:
    """Format a threshold as a PromQL number literal (`0.1`, `60`, `1e-05`)."""
    return format(value, "g")


def selector(svc: models.AgentService, **extra: str) -> str:
    """The label matchers that scope a series to one AgentService."""
    matchers = {constants.LABEL_SERVICE: svc.metadata.name, "namespace": svc.metadata.namespace, **extra}
    return "{" + ", ".join(f'{key}="{value}"' for key, value in matchers.items()) + "}"


def error_rate_expr(svc: models.AgentService) -> str:
    """Ratio of failed tasks to all finished tasks over 5 minutes."""
    failed = f"sum(rate({constants.SERIES_REQUESTS}{selector(svc, status='failed')}[5m]))"
    total = f"sum(rate({constants.SERIES_REQUESTS}{selector(svc)}[5m]))"
    return f"{failed} / {total}"


def p95_latency_expr(svc: models.AgentService) -> str:
    """p95 task wall-clock latency over 5 minutes, across replicas and tracks."""
    buckets = f"sum by (le) (rate({constants.SERIES_LATENCY_BUCKET}{selector(svc)}[5m]))"
    return f"histogram_quantile(0.95, {buckets})"


def hourly_cost_expr(svc: models.AgentService) -> str:
    """LLM spend in USD over the last hour."""
    return f"sum(increase({constants.SERIES_COST}{selector(svc)}[1h]))"


def queue_depth_expr(svc: models.AgentService) -> str:
    """Waiting plus pending tasks; every pod reports the shared queue, hence `max`, not `sum`."""
    return f"max({constants.METRIC_QUEUE_DEPTH}{selector(svc)})"


def providers_healthy_expr(svc: models.AgentService) -> str:
    """1 when at least one pod sees at least one provider healthy, 0 when none does."""
    return f"max({constants.METRIC_PROVIDER_HEALTHY}{selector(svc)})"


def tool_servers_up_expr(svc: models.AgentService) -> str:
    """Per MCP server: 1 when at least one pod is connected to it, 0 when none is."""
    return f"max by (server) ({constants.METRIC_TOOL_SERVER_UP}{selector(svc)})"


def _alert(
    svc: models.AgentService,
    name: str,
    expr: str,
    *,
    severity: str,
    summary: str,
    description: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": svc.spec.alerts.for_duration,
        "labels": {
            "severity": severity,
            constants.LABEL_SERVICE: svc.metadata.name,
            "namespace": svc.metadata.namespace,
        },
        "annotations": {"summary": summary, "description": description},
    }


def build_alerts(svc: models.AgentService) -> list[dict[str, Any]]:
    """The alerting rules for one service, thresholds from `spec.alerts`."""
    alerts = svc.spec.alerts
    name = svc.metadata.name
    where = f"AgentService {svc.metadata.namespace}/{name}"
    rules = [
        _alert(
            svc,
            ALERT_ERROR_RATE,
            f"({error_rate_expr(svc)}) > {number(alerts.error_rate)}",
            severity="critical",
            summary=f"{name}: more than {alerts.error_rate:.0%} of tasks fail",
            description=f"{where}: {{{{ $value | humanizePercentage }}}} of tasks failed over the last 5 minutes "
            f"(threshold {alerts.error_rate:.0%}). Check the worker logs and the LLM providers.",
        ),
        _alert(
            svc,
            ALERT_LATENCY,
            f"{p95_latency_expr(svc)} > {number(alerts.p95_latency_seconds)}",
            severity="warning",
            summary=f"{name}: p95 task latency above {number(alerts.p95_latency_seconds)}s",
            description=f"{where}: p95 task latency is {{{{ $value | humanizeDuration }}}} over the last 5 minutes "
            f"(threshold {number(alerts.p95_latency_seconds)}s). Providers may be slow or workers saturated.",
        ),
        _alert(
            svc,
            ALERT_COST,
            f"{hourly_cost_expr(svc)} > {number(alerts.hourly_cost_usd)}",
            severity="warning",
            summary=f"{name}: LLM spend above {number(alerts.hourly_cost_usd)} USD per hour",
            description=f'{where}: LLM spend over the last hour is {{{{ $value | printf "%.2f" }}}} USD '
            f"(threshold {number(alerts.hourly_cost_usd)} USD). Check for runaway tasks or a traffic spike.",
        ),
        _alert(
            svc,
            ALERT_QUEUE_DEPTH,
            f"{queue_depth_expr(svc)} > {alerts.queue_depth}",
            severity="warning",
            summary=f"{name}: more than {alerts.queue_depth} tasks queued",
            description=f"{where}: {{{{ $value }}}} tasks are waiting or pending (threshold {alerts.queue_depth}). "
            "Workers cannot keep up: check autoscaling limits and worker health.",
        ),
    ]
    if alerts.all_providers_down:
        rules.append(
            _alert(
                svc,
                ALERT_PROVIDERS_DOWN,
                f"{providers_healthy_expr(svc)} == 0",
                severity="critical",
                summary=f"{name}: no LLM provider is healthy",
                description=f"{where}: every LLM provider's circuit breaker is open on every pod; tasks cannot make "
                "progress. Check provider status, API keys and network egress.",
            )
        )
    if svc.spec.tools.mcp_servers:
        rules.append(
            _alert(
                svc,
                ALERT_TOOL_SERVER_DOWN,
                f"{tool_servers_up_expr(svc)} == 0",
                severity="warning",
                summary=f"{name}: an MCP tool server cannot be reached",
                description=f"{where}: no worker is connected to MCP server {{{{ $labels.server }}}}; its tools"
                " are not offered to the model. Check the server, its URL or command, and the network policy"
                " (the worker's /ready names the reason).",
            )
        )
    return rules


def _metadata(svc: models.AgentService, app_version: str | None) -> dict[str, Any]:
    """Labels and annotations of both monitoring children: the spec's (`spec.monitoring`), then the operator's own."""
    monitoring = svc.spec.monitoring
    labels = {**monitoring.labels, **naming.standard_labels(svc.metadata.name, COMPONENT, app_version or __version__)}
    meta: dict[str, Any] = {"labels": labels}
    if monitoring.annotations:
        meta["annotations"] = dict(monitoring.annotations)
    return meta


def build_prometheus_rule(svc: models.AgentService, *, app_version: str | None = None) -> dict[str, Any] | None:
    """The PrometheusRule with the service's alerts, or None when `spec.alerts.enabled` is false."""
    if not svc.spec.alerts.enabled:
        return None
    name = svc.metadata.name
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PrometheusRule",
        "metadata": {
            "name": naming.prometheus_rule_name(name),
            "namespace": svc.metadata.namespace,
            **_metadata(svc, app_version),
        },
        "spec": {
            "groups": [
                {
                    "name": f"agentservice.{svc.metadata.namespace}.{name}",
                    "rules": build_alerts(svc),
                }
            ]
        },
    }


# Where the labels of a series come from (docs/security.md, "Metrics no pod can forge"): from the
# scrape target, never from what a process exposes. `namespace` is service discovery's; `service`
# (the AgentService) and `track` are the pod's own labels, which the operator sets.
POD_SERVICE_LABEL: Final = "app.kubernetes.io/instance"


def meta_pod_label(label: str) -> str:
    """The service-discovery meta label of a pod label (`app.kubernetes.io/instance` ->
    `__meta_kubernetes_pod_label_app_kubernetes_io_instance`), as Prometheus sanitizes it."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() or c == "_" else "_" for c in label)


def build_service_monitor(svc: models.AgentService, *, app_version: str | None = None) -> dict[str, Any]:
    """The ServiceMonitor scraping the API and worker metrics endpoints of one service.

    `honorLabels: false`: a label a pod exposes never overrides one of its target, so no process
    can write another namespace's, service's or track's series (what it exposes as `namespace`,
    `service` or `track` is kept as `exported_namespace`, ...). The target's `namespace` comes from
    service discovery; `track` from the pod's `track` label (`podTargetLabels`); `service` from the
    pod's `app.kubernetes.io/instance` label, in place of the Kubernetes Service name the Prometheus
    Operator puts there, so every query keeps reading `service="<AgentService>"`.
    """
    name = svc.metadata.name
    endpoints = [
        {
            "port": port,
            "path": constants.METRICS_PATH,
            "interval": SCRAPE_INTERVAL,
            "honorLabels": False,
            "relabelings": [
                {
                    "action": "replace",
                    "sourceLabels": [meta_pod_label(POD_SERVICE_LABEL)],
                    "targetLabel": constants.LABEL_SERVICE,
                },
            ],
        }
        # The API serves /metrics on its HTTP port (API Service), the worker on its metrics port
        # (headless worker Service); both Services carry the instance labels selected below.
        for port in (workloads.API_PORT_NAME, workloads.WORKER_METRICS_PORT_NAME)
    ]
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": {
            "name": naming.service_monitor_name(name),
            "namespace": svc.metadata.namespace,
            **_metadata(svc, app_version),
        },
        "spec": {
            "selector": {"matchLabels": naming.instance_labels(name)},
            "namespaceSelector": {"matchNames": [svc.metadata.namespace]},
            "podTargetLabels": [naming.TRACK_LABEL],
            "endpoints": endpoints,
        },
    }

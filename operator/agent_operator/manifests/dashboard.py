"""The Grafana dashboard of one AgentService, shipped as a ConfigMap for Grafana's sidecar.

Grafana's dashboard sidecar loads every ConfigMap labelled `grafana_dashboard: "1"`; the JSON
lives under one data key. Queries reuse `monitoring`'s scoping, so the dashboard shows exactly
the series the alerts watch. Pure: spec in, manifest out.
"""

from __future__ import annotations

import json
from typing import Any, Final

from agent_operator import __version__
from agent_operator.api import models
from agent_operator.manifests import monitoring, naming

from agent_runtime import constants

DASHBOARD_LABEL: Final = "grafana_dashboard"
# Exported by the operator itself, labelled like the runtime's series (service, namespace).
CANARY_WEIGHT_METRIC: Final = "agentservice_canary_weight"
SCHEMA_VERSION: Final = 39
PANEL_WIDTH: Final = 8
PANEL_HEIGHT: Final = 8
COLUMNS: Final = 24 // PANEL_WIDTH


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
    }


def _panel(
    index: int, title: str, unit: str, targets: list[tuple[str, str]], kind: str = "timeseries"
) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {
            "h": PANEL_HEIGHT,
            "w": PANEL_WIDTH,
            "x": (index % COLUMNS) * PANEL_WIDTH,
            "y": (index // COLUMNS) * PANEL_HEIGHT,
        },
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
    }


def panel_queries(svc: models.AgentService) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Each panel's title, unit and `(PromQL, legend)` targets."""
    sel = monitoring.selector(svc)
    buckets = f"sum by (le) (rate({constants.SERIES_LATENCY_BUCKET}{sel}[5m]))"
    return [
        (
            "Request rate",
            "reqps",
            [(f"sum by (status) (rate({constants.SERIES_REQUESTS}{sel}[5m]))", "{{status}}")],
        ),
        (
            "Task latency",
            "s",
            [(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)}") for q in (0.5, 0.95, 0.99)],
        ),
        ("Active agents", "short", [(f"sum by (track) ({constants.METRIC_ACTIVE}{sel})", "{{track}}")]),
        ("Hourly cost", "currencyUSD", [(monitoring.hourly_cost_expr(svc), "USD / hour")]),
        (
            "Hourly cost by model",
            "currencyUSD",
            [(f"sum by (model) (increase({constants.SERIES_MODEL_COST}{sel}[1h]))", "{{model}}")],
        ),
        (
            "Hourly cost by route",
            "currencyUSD",
            [(f"sum by (route) (increase({constants.SERIES_MODEL_COST}{sel}[1h]))", "{{route}}")],
        ),
        (
            "Tool-call mix",
            "ops",
            [(f"sum by (tool_name) (rate({constants.METRIC_TOOL_CALLS}{sel}[5m]))", "{{tool_name}}")],
        ),
        (
            "Tool calls by tool and outcome",
            "ops",
            [
                (
                    f"sum by (tool_name, status) (rate({constants.METRIC_TOOL_CALLS}{sel}[5m]))",
                    "{{tool_name}} {{status}}",
                )
            ],
        ),
        (
            "Tool latency p95",
            "s",
            [
                (
                    "histogram_quantile(0.95, sum by (tool_name, le) "
                    f"(rate({constants.METRIC_TOOL_LATENCY}_bucket{sel}[5m])))",
                    "{{tool_name}}",
                )
            ],
        ),
        (
            "MCP servers up",
            "short",
            [(f"min by (server) ({constants.METRIC_TOOL_SERVER_UP}{sel})", "{{server}}")],
        ),
        ("Error rate", "percentunit", [(monitoring.error_rate_expr(svc), "failed / all")]),
        ("Queue depth", "short", [(monitoring.queue_depth_expr(svc), "waiting + pending")]),
        (
            "Provider health",
            "short",
            [(f"max by (provider) ({constants.METRIC_PROVIDER_HEALTHY}{sel})", "{{provider}}")],
        ),
        ("Canary weight", "percent", [(f"max({CANARY_WEIGHT_METRIC}{sel})", "canary weight")]),
    ]


def dashboard_json(svc: models.AgentService) -> dict[str, Any]:
    """The Grafana dashboard model of one service."""
    name = svc.metadata.name
    panels = [_panel(i, title, unit, targets) for i, (title, unit, targets) in enumerate(panel_queries(svc))]
    return {
        "uid": naming.dashboard_uid(svc.metadata.namespace, name),
        "title": f"AgentService {svc.metadata.namespace}/{name}",
        "tags": ["agentservice", "llm-agents"],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "panels": panels,
    }


def build_dashboard(svc: models.AgentService, *, app_version: str | None = None) -> dict[str, Any]:
    """The ConfigMap carrying the dashboard JSON, labelled for Grafana's sidecar."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.dashboard_name(name),
            "namespace": svc.metadata.namespace,
            "labels": {
                **naming.standard_labels(name, "dashboard", app_version or __version__),
                DASHBOARD_LABEL: "1",
            },
        },
        "data": {f"{name}.json": json.dumps(dashboard_json(svc), indent=2, sort_keys=True)},
    }

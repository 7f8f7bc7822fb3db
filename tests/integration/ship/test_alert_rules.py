"""The PrometheusRule's alerts, checked and unit-tested by the real `promtool`.

Covers:
- `promtool check rules` accepts the rendered groups (defaults and full.yaml thresholds);
- `promtool test rules` (tests generated here into a temp dir, synthetic series named from
  `agent_runtime.constants`): each of the five alerts fires above its spec threshold, with its
  severity, service and namespace labels and rendered summary/description; stays silent below
  the threshold, before `for` has elapsed, and for another service's or namespace's series;
- thresholds come from the spec (a raised queue-depth threshold silences the same series), the
  all-providers-down alert can be switched off, and `alerts.enabled: false` removes the rule;
- the Grafana dashboard: its panels, every query valid PromQL (parsed by promtool) scoped to the
  service and naming the runtime's series; the ServiceMonitor selects both runtime Services and
  scrapes exactly their named metrics ports, which are the containers' ports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_operator.api import models
from agent_operator.manifests import builders, dashboard, monitoring

from agent_runtime import constants

ROOT = Path(__file__).resolve().parents[3]
SERVICE = "support-agent"
NAMESPACE = "agents"
EVAL = "70m"  # past the 1h cost window's start and every `for`


def service(name: str = SERVICE, **alerts: Any) -> models.AgentService:
    return models.AgentService.from_manifest(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "model": {"providers": [{"name": "claude", "model": "m", "baseURL": "http://127.0.0.1:1"}]},
                "redis": {"url": "redis://127.0.0.1:6379/0"},
                "alerts": alerts,
            },
        }
    )


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: run `make setup` (scripts/setup.sh)"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def write_rules(tmp_path: Path, svc: models.AgentService) -> Path:
    rule = monitoring.build_prometheus_rule(svc)
    assert rule is not None
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def labels(service: str = SERVICE, namespace: str = NAMESPACE, **extra: str) -> str:
    matchers = {"service": service, "namespace": namespace, "track": "stable", "pod": "p-1", **extra}
    return "{" + ",".join(f'{k}="{v}"' for k, v in matchers.items()) + "}"


def series_for(alert: str, level: str, **scope: str) -> list[dict[str, str]]:
    """Synthetic series (1 sample a minute) that put `alert`'s expression at a known value."""
    high = level == "high"
    if alert == monitoring.ALERT_ERROR_RATE:  # 30% vs 5% failed
        failed, succeeded = ("3", "7") if high else ("1", "19")
        return [
            {"series": f"{constants.SERIES_REQUESTS}{labels(**scope, status='failed')}", "values": f"0+{failed}x80"},
            {
                "series": f"{constants.SERIES_REQUESTS}{labels(**scope, status='succeeded')}",
                "values": f"0+{succeeded}x80",
            },
        ]
    if alert == monitoring.ALERT_LATENCY:  # every task in (60, 120] s vs in (0, 30] s
        slow = ["0+0x80", "0+0x80", "0+10x80", "0+10x80"] if high else ["0+10x80"] * 4
        return [
            {"series": f"{constants.SERIES_LATENCY_BUCKET}{labels(**scope, le=le)}", "values": values}
            for le, values in zip(["30", "60", "120", "+Inf"], slow, strict=True)
        ]
    if alert == monitoring.ALERT_COST:  # 1 USD vs 0.5 USD a minute
        return [{"series": f"{constants.SERIES_COST}{labels(**scope)}", "values": "0+1x80" if high else "0+0.5x80"}]
    if alert == monitoring.ALERT_QUEUE_DEPTH:
        return [
            {"series": f"{constants.METRIC_QUEUE_DEPTH}{labels(**scope)}", "values": "800x80" if high else "100x80"}
        ]
    if alert == monitoring.ALERT_PROVIDERS_DOWN:
        return [
            {
                "series": f"{constants.METRIC_PROVIDER_HEALTHY}{labels(**scope, provider=name)}",
                "values": "0x80" if high or name == "claude" else "1x80",
            }
            for name in ("claude", "fallback")
        ]
    raise AssertionError(alert)


ANNOTATION_VALUES = {
    monitoring.ALERT_ERROR_RATE: "30%",
    monitoring.ALERT_LATENCY: "1m 57s",
    monitoring.ALERT_COST: "60.00",
    monitoring.ALERT_QUEUE_DEPTH: "800",
}
ALERTS = [
    monitoring.ALERT_ERROR_RATE,
    monitoring.ALERT_LATENCY,
    monitoring.ALERT_COST,
    monitoring.ALERT_QUEUE_DEPTH,
    monitoring.ALERT_PROVIDERS_DOWN,
]


def expected_alert(svc: models.AgentService, alert: str) -> dict[str, Any]:
    rule = next(r for r in monitoring.build_alerts(svc) if r["alert"] == alert)
    annotations = dict(rule["annotations"])
    value = ANNOTATION_VALUES.get(alert)
    for template in ("{{ $value | humanizePercentage }}", "{{ $value | humanizeDuration }}", "{{ $value }}"):
        annotations["description"] = annotations["description"].replace(template, value or template)
    annotations["description"] = annotations["description"].replace('{{ $value | printf "%.2f" }}', value or "")
    return {"exp_labels": rule["labels"], "exp_annotations": annotations}


def run_tests(tmp_path: Path, svc: models.AgentService, tests: list[dict[str, Any]]) -> None:
    rules = write_rules(tmp_path, svc)
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}))
    result = promtool("test", "rules", spec)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    for svc, count in (
        (service(), 5),
        # full.yaml has MCP servers: the sixth rule, AgentServiceToolServerDown (test_tool_alert.py)
        (models.AgentService.from_manifest(yaml.safe_load((ROOT / "examples/full.yaml").read_text())), 6),
    ):
        result = promtool("check", "rules", write_rules(tmp_path, svc))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{count} rules found" in result.stdout


def test_the_five_alerts_carry_severity_summary_and_description() -> None:
    rules = monitoring.build_alerts(service())
    assert [r["alert"] for r in rules] == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["labels"]["service"] == SERVICE and rule["labels"]["namespace"] == NAMESPACE
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert f'service="{SERVICE}"' in rule["expr"] and f'namespace="{NAMESPACE}"' in rule["expr"]
        assert rule["for"] == "5m"


@pytest.mark.parametrize("alert", ALERTS)
def test_alert_fires_above_threshold_and_not_below(tmp_path: Path, alert: str) -> None:
    svc = service()
    tests = [
        {
            "interval": "1m",
            "input_series": series_for(alert, "high"),
            "alert_rule_test": [
                {"eval_time": EVAL, "alertname": alert, "exp_alerts": [expected_alert(svc, alert)]},
            ],
        },
        {
            "interval": "1m",
            "input_series": series_for(alert, "low"),
            "alert_rule_test": [{"eval_time": EVAL, "alertname": alert, "exp_alerts": []}],
        },
        {
            "interval": "1m",
            "input_series": series_for(alert, "high", service="other-agent")
            + series_for(alert, "high", namespace="elsewhere"),
            "alert_rule_test": [{"eval_time": EVAL, "alertname": alert, "exp_alerts": []}],
        },
    ]
    run_tests(tmp_path, svc, tests)


def test_for_duration_holds_the_alert(tmp_path: Path) -> None:
    """Queue depth jumps to 800 at minute 10: pending at 12m, firing once `for` (5m) has passed."""
    svc = service()
    alert = monitoring.ALERT_QUEUE_DEPTH
    series = [{"series": f"{constants.METRIC_QUEUE_DEPTH}{labels()}", "values": "100x9 800x30"}]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "12m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "16m", "alertname": alert, "exp_alerts": [expected_alert(svc, alert)]},
            ],
        }
    ]
    run_tests(tmp_path, svc, tests)


def test_thresholds_come_from_the_spec(tmp_path: Path) -> None:
    svc = service(queueDepth=1000, errorRate=0.5, **{"for": "1m"})
    assert next(r for r in monitoring.build_alerts(svc) if r["alert"] == monitoring.ALERT_QUEUE_DEPTH)["for"] == "1m"
    tests = [
        {
            "interval": "1m",
            "input_series": series_for(monitoring.ALERT_QUEUE_DEPTH, "high")
            + series_for(monitoring.ALERT_ERROR_RATE, "high"),
            "alert_rule_test": [
                {"eval_time": EVAL, "alertname": monitoring.ALERT_QUEUE_DEPTH, "exp_alerts": []},
                {"eval_time": EVAL, "alertname": monitoring.ALERT_ERROR_RATE, "exp_alerts": []},
            ],
        }
    ]
    run_tests(tmp_path, svc, tests)


def test_all_providers_down_can_be_switched_off_and_alerts_disabled() -> None:
    names = [r["alert"] for r in monitoring.build_alerts(service(allProvidersDown=False))]
    assert names == ALERTS[:4]
    assert monitoring.build_prometheus_rule(service(enabled=False)) is None
    rule = monitoring.build_prometheus_rule(service())
    assert rule is not None
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"] == {
        "name": f"{SERVICE}-alerts",
        "namespace": NAMESPACE,
        "labels": rule["metadata"]["labels"],
    }
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == SERVICE


# --- dashboard and ServiceMonitor ----------------------------------------------------------------


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query (as a recording rule) and each one is scoped to the service."""
    svc = service()
    board = json.loads(next(iter(dashboard.build_dashboard(svc)["data"].values())))
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    for expr in exprs:
        assert f'service="{SERVICE}"' in expr and f'namespace="{NAMESPACE}"' in expr, expr
    rules = [{"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_dashboard_panels_and_config_map() -> None:
    config_map = dashboard.build_dashboard(service())
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == f"{SERVICE}-dashboard"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(config_map["data"]) == [f"{SERVICE}.json"]
    board = json.loads(config_map["data"][f"{SERVICE}.json"])
    titles = [panel["title"] for panel in board["panels"]]
    assert titles == [
        "Request rate",
        "Task latency",
        "Active agents",
        "Hourly cost",
        "Hourly cost by model",
        "Hourly cost by route",
        "Tool-call mix",
        "Tool calls by tool and outcome",
        "Tool latency p95",
        "MCP servers up",
        "Error rate",
        "Queue depth",
        "Provider health",
        "Canary weight",
    ]
    queries = " ".join(t["expr"] for panel in board["panels"] for t in panel["targets"])
    for series in (
        constants.SERIES_REQUESTS,
        constants.SERIES_LATENCY_BUCKET,
        constants.METRIC_ACTIVE,
        constants.SERIES_COST,
        constants.SERIES_MODEL_COST,
        constants.METRIC_TOOL_CALLS,
        constants.METRIC_QUEUE_DEPTH,
        constants.METRIC_PROVIDER_HEALTHY,
        constants.METRIC_TOOL_SERVER_UP,
        constants.METRIC_TOOL_LATENCY + "_bucket",
        dashboard.CANARY_WEIGHT_METRIC,
    ):
        assert series + "{" in queries, series
    latency = next(panel for panel in board["panels"] if panel["title"] == "Task latency")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    assert len({(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]}) == len(board["panels"])


def test_service_monitor_scrapes_the_runtime_services() -> None:
    svc = service()
    monitor = monitoring.build_service_monitor(svc)
    children = builders.build_children(svc)
    services = [c for c in children if c["kind"] == "Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert len(selected) == len(services) == 2
    scraped_ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    service_ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert scraped_ports == service_ports == {"http", "metrics"}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in children if d["kind"] == "Deployment"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == constants.METRICS_PATH
        # the target's labels win over what a pod exposes (docs/security.md)
        assert endpoint["honorLabels"] is False
        # `service` from the pod's AgentService label, which every pod carries
        (rule,) = endpoint["relabelings"]
        assert rule["targetLabel"] == constants.LABEL_SERVICE
        assert rule["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"]
        assert all(labels["app.kubernetes.io/instance"] == svc.metadata.name for labels in pod_labels)
    # `track` from the pod's own label, which every pod carries
    assert monitor["spec"]["podTargetLabels"] == [constants.LABEL_TRACK]
    assert all(labels[constants.LABEL_TRACK] in {"stable", "canary"} for labels in pod_labels)
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The ports the Services name are the containers' metrics ports.
    deployments = [c for c in children if c["kind"] == "Deployment"]
    container_ports = {
        p["name"]: p["containerPort"]
        for d in deployments
        for c in d["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert container_ports == {"http": constants.API_PORT, "metrics": constants.WORKER_METRICS_PORT}

"""The MCP tool-server alert of the PrometheusRule, unit-tested by the real `promtool`.

Covers: a service with MCP servers gets `AgentServiceToolServerDown` (one without, none); it fires
for a server no pod is connected to (`agent_tool_server_up` 0 on every pod) once `for` has passed,
with the server in its labels and description; it stays silent while one pod is connected, before
`for`, and for another service's series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_operator.api import models
from agent_operator.manifests import monitoring

from agent_runtime import constants
from tests.integration.ship.test_alert_rules import NAMESPACE, SERVICE, promtool, run_tests, service

ALERT = monitoring.ALERT_TOOL_SERVER_DOWN


def with_tools() -> models.AgentService:
    plain = service()
    tools = {"mcpServers": [{"name": "crm", "url": "http://crm.tools.svc/mcp"}, {"name": "time", "command": ["t"]}]}
    body = plain.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["spec"]["tools"] = tools
    return models.AgentService.from_manifest(body)


def up(server: str, pod: str, values: str, svc: str = SERVICE) -> dict[str, str]:
    labels = f'service="{svc}",namespace="{NAMESPACE}",track="stable",pod="{pod}",server="{server}"'
    return {"series": f"{constants.METRIC_TOOL_SERVER_UP}{{{labels}}}", "values": values}


def expected(svc: models.AgentService, server: str) -> dict[str, Any]:
    rule = next(r for r in monitoring.build_alerts(svc) if r["alert"] == ALERT)
    annotations = dict(rule["annotations"])
    annotations["description"] = annotations["description"].replace("{{ $labels.server }}", server)
    return {"exp_labels": {**rule["labels"], "server": server}, "exp_annotations": annotations}


def test_only_services_with_mcp_servers_get_the_alert() -> None:
    assert ALERT not in {r["alert"] for r in monitoring.build_alerts(service())}
    assert ALERT in {r["alert"] for r in monitoring.build_alerts(with_tools())}


def test_the_alert_fires_for_a_server_no_pod_reaches(tmp_path: Path) -> None:
    svc = with_tools()
    series = [
        up("crm", "p-1", "0x80"),  # crm: down on both pods
        up("crm", "p-2", "0x80"),
        up("time", "p-1", "0x80"),  # time: one pod still connected
        up("time", "p-2", "1x80"),
        up("crm", "p-1", "0x80", svc="other-agent"),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": ALERT, "exp_alerts": []},  # `for` (5m) not elapsed
                {"eval_time": "10m", "alertname": ALERT, "exp_alerts": [expected(svc, "crm")]},
            ],
        }
    ]
    run_tests(tmp_path, svc, tests)
    assert promtool("--version").returncode == 0

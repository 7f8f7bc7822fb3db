"""An AgentService with MCP tools on the real control plane, the operator running as the chart's ServiceAccount.

Covers: the API server accepts `spec.tools` (an MCP server as a Service with a header from a Secret,
a stdio server, restricted egress) and refuses a server with both url and command (the CRD's CEL
rule); while the header's Secret is missing the service reports `SecretMissing` naming
`spec.tools.mcpServers[0].headers[0].secretKeyRef`; once it exists the service reconciles to Ready,
and the live children equal what `agentctl render` prints: the worker reads the header from the
Secret key (never its value), the runtime ConfigMap carries the servers and their policy, the
NetworkPolicy opens egress to the MCP Service's namespace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agent_operator.manifests import naming

from tests.cluster.harness import OperatorProcess, wait_for
from tests.cluster.test_lifecycle import agent_service, apply, children, condition, rendered
from tests.support import controlplane as cp

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

FIELD = "spec.tools.mcpServers[0].headers[0].secretKeyRef"


@pytest.fixture
def namespace(controlplane: cp.ControlPlane) -> str:
    name = "tools-mcp"
    controlplane.kubectl("create", "namespace", name)
    return name


def tools_service(namespace: str) -> dict[str, Any]:
    return agent_service(
        "toolful",
        namespace,
        tools={
            "builtin": ["calculator"],
            "mcpServers": [
                {
                    "name": "time",
                    "url": f"http://mcp-time.{namespace}.svc:8000/mcp",
                    "headers": [{"name": "Authorization", "secretKeyRef": {"name": "mcp-tokens", "key": "bearer"}}],
                    "allowTools": ["get_current_time"],
                    "sideEffects": "none",
                },
                {"name": "clock", "command": ["mcp-server-time", "--local-timezone", "UTC"]},
            ],
        },
        networkPolicy={"enabled": True, "restrictEgress": True},
    )


def test_an_mcp_server_service_renders_reconciles_and_names_a_missing_header_secret(
    controlplane: cp.ControlPlane, installed_operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    plane = controlplane
    # The MCP server's Service (its pods are the tenant's business; the agent only names the URL).
    mcp_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "mcp-time", "namespace": namespace},
        "spec": {"selector": {"app": "mcp-time"}, "ports": [{"port": 8000, "targetPort": 8000}]},
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(mcp_service))

    both = tools_service(namespace)
    both["metadata"]["name"] = "refused"
    both["spec"]["tools"]["mcpServers"][1]["url"] = "http://x/mcp"
    refused = plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(both), check=False)
    assert refused.returncode != 0
    assert "set url (streamable HTTP) or command (stdio), exactly one" in refused.stderr

    body = tools_service(namespace)
    apply(plane, body)
    missing = wait_for(
        lambda: (c := condition(plane, namespace, "toolful", "SecretMissing")).get("status") == "True" and c,
        timeout=60,
        what="SecretMissing",
    )
    assert FIELD in missing["message"] and "mcp-tokens" in missing["message"], missing

    plane.kubectl(
        "create", "secret", "generic", "mcp-tokens", "-n", namespace, "--from-literal=bearer=Bearer s3cret",
    )  # fmt: skip
    wait_for(
        lambda: condition(plane, namespace, "toolful", "SecretMissing").get("status") == "False",
        timeout=60,
        what="SecretMissing cleared",
    )
    plane.kubectl("wait", "--for=condition=Ready", "agsvc/toolful", "-n", namespace, "--timeout=120s", timeout=150)

    expected = rendered(body, tmp_path)
    live = children(plane, namespace, "toolful")
    assert expected.keys() <= live.keys()
    worker = live["Deployment/toolful-worker"]["spec"]["template"]["spec"]["containers"][0]
    header_env = next(e for e in worker["env"] if e["name"] == "AGENT_MCP_TIME_HEADER_0")
    assert header_env == {
        "name": "AGENT_MCP_TIME_HEADER_0",
        "valueFrom": {"secretKeyRef": {"name": "mcp-tokens", "key": "bearer"}},
    }
    config = json.loads(live["ConfigMap/toolful-config"]["data"]["config.json"])
    assert config == json.loads(expected["ConfigMap/toolful-config"]["data"]["config.json"])
    time_server, clock = config["mcp_servers"]
    assert time_server["headers"] == {"Authorization": "AGENT_MCP_TIME_HEADER_0"}
    assert time_server["allow_tools"] == ["get_current_time"] and time_server["side_effects"] == "none"
    assert clock["command"] == ["mcp-server-time", "--local-timezone", "UTC"] and clock["side_effects"] == "external"
    assert "s3cret" not in json.dumps(live)
    policy = live[f"NetworkPolicy/{naming.network_policy_name('toolful')}"]["spec"]
    assert policy == expected[f"NetworkPolicy/{naming.network_policy_name('toolful')}"]["spec"]
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]} in policy[
        "egress"
    ]

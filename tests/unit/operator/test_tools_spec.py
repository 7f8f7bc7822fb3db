"""`spec.tools`: the models' rules, what reaches the runtime and the pods, and the egress it opens.

Covers: a server needs exactly one of url and command, headers only with url and never a header the
transport sets; link-local and metadata hosts are refused in every spelling (`endpoints.host_problem`),
loopback and Service names are not; names are unique; the runtime config carries every policy and
names each header's environment variable, which the pods fill from the Secret key (never the value);
the Secret references name the field for SecretMissing; `restrictEgress` opens DNS, Redis, the
providers and each MCP host (a Service's namespace, an address, or anywhere but link-local).
"""

from __future__ import annotations

from typing import Any

import pytest
from agent_operator.api import endpoints, models
from agent_operator.kube import secrets
from agent_operator.manifests import naming, runtimeconfig, workloads
from pydantic import ValidationError

from agent_runtime import constants
from agent_runtime.config import RuntimeConfig
from tests.unit.operator.test_workloads import V, svc

TIME = {"name": "time", "url": "http://time.tools.svc:8000/mcp"}
TOKEN = {"name": "X-Api-Key", "secretKeyRef": {"name": "crm-token", "key": "token"}}


def tools(**spec: Any) -> models.AgentService:
    return svc(tools=spec)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"name": "a"}, "exactly one"),
        ({"name": "a", "url": "http://x/mcp", "command": ["x"]}, "exactly one"),
        ({"name": "a", "command": ["x"], "headers": [TOKEN]}, "headers apply to a url server only"),
        ({"name": "a", "url": "http://x/mcp", "headers": [{**TOKEN, "name": "Host"}]}, "set by the MCP transport"),
        ({"name": "a", "url": "http://x/mcp", "headers": [TOKEN, TOKEN]}, "header names must be unique"),
        ({"name": "a", "url": "ftp://x/mcp"}, "should match pattern"),
        ({"name": "a", "url": "http://169.254.169.254/latest"}, "link-local or metadata"),
        ({"name": "a", "url": "http://metadata.google.internal/x"}, "metadata service"),
        ({"name": "a", "url": "http://[fe80::1]:80/mcp"}, "link-local"),
        ({"name": "a", "url": "http://2852039166/mcp"}, "link-local"),
        ({"name": "a", "url": "http://0xa9fea9fe/mcp"}, "link-local"),
        ({"name": "a", "url": "http://[::ffff:169.254.169.254]/mcp"}, "link-local"),
        ({"name": "a_b", "command": ["x"]}, "should match pattern"),
        ({"name": "a", "command": ["x"], "sideEffects": "some"}, "Input should be"),
        ({"name": "a", "command": ["x"], "timeoutSeconds": 0}, "greater than or equal"),
    ],
)
def test_bad_mcp_servers_are_refused(server: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        tools(mcpServers=[server])


def test_server_names_and_modules_are_unique() -> None:
    with pytest.raises(ValidationError, match="repeated: time"):
        tools(mcpServers=[TIME, TIME])
    with pytest.raises(ValidationError, match=r"repeated: a\.b"):
        tools(python=[{"module": "a.b"}, {"module": "a.b"}])
    with pytest.raises(ValidationError, match="should match pattern"):
        tools(python=[{"module": "a b"}])


def test_host_problem_allows_loopback_services_and_public_hosts() -> None:
    for url in ("http://127.0.0.1:9/mcp", "http://time/mcp", "https://tools.example.com/mcp", "http://[::1]/x"):
        assert endpoints.host_problem(url) is None, url
    assert endpoints.host_problem("http://0.0.0.0/x") is not None
    assert endpoints.host_problem("http://instance-data./x") is not None


def test_the_runtime_gets_every_policy_and_header_env_names_never_values() -> None:
    s = tools(
        builtin=["calculator"],
        mcpServers=[
            {**TIME, "headers": [TOKEN], "allowTools": ["get_current_time"], "timeoutSeconds": 5},
            {"name": "clock", "command": ["mcp-server-time"], "sideEffects": "none", "maxResultBytes": 1000},
        ],
        python=[{"module": "acme.tools", "allowTools": ["lookup"]}],
    )
    config = RuntimeConfig.model_validate_json(runtimeconfig.config_data(s)[runtimeconfig.CONFIG_KEY])
    assert config.builtin_tools == ["calculator"]
    time, clock = config.mcp_servers
    assert time.url == TIME["url"] and time.allow_tools == ["get_current_time"] and time.timeout_seconds == 5
    assert time.side_effects == "external"  # the default
    env_name = constants.mcp_header_env("time", 0)
    assert time.headers == {"X-Api-Key": env_name}
    assert clock.command == ["mcp-server-time"] and clock.side_effects == "none" and clock.max_result_bytes == 1000
    assert config.python_tools[0].module == "acme.tools" and config.python_tools[0].allow_tools == ["lookup"]
    env = workloads.env(s, naming.Track.STABLE)
    assert {"name": env_name, "valueFrom": {"secretKeyRef": {"name": "crm-token", "key": "token"}}} in env
    refs = secrets.references(s.spec)
    assert secrets.Reference("crm-token", "token", "spec.tools.mcpServers[0].headers[0].secretKeyRef") in refs
    missing = secrets.problems(refs, {"llm-keys": {"data": {"anthropic": "eA=="}}})
    assert missing == ["Secret 'crm-token' not found (spec.tools.mcpServers[0].headers[0].secretKeyRef)"]


def test_egress_is_open_unless_restricted() -> None:
    open_ = workloads.build_network_policy(tools(mcpServers=[TIME]).model_copy(), operator_version=V)
    assert open_["spec"]["policyTypes"] == ["Ingress"] and "egress" not in open_["spec"]


def test_restricted_egress_reaches_what_the_spec_names() -> None:
    s = svc(
        networkPolicy={"enabled": True, "restrictEgress": True},
        tools={
            "mcpServers": [
                TIME,
                {"name": "local", "url": "http://crm:8080/mcp"},
                {"name": "ip", "url": "http://10.1.2.3:9000/mcp"},
                {"name": "saas", "url": "https://tools.example.com/mcp"},
                {"name": "stdio", "command": ["x"]},
            ]
        },
    )
    spec = workloads.build_network_policy(s, operator_version=V)["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns, redis, providers, time, local, ip, saas = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert [p["port"] for p in redis["ports"]] == [6379]
    assert [p["port"] for p in providers["ports"]] == [443, 8000]  # the public API, the local baseURL
    assert time == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tools"}}}]}
    assert local == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}]}
    assert ip == {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"protocol": "TCP", "port": 9000}]}
    assert saas["ports"] == [{"protocol": "TCP", "port": 443}]
    for rule in (redis, providers, saas):
        assert {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}} in rule["to"]
        assert {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10"]}} in rule["to"]


def test_sentinel_ports_come_from_the_url() -> None:
    s = svc(
        redis={"url": "redis+sentinel://s1:26379,[fd00::1]:26380/mymaster/0"},
        networkPolicy={"enabled": True, "restrictEgress": True},
    )
    redis = workloads.egress_rules(s)[1]
    assert [p["port"] for p in redis["ports"]] == [26379, 26380]

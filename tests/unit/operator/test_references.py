"""Object references in the spec cannot leave the AgentService's namespace.

Covers, for every kind of reference (a provider's `apiKeySecretRef`, an `env[].secretKeyRef`,
`redis.urlSecretRef`, `serviceAccountName`, the network policy's namespaces): hostile names (`..`,
`/`, `%2e%2e`, `%2f`, `../../kube-system/secrets/admin-creds`, ...) and hostile keys are refused
by pydantic AND by the generated CRD's schema (the same pattern, one source of truth), each at the
field that holds them; names as Kubernetes itself accepts them (DNS subdomains up to 253
characters, keys of `[-._a-zA-Z0-9]`) still pass both.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from agent_operator.api import crd, models, validation

from tests.support.crdcheck import schema_errors

HOSTILE_NAMES = [
    "..",
    ".",
    "/",
    "%2e%2e",
    "%2f",
    "%2E%2E%2F",
    "../../kube-system/secrets/admin-creds",
    "kube-system/admin-creds",
    "a/../b",
    "llm-keys?watch=true",
    "llm-keys#x",
    "Admin",
    "-x",
    "x-",
    "a..b",
    "",
    "a" * 254,
]
HOSTILE_KEYS = ["..", ".", "/", "../token", "..token", "a/b", "%2f", "a b", "", "k" * 254]
VALID_NAMES = ["llm-keys", "a", "a.b-c", "0", "x" * 253]
VALID_KEYS = ["api-key", "API_KEY", ".hidden", "a..b", "config.json", "k" * 253]

Spec = dict[str, Any]
Setter = Callable[[Spec, str], str]  # puts a value into the spec, returns the field path it went to


def provider_key(spec: Spec, value: str, part: str) -> str:
    spec["model"]["providers"][0]["apiKeySecretRef"][part] = value
    return f"spec.model.providers[0].apiKeySecretRef.{part}"


def env_secret(spec: Spec, value: str, part: str) -> str:
    ref = {"name": "tools", "key": "token", part: value}
    spec["env"] = [{"name": "TOOL_TOKEN", "secretKeyRef": ref}]
    return f"spec.env[0].secretKeyRef.{part}"


def redis_secret(spec: Spec, value: str, part: str) -> str:
    spec["redis"] = {"urlSecretRef": {"name": "redis", "key": "url", part: value}}
    return f"spec.redis.urlSecretRef.{part}"


NAME_SETTERS: dict[str, Setter] = {
    "provider apiKeySecretRef": lambda s, v: provider_key(s, v, "name"),
    "env secretKeyRef": lambda s, v: env_secret(s, v, "name"),
    "redis urlSecretRef": lambda s, v: redis_secret(s, v, "name"),
    "serviceAccountName": lambda s, v: (s.update(serviceAccountName=v), "spec.serviceAccountName")[1],
}
KEY_SETTERS: dict[str, Setter] = {
    "provider apiKeySecretRef": lambda s, v: provider_key(s, v, "key"),
    "env secretKeyRef": lambda s, v: env_secret(s, v, "key"),
    "redis urlSecretRef": lambda s, v: redis_secret(s, v, "key"),
}


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": "agent", "namespace": "team-a"},
        "spec": {
            "model": {"providers": [{"name": "claude", "model": "m", "apiKeySecretRef": {"name": "k", "key": "a"}}]},
            "redis": {"url": "redis://r:6379/0"},
        },
    }


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result: dict[str, Any] = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def with_value(setter: Setter, value: str) -> tuple[dict[str, Any], str]:
    body = manifest()
    path = setter(body["spec"], value)
    return body, path


def pydantic_problems(body: dict[str, Any]) -> list[validation.Problem]:
    try:
        models.AgentService.from_manifest(copy.deepcopy(body))
    except pydantic.ValidationError as exc:
        return validation.problems_from(exc)
    return []


def assert_refused(body: dict[str, Any], path: str, schema: dict[str, Any]) -> None:
    problems = pydantic_problems(body)
    assert [p.path for p in problems] == [path], problems
    assert problems[0].message.startswith("must "), problems  # a rule in words, not a regex or a trace
    errors = schema_errors(body, schema)
    assert errors and all(e.rsplit(": ", 1)[0] == path for e in errors), errors
    assert {e.rsplit(": ", 1)[1] for e in errors} <= {"pattern", "maxLength", "minLength"}, errors


@pytest.mark.parametrize("value", HOSTILE_NAMES, ids=repr)
@pytest.mark.parametrize("kind", NAME_SETTERS)
def test_hostile_names_are_refused_by_the_model_and_the_crd(kind: str, value: str, schema: dict[str, Any]) -> None:
    body, path = with_value(NAME_SETTERS[kind], value)
    assert_refused(body, path, schema)


@pytest.mark.parametrize("value", HOSTILE_KEYS, ids=repr)
@pytest.mark.parametrize("kind", KEY_SETTERS)
def test_hostile_keys_are_refused_by_the_model_and_the_crd(kind: str, value: str, schema: dict[str, Any]) -> None:
    body, path = with_value(KEY_SETTERS[kind], value)
    assert_refused(body, path, schema)


@pytest.mark.parametrize("value", ["kube-system/x", "..", "Team-A", "a.b"], ids=repr)
def test_namespaces_of_the_network_policy_are_dns_labels(value: str, schema: dict[str, Any]) -> None:
    body = manifest()
    body["spec"]["networkPolicy"] = {"allowFromNamespaces": [value]}
    assert_refused(body, "spec.networkPolicy.allowFromNamespaces[0]", schema)
    body = manifest()
    body["spec"]["networkPolicy"] = {"monitoringNamespace": value}
    assert_refused(body, "spec.networkPolicy.monitoringNamespace", schema)


@pytest.mark.parametrize("kind", NAME_SETTERS)
def test_kubernetes_names_still_pass(kind: str, schema: dict[str, Any]) -> None:
    for value in VALID_NAMES:
        body, _ = with_value(NAME_SETTERS[kind], value)
        assert pydantic_problems(body) == [], value
        assert schema_errors(body, schema) == [], value


@pytest.mark.parametrize("kind", KEY_SETTERS)
def test_kubernetes_keys_still_pass(kind: str, schema: dict[str, Any]) -> None:
    for value in VALID_KEYS:
        body, _ = with_value(KEY_SETTERS[kind], value)
        assert pydantic_problems(body) == [], value
        assert schema_errors(body, schema) == [], value


def test_the_crd_carries_the_models_rule() -> None:
    """One source of truth: the CRD's patterns are the models' constants, not copies."""
    text = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    ref = text["properties"]["redis"]["properties"]["urlSecretRef"]["properties"]
    assert (ref["name"]["pattern"], ref["name"]["maxLength"]) == (models.DNS_SUBDOMAIN, 253)
    assert (ref["key"]["pattern"], ref["key"]["maxLength"]) == (models.DATA_KEY, 253)
    # RE2 (the API server's regexp engine) has no lookaround: the patterns must not need it
    for pattern in (models.DNS_SUBDOMAIN, models.DATA_KEY):
        assert not re.search(r"\(\?[=!<]", pattern)

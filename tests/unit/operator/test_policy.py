"""The platform's policy as the operator enforces it (`policy.py`), and the provider hosts every spec refuses.

Covers (issue 27, points 4 and 9): an image outside the allowed repositories (a longer repository
name sharing the prefix included), a ServiceAccount not listed, a token automount, a pod
annotation outside the allowed prefixes, each refused naming the field and what is allowed; a
policy not enforced refuses none of them; the closed list of provider hosts; `baseURL` hosts in
link-local and metadata ranges refused by the spec's own validation, in every spelling a resolver
accepts.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import pytest
from agent_operator import policy
from agent_operator.api import models

BASE: dict[str, Any] = {
    "model": {"providers": [{"name": "primary", "model": "claude-test", "baseURL": "http://llm.internal:8080/"}]},
    "redis": {"url": "redis://redis:6379/0"},
}
RULES = policy.Policy(
    enforced=True,
    allowed_images=("agentops/agent-runtime", "registry.example/team/"),
    allowed_service_accounts=("agent",),
    allowed_pod_annotations=("prometheus.io/", "team.example/"),
)


def spec(**fields: Any) -> models.AgentServiceSpec:
    body = copy.deepcopy(BASE)
    body.update(fields)
    return models.AgentServiceSpec.model_validate(body)


@pytest.mark.parametrize(
    "image",
    [
        "agentops/agent-runtime",
        "agentops/agent-runtime:1.2",
        "agentops/agent-runtime@sha256:ab",
        "registry.example/team/x:1",
    ],
)
def test_allowed_images(image: str) -> None:
    assert RULES.violations(spec(image=image)) == []


@pytest.mark.parametrize(
    "image", ["agentops/agent-runtime-evil:1", "evil/agent-runtime:1", "registry.example/teamx/y", "agentops/agent"]
)
def test_other_images_are_refused(image: str) -> None:
    (violation,) = RULES.violations(spec(image=image))
    assert violation.startswith(f"spec.image {image!r} is not allowed (allowed: 'agentops/agent-runtime'")


def test_service_account_automount_and_annotations() -> None:
    assert RULES.violations(spec(serviceAccountName="agent", podAnnotations={"prometheus.io/scrape": "true"})) == []
    found = RULES.violations(
        spec(
            serviceAccountName="admin",
            automountServiceAccountToken=True,
            podAnnotations={"container.apparmor.security.beta.kubernetes.io/api": "unconfined", "team.example/x": "1"},
        )
    )
    assert found == [
        "spec.serviceAccountName 'admin' is not allowed (allowed: 'agent')",
        "spec.automountServiceAccountToken is not allowed (policy.allowTokenAutomount is false)",
        "spec.podAnnotations 'container.apparmor.security.beta.kubernetes.io/api' not allowed"
        " (allowed prefixes: 'prometheus.io/', 'team.example/')",
    ]
    assert (
        policy.Policy(enforced=True, allow_token_automount=True).violations(spec(automountServiceAccountToken=True))
        == []
    )


def test_empty_lists_allow_nothing_and_an_unenforced_policy_everything() -> None:
    risky = spec(image="x/y:1", serviceAccountName="a", automountServiceAccountToken=True, podAnnotations={"a": "b"})
    assert len(policy.Policy(enforced=True).violations(risky)) == 4
    assert policy.Policy().violations(risky) == []
    assert policy.Policy(enforced=True).violations(spec()) == []  # the bundled image, no extras


def test_closed_list_of_provider_hosts() -> None:
    closed = policy.Policy(allowed_provider_hosts=("llm.internal",))
    assert closed.violations(spec()) == []
    other = spec(model={"providers": [{"name": "p", "model": "m", "baseURL": "https://elsewhere.example/v1"}]})
    assert closed.violations(other) == [
        "spec.model.providers[p].baseURL host 'elsewhere.example' is not allowed (allowed: 'llm.internal')"
    ]
    public = spec(model={"providers": [{"name": "p", "model": "m", "apiKeySecretRef": {"name": "k", "key": "k"}}]})
    assert closed.violations(public) == []  # no baseURL: the provider's public API


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254.:80/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://0251.0376.0251.0376/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1%25eth0]/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.GOOGLE.INTERNAL./",
        "http://100.100.100.200/",
    ],
)
def test_link_local_and_metadata_hosts_are_refused(url: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="link-local or cloud metadata endpoint"):
        spec(model={"providers": [{"name": "p", "model": "m", "baseURL": url}]})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "https://api.example.com/v1", "http://10.0.0.5:8080/"])
def test_other_hosts_pass(url: str) -> None:
    spec(model={"providers": [{"name": "p", "model": "m", "baseURL": url}]})

"""A new auth token rolls the pods, on the dev cluster with the real operator.

Covers: every Deployment's pod template carries a digest of the auth token (never the token);
writing a new token into the auth Secret (as `kubectl patch secret` would) changes the digest on
both Deployments, keeps the new token (the operator does not write the old one back) and keeps
`status.revision` (a credential is not a new revision to canary); the digest is stable at steady
state (no template churn). The runtime refusing the old token after the roll is shown end to end
in tests/e2e/test_token_rotation_e2e.py.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
from agent_operator.kube import secrets

from tests.integration.operator.conftest import Operator, agent_service, child_writes, eventually, ready_service

DIGEST = secrets.TOKEN_DIGEST_ANNOTATION


def digests(op: Operator) -> dict[str, str]:
    children = op.children()
    return {
        name: child["spec"]["template"]["metadata"]["annotations"].get(DIGEST, "")
        for name, child in children.items()
        if name.startswith("Deployment/")
    }


def token(op: Operator) -> str:
    return base64.b64decode(op.children()["Secret/demo-auth"]["data"]["token"]).decode()


async def test_a_new_token_rolls_every_pod_template(operator: Operator) -> None:
    await ready_service(operator, agent_service())
    old = token(operator)
    revision = operator.status()["revision"]
    assert set(digests(operator).values()) == {secrets.token_digest(old)}
    for child in operator.children().values():  # a digest, never the token, on any object but the Secret
        if child["kind"] != "Secret":
            assert old not in str(child)

    mark = operator.cluster.request_count
    await operator.settle(passes=3)  # steady state: the digest does not churn
    assert child_writes(operator.cluster.writes(mark)) == set()

    new = "rotated-" + "x" * 40
    patch: dict[str, Any] = {"data": {"token": base64.b64encode(new.encode()).decode()}}
    async with aiohttp.ClientSession() as http:
        response = await http.patch(
            f"{operator.url}/api/v1/namespaces/default/secrets/demo-auth",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status == 200, await response.text()
    await eventually(lambda: set(digests(operator).values()) == {secrets.token_digest(new)})
    assert len(digests(operator)) == 2
    assert token(operator) == new  # kept, not reverted to the old one
    await operator.cluster.simulate_rollouts()
    await eventually(lambda: operator.status().get("phase") == "Ready")
    assert operator.status()["revision"] == revision


def test_the_digest_moves_with_the_token_and_hides_it() -> None:
    first, second = secrets.token_digest("a" * 43), secrets.token_digest("b" * 43)
    assert first == secrets.token_digest("a" * 43) and first != second
    assert len(first) == secrets.TOKEN_DIGEST_LENGTH and "a" * 8 not in first

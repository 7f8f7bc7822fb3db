"""Rotating the auth token end to end: the pods roll and the runtime refuses the old token.

The real operator on the dev cluster, the harness kubelet running each Deployment's pods as
runtime processes (their env resolved from the live Secret, as a kubelet would at pod start).
Covers: the old token is accepted before; after a new token is written into the auth Secret, the
operator stamps the new token's digest on the pod templates, the API pods restart, and then every
API pod answers 401 to the old token and 202 to the new one; no canary rollout is started for a
credential change (canaries are enabled on this service).
"""

from __future__ import annotations

import base64

import httpx
import pytest
from agent_operator.kube import secrets
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.stack import NAMESPACE, Stack, service_body

from agent_runtime import constants
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.slow


async def submit(stack: Stack, token: str) -> list[int]:
    """The answer of every API pod to one task submitted with `token`."""
    codes = []
    async with httpx.AsyncClient(timeout=5.0, headers={"authorization": f"Bearer {token}"}) as http:
        for pod in stack.kubelet.api_pods():
            response = await http.post(f"http://{pod.address}{constants.TASKS_PATH}", json={"input": "Say hello."})
            codes.append(response.status_code)
    return codes


async def test_old_token_is_refused_after_the_roll(stack: Stack) -> None:
    async with LocalModelServer() as model:
        await stack.serve(service_body("rotate", model.url, stack.redis_url))
        old = stack.token("rotate")
        assert await submit(stack, old) == [202]
        revision = stack.status("rotate")["revision"]
        before = {p.name for p in stack.kubelet.api_pods()}

        new = "rotated-" + "y" * 40
        secret = stack.cluster.live("v1/secrets", NAMESPACE, "rotate-auth")
        assert secret is not None
        secret["data"] = {"token": base64.b64encode(new.encode()).decode()}
        await stack.cluster.put_object("v1/secrets", secret)

        digest = secrets.token_digest(new)

        def rolled() -> bool:
            deployments = stack.deployments("rotate").values()
            annotations = [d["spec"]["template"]["metadata"]["annotations"] for d in deployments]
            pods = stack.kubelet.api_pods()
            return (
                all(a.get(secrets.TOKEN_DIGEST_ANNOTATION) == digest for a in annotations)
                and bool(pods)
                and not {p.name for p in pods} & before
            )

        await eventually(rolled, timeout=60)
        assert not stack.kubelet.errors, stack.kubelet.errors
        assert await submit(stack, old) == [401] * len(stack.kubelet.api_pods())
        assert await submit(stack, new) == [202] * len(stack.kubelet.api_pods())
        assert stack.canary("rotate").get("phase") == "Idle"  # a credential change is not a canary
        assert stack.status("rotate")["revision"] == revision

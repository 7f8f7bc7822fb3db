"""The operator enforces the platform's policy itself, for clusters where the admission policy is off.

Covers (issue 27, point 4), with the real operator on the dev cluster and the flags the chart
passes: an AgentService with an image outside the allowed repositories gets the PolicyViolation
condition naming the field, phase Failed, and no child at all (no write but its status and
Events); fixed, it gets its children and PolicyViolation turns False; a spec within the rules
never shows the condition.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import AsyncIterator

import pytest
from agent_operator import opmetrics, policy, run
from agentops_dev import devcluster

from tests.integration.operator.conftest import Operator, agent_service, eventually

RULES = policy.Policy(
    enforced=True,
    allowed_images=("agentops/agent-runtime",),
    allowed_pod_annotations=("prometheus.io/",),
)


@dataclasses.dataclass
class PolicedOperator(Operator):
    def config(self, resync: float) -> run.Config:
        return dataclasses.replace(super().config(resync), admission=RULES)


@pytest.fixture
async def policed(cluster: tuple[devcluster.DevCluster, str]) -> AsyncIterator[Operator]:
    emulator, url = cluster
    handle = PolicedOperator(cluster=emulator, url=url, metrics=opmetrics.create())
    await handle.start()
    try:
        yield handle
    finally:
        await handle.halt()


async def test_a_spec_breaking_the_policy_gets_no_children(policed: Operator) -> None:
    body = agent_service(image="evil.example/miner:1", podAnnotations={"sidecar.istio.io/inject": "false"})
    await policed.put(body)
    violation = await eventually(lambda: (c := policed.condition("PolicyViolation")).get("status") == "True" and c)
    assert violation["reason"] == "NotAllowed"
    assert violation["message"] == (
        "spec.image 'evil.example/miner:1' is not allowed (allowed: 'agentops/agent-runtime'); "
        "spec.podAnnotations 'sidecar.istio.io/inject' not allowed (allowed prefixes: 'prometheus.io/')"
    )
    assert policed.status()["phase"] == "Failed"
    assert (policed.condition("Ready")["status"], policed.condition("Ready")["reason"]) == ("False", "PolicyViolation")
    await policed.settle(passes=3)
    assert policed.children() == {}

    fixed = copy.deepcopy(policed.service())
    assert fixed is not None
    fixed["spec"]["image"] = "agentops/agent-runtime:1.0"
    fixed["spec"]["podAnnotations"] = {"prometheus.io/scrape": "true"}
    await policed.put(fixed)
    await eventually(lambda: "Deployment/demo-worker" in policed.children())
    allowed = await eventually(lambda: (c := policed.condition("PolicyViolation")).get("status") == "False" and c)
    assert allowed["reason"] == "Allowed"


async def test_a_spec_within_the_policy_never_shows_the_condition(policed: Operator) -> None:
    await policed.put(agent_service(image="agentops/agent-runtime@sha256:0123"))
    await eventually(lambda: "Deployment/demo-worker" in policed.children())
    assert policed.condition("PolicyViolation") == {}

"""Evaluation gates end to end: the real operator on the dev cluster, runtime processes per pod,
the evaluation Job run by the dev kubelet as `agent-runtime eval --in-process-api`, user load on.

Covers: a version whose model answers 3 of 10 cases wrong with no error (same latency and cost,
every call 200) is rolled back by its `before` suite, the status, an Event and the rollback reason
naming the failed cases, `agentservice_evaluation_accuracy` 0.7; its model never saw a user task
(only the suite's), while the stable model kept serving the load; then a good version passes the
gate (accuracy 1) and goes on to the steps, promoted by the analyses.
"""

from __future__ import annotations

from typing import Any

import pytest
from agentops_dev.localmodel import Faults, LocalModelServer
from agentops_dev.stack import Stack, service_body

from tests.e2e.conftest import eventually

pytestmark = pytest.mark.slow

RATE = 8.0
CASES = [
    (12, 7, 3),
    (9, 8, 1),
    (15, 4, 6),
    (7, 7, 7),
    (3, 11, 2),
    (21, 2, 5),
    (6, 6, 6),
    (13, 3, 4),
    (8, 9, 10),
    (5, 12, 8),
]


def suite() -> str:
    lines = [
        "name: smoke",
        "thresholds: {minAccuracy: 0.85, maxCostPerTaskUSD: 2.0, maxP95LatencySeconds: 30}",
        "cases:",
    ]
    for i, (a, b, c) in enumerate(CASES):
        lines += [
            f"  - name: crate-{i}",
            f'    input: "A crate holds {a}*{b}+{c} apples. How many?"',
            f"    expect: {{numeric: {{value: {a * b + c}}}, toolCalled: {{name: calculator}}}}",
        ]
    return "\n".join(lines) + "\n"


def set_model(url: str) -> Any:
    def change(body: dict[str, Any]) -> None:
        body["spec"]["model"]["providers"][0]["baseURL"] = url

    return change


async def test_a_version_answering_wrong_is_stopped_before_any_user_task(stack: Stack) -> None:
    name = "judged"
    async with (
        LocalModelServer() as stable_model,
        LocalModelServer(faults=Faults(wrong_per_ten=3)) as wrong_model,
        LocalModelServer() as good_model,
    ):
        body = service_body(
            name, stable_model.url, stack.redis_url, steps=[50, 100], interval="3s", minRequests=3,
            evaluation={"before": ["smoke"]},
        )  # fmt: skip
        body["spec"]["evaluation"] = {"suites": [{"name": "smoke", "inline": suite(), "timeoutSeconds": 120}]}
        await stack.serve(body)
        async with stack.load(name, RATE) as load:
            await stack.edit(name, set_model(wrong_model.url))
            gated = await eventually(lambda: (c := stack.canary(name)).get("gate") == "before" and c, timeout=30)
            assert gated["weight"] == 0 and gated["phase"] == "Progressing"
            served_before = len(stable_model.completed())
            rolled = await eventually(lambda: (c := stack.canary(name)).get("phase") == "RolledBack" and c, timeout=120)
            assert len(stable_model.completed()) > served_before  # users were served all along, by stable
        assert load.accepted > 0
        assert "EvaluationFailed" in str(stack.canary(name)["rollouts"][-1])
        assert "suite smoke: fail, accuracy 0.700" in rolled["message"]
        assert "failed cases: crate-" in rolled["message"] and "numeric: expected" in rolled["message"]
        (result,) = rolled["evaluation"]
        assert (result["suite"], result["gate"], result["verdict"], result["accuracy"]) == (
            "smoke",
            "before",
            "fail",
            0.7,
        )
        assert len(result["failedCases"]) == 3 and result["passed"] == 7
        # The wrong model saw the suite's tasks only, and answered every call without an error.
        assert wrong_model.calls and all(c.prompt.startswith("A crate holds") for c in wrong_model.calls)
        assert all(c.outcome == "ok" for c in wrong_model.calls)
        await eventually(lambda: len(stack.events(name, "EvaluationFailed")) == 1)
        await eventually(
            lambda: (
                stack.sample("agentservice_evaluation_accuracy", service=name, namespace="default", suite="smoke")
                == 0.7
            )
        )
        await eventually(lambda: set(stack.deployments(name)) == {f"{name}-api", f"{name}-worker"})

        # A good version passes the gate and goes on to the steps.
        async with stack.load(name, RATE):
            await stack.edit(name, set_model(good_model.url))
            stepped = await eventually(
                lambda: (c := stack.canary(name)).get("weight") == 50 and c.get("gate") == "" and c, timeout=120
            )
            assert [r["verdict"] for r in stepped["evaluation"]] == ["pass"]
            assert stepped["evaluation"][0]["accuracy"] == 1.0
            await eventually(lambda: stack.canary(name).get("phase") == "Promoted", timeout=90)
        assert any(c.prompt == "Say hello." for c in good_model.calls)  # users reached it after the gate


async def test_at_each_step_suites_gate_a_step_that_serves_users(stack: Stack) -> None:
    """`atEachStep`: at weight 50 the candidate's API takes user tasks while its workers read only its
    lane until the suite passes; then they serve users and the analyses promote it."""
    name = "stepped"
    async with LocalModelServer() as stable_model, LocalModelServer() as candidate_model:
        body = service_body(
            name, stable_model.url, stack.redis_url, steps=[50, 100], interval="3s", minRequests=3,
            evaluation={"atEachStep": ["smoke"]},
        )  # fmt: skip
        body["spec"]["evaluation"] = {"suites": [{"name": "smoke", "inline": suite(), "timeoutSeconds": 120}]}
        await stack.serve(body)
        async with stack.load(name, RATE):
            await stack.edit(name, set_model(candidate_model.url))
            gated = await eventually(lambda: (c := stack.canary(name)).get("gate") == "step:50" and c, timeout=30)
            assert gated["weight"] == 50
            passed = await eventually(
                lambda: (c := stack.canary(name)).get("gate") == "" and c.get("evaluation") and c, timeout=120
            )
            assert [(r["gate"], r["verdict"]) for r in passed["evaluation"]] == [("step:50", "pass")]
            # While the gate stood, the candidate's model answered the suite only.
            first_user_call = next((c for c in candidate_model.calls if c.prompt == "Say hello."), None)
            suite_calls = [c for c in candidate_model.calls if c.prompt.startswith("A crate holds")]
            assert suite_calls and (first_user_call is None or first_user_call.number > suite_calls[-1].number)
            await eventually(lambda: stack.canary(name).get("phase") == "Promoted", timeout=90)
        assert any(c.prompt == "Say hello." for c in candidate_model.calls)

"""The agent loop's checkpoints around external tool calls (`Agent._call_tools`), with a real registry.

Covers: within one step, an external call's id is checkpointed before it is sent and its result as soon
as it is back; a resumed step reuses a stored result, does not send a call that was started but has
no stored result (the model gets an "outcome unknown" error), and sends the calls not made yet; a
side-effect-free tool is not checkpointed call by call; the finished step leaves no partial state.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from agent_runtime.agent import Agent
from agent_runtime.metrics import Metrics
from agent_runtime.tasks import Checkpoint
from agent_runtime.tools import Policy, Tool, ToolRegistry


def agent_with(calls: list[str]) -> Agent:
    def record(tool_input: dict[str, Any]) -> str:
        calls.append(tool_input["note"])
        return f"recorded {tool_input['note']}"

    registry = ToolRegistry(
        [
            Tool("record", "Record.", {"type": "object"}, record, Policy(side_effects="external")),
            Tool("peek", "Read.", {"type": "object"}, lambda i: f"saw {i['note']}", Policy(side_effects="none")),
        ],
        metrics=Metrics(CollectorRegistry(), service="s", track="stable"),
    )
    agent = Agent.__new__(Agent)  # only the tool part of the loop is exercised here
    agent.tools = registry
    return agent


def use(n: int, name: str = "record") -> dict[str, Any]:
    return {"type": "tool_use", "id": f"u{n}", "name": name, "input": {"note": f"n{n}"}}


async def test_a_resumed_step_reuses_results_and_never_resends_a_started_external_call() -> None:
    calls: list[str] = []
    agent = agent_with(calls)
    uses = [use(1), use(2), use(3), use(4, "peek")]
    stored = {"type": "tool_result", "tool_use_id": "u1", "content": "recorded n1"}
    state = Checkpoint(
        messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": uses}],
        step=1,
        tool_results={"u1": stored},
        tools_started=["u2"],
    )
    saved: list[Checkpoint] = []

    async def save(checkpoint: Checkpoint) -> None:
        saved.append(checkpoint)

    after = await agent._call_tools(state, uses, save)

    assert calls == ["n3"]  # u1 reused, u2 not sent again, u3 sent once
    results = after.messages[-1]["content"]
    assert results[0] == stored
    assert results[1]["is_error"] and "its outcome is unknown" in results[1]["content"]
    assert results[2]["content"] == "recorded n3"
    assert results[3]["content"] == "saw n4"
    assert after.tool_results == {} and after.tools_started == []
    # u2's error stored; u3 started, then its result stored; the finished step: four saves, in order
    assert [sorted(c.tool_results) for c in saved] == [["u1", "u2"], ["u1", "u2"], ["u1", "u2", "u3"], []]
    assert [c.tools_started for c in saved] == [[], ["u3"], [], []]

"""A Python tool module as a user's package would ship one (`spec.tools.python[].module`), for the tests."""

from __future__ import annotations

from typing import Any

from agent_runtime.tools import Tool


def _shout(tool_input: dict[str, Any]) -> str:
    return str(tool_input["text"]).upper() * int(tool_input.get("times", 1))


def _secret(tool_input: dict[str, Any]) -> str:
    return "never offered"


TOOLS = [
    Tool(
        name="shout",
        description="The text in capitals, repeated.",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
            "required": ["text"],
        },
        func=_shout,
    ),
    Tool(name="secret", description="Left out by allowTools.", input_schema={"type": "object"}, func=_secret),
]

"""Prompts kept under a token ceiling (`spec.model.maxInputTokens`): the ways to shorten a history. Pure.

Before each call the agent counts the request's input tokens — the provider's count-tokens
endpoint when it has one (the Anthropic Messages API, the local model server), else
`budget.input_token_bound` (the request's UTF-8 bytes plus framing: an upper bound, about four
times the real count, so the ceiling then holds with room to spare). Over the ceiling, it tries
`shortened(messages)`, mildest first, and sends the first that fits (found by bisection: the
candidates only get shorter), keeping the full transcript in the checkpoint.

`trim: drop` (the only mode built): kept are the first user message (the task) and the latest turn
(the last assistant message and the user message answering it); the others are shortened, oldest
first — first each older tool result's content longer than `DROPPED` is replaced by it (the
`tool_result` block stays, so every `tool_use` keeps its answer), then whole older turns (an assistant message and the
user message answering it, together) are removed. When even the last candidate is over the ceiling,
the turn alone is too long and the task fails (`single_turn_message`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["DROPPED", "shortened", "single_turn_message"]

DROPPED: Final = "[tool output removed to keep the prompt under maxInputTokens]"
Message = dict[str, Any]


def _drop_results(message: Message) -> Message:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    blocks = [
        {**block, "content": DROPPED}
        if isinstance(block, dict)
        and block.get("type") == "tool_result"
        and len(str(block.get("content"))) > len(DROPPED)
        else block
        for block in content
    ]
    return {**message, "content": blocks}


def _has_results(message: Message) -> bool:
    """Whether the message holds a tool output longer than what would replace it."""
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" and len(str(b.get("content"))) > len(DROPPED)
        for b in content
    )


def shortened(messages: Sequence[Message]) -> list[list[Message]]:
    """Every shorter version of `messages` (`trim: drop`), mildest first; empty when nothing can go. Pure."""
    if len(messages) <= 3:  # the task, and the latest turn: nothing older to shorten
        return []
    first, middle, latest = messages[0], list(messages[1:-2]), list(messages[-2:])
    out: list[list[Message]] = []
    current = copy.deepcopy(middle)
    for index, message in enumerate(current):
        if message.get("role") == "user" and _has_results(message):
            current[index] = _drop_results(message)
            out.append([first, *current, *latest])
    # then whole turns, oldest first: an assistant message with the user message answering it
    while len(current) >= 2:
        current = current[2:]
        out.append([first, *current, *latest])
    return out


def single_turn_message(tokens: int, ceiling: int, counted_by: str) -> str:
    """Why a task fails when even its shortest prompt is over the ceiling. Pure."""
    return (
        f"the prompt is {tokens} input tokens ({counted_by}) even with the older history removed;"
        f" the ceiling is {ceiling} (model.maxInputTokens): the task and its latest turn alone are too long,"
        " so the call was not made"
    )

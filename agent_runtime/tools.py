"""The tool registry: a few safe built-ins, and user tools loaded by import path.

A tool is a name, a description, a JSON schema for its input and a function (sync or async) from
that input to text. Built-ins have no side effects, which is what makes re-running the tools of a
step after a crash harmless. A user module either exposes `TOOLS` (a list of `Tool`) or a
`register(registry)` function; `RuntimeConfig.tools` lists such modules.
"""

from __future__ import annotations

import ast
import datetime
import importlib
import inspect
import math
import operator
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_runtime import errors

__all__ = ["Tool", "ToolError", "ToolRegistry", "builtin_registry", "calculate", "load_registry"]

ToolFunc = Callable[[dict[str, Any]], "str | Awaitable[str]"]


class ToolError(Exception):
    """A tool refused its input; the message goes back to the model as an error tool_result."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    func: ToolFunc = field(compare=False)

    def schema(self) -> dict[str, Any]:
        """The tool as the Messages API wants it in `tools`."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


class ToolRegistry:
    """Tools by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise errors.ConfigError(f"tools: two tools are named {tool.name!r}")
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [self._tools[name].schema() for name in self.names()]

    async def call(self, name: str, tool_input: dict[str, Any]) -> str:
        """Run one tool; raise `ToolError` for an unknown tool or input it rejects."""
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(self.names())}")
        try:
            out = tool.func(tool_input)
            if inspect.isawaitable(out):
                out = await out
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        return str(out)


# --- built-ins ---

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 1000
_MAX_EXPRESSION = 500


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic (numbers, + - * / // % **, parentheses) without `eval`."""
    if len(expression) > _MAX_EXPRESSION:
        raise ToolError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    return _evaluate(tree.body)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ToolError(f"exponent {right} too large (limit {_MAX_EXPONENT})")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ToolError("division by zero") from exc
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolError("result is not a finite number")
        return value  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolError(f"unsupported element in expression: {ast.dump(node)[:80]}")


def _calculator(tool_input: dict[str, Any]) -> str:
    expression = tool_input.get("expression")
    if not isinstance(expression, str):
        raise ToolError("calculator needs {'expression': '<arithmetic>'}")
    value = calculate(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


def _current_time(tool_input: dict[str, Any]) -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _word_count(tool_input: dict[str, Any]) -> str:
    text = tool_input.get("text")
    if not isinstance(text, str):
        raise ToolError("word_count needs {'text': '<text>'}")
    return str(len(text.split()))


BUILTINS: tuple[Tool, ...] = (
    Tool(
        name="calculator",
        description="Evaluate an arithmetic expression (+ - * / // % ** and parentheses) exactly.",
        input_schema={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. (12 + 7) * 3"}},
            "required": ["expression"],
        },
        func=_calculator,
    ),
    Tool(
        name="current_time",
        description="The current date and time in UTC, ISO 8601.",
        input_schema={"type": "object", "properties": {}},
        func=_current_time,
    ),
    Tool(
        name="word_count",
        description="Count the words (whitespace-separated) of a text.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        func=_word_count,
    ),
)


def builtin_registry() -> ToolRegistry:
    return ToolRegistry(BUILTINS)


def load_registry(import_paths: Iterable[str]) -> ToolRegistry:
    """The built-ins plus the tools of each module named (see the module docstring for the contract)."""
    registry = builtin_registry()
    for path in import_paths:
        try:
            module = importlib.import_module(path)
        except ImportError as exc:
            raise errors.ConfigError(f"tools: cannot import {path!r}: {exc}") from exc
        register = getattr(module, "register", None)
        user_tools = getattr(module, "TOOLS", None)
        if callable(register):
            register(registry)
        elif isinstance(user_tools, list | tuple) and all(isinstance(t, Tool) for t in user_tools):
            for tool in user_tools:
                registry.register(tool)
        else:
            raise errors.ConfigError(
                f"tools: module {path!r} has neither TOOLS (a list of Tool) nor register(registry)"
            )
    return registry

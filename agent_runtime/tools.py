"""The tool registry: a few safe built-ins, and user tools loaded by import path.

A tool is a name, a description, a JSON schema for its input and a function (sync or async) from
that input to text. Built-ins have no side effects, which is what makes re-running the tools of a
step after a crash harmless. A user module either exposes `TOOLS` (a list of `Tool`) or a
`register(registry)` function; `RuntimeConfig.tools` lists such modules.
"""

from __future__ import annotations

import ast
import asyncio
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
# Every intermediate integer stays below 2**_MAX_BITS (about 1,200 digits): the bound is checked
# before each operation from its operands' sizes, so `((9**999)**999)**999` is refused at its second
# power instead of computing a number of millions of digits (seconds of one core, the worker's event
# loop and its probes stuck behind it). Floats need no bound: they overflow to an error.
_MAX_BITS = 4096
# The evaluation runs in a thread, off the event loop; the bounds above keep it to microseconds,
# this limit is the backstop.
CALCULATOR_TIMEOUT_SECONDS = 2.0


def calculate(expression: str) -> int | float:
    """Evaluate arithmetic (numbers, + - * / // % **, parentheses) without `eval`, every step bounded."""
    if len(expression) > _MAX_EXPRESSION:
        raise ToolError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise ToolError(f"not an arithmetic expression: {expression!r}") from exc
    try:
        return _evaluate(tree.body)
    except RecursionError as exc:
        raise ToolError("expression nests too deeply") from exc


def _bits(value: int | float) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_size(op: ast.operator, left: int | float, right: int | float) -> None:
    """Refuse an operation whose integer result could pass `_MAX_BITS`, before it is computed."""
    if isinstance(op, ast.Pow):
        if abs(right) > _MAX_EXPONENT:
            raise ToolError(f"exponent {right} too large (limit {_MAX_EXPONENT})")
        if isinstance(left, int) and isinstance(right, int) and right > 0 and _bits(left) * right > _MAX_BITS:
            raise ToolError(f"result too large: more than {_MAX_BITS} bits")
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) > _MAX_BITS:
        raise ToolError(f"result too large: more than {_MAX_BITS} bits")


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        if _bits(node.value) > _MAX_BITS:
            raise ToolError(f"number too large: more than {_MAX_BITS} bits")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        _check_size(node.op, left, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError as exc:
            raise ToolError("division by zero") from exc
        except OverflowError as exc:  # a float power, or an integer too large to turn into a float
            raise ToolError("result is not a finite number") from exc
        if isinstance(value, float) and not math.isfinite(value):
            raise ToolError("result is not a finite number")
        if isinstance(value, complex):  # a negative number to a fractional power
            raise ToolError("result is not a real number")
        if _bits(value) > _MAX_BITS:  # a sum of two numbers at the bound
            raise ToolError(f"result too large: more than {_MAX_BITS} bits")
        return value  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolError(f"unsupported element in expression: {ast.dump(node)[:80]}")


def _format(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return str(value)


async def _calculator(tool_input: dict[str, Any]) -> str:
    expression = tool_input.get("expression")
    if not isinstance(expression, str):
        raise ToolError("calculator needs {'expression': '<arithmetic>'}")
    # Off the event loop: the worker's other tasks, heartbeats and probes go on meanwhile.
    try:
        value = await asyncio.wait_for(asyncio.to_thread(calculate, expression), CALCULATOR_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        raise ToolError(f"calculation took longer than {CALCULATOR_TIMEOUT_SECONDS} s") from exc
    return _format(value)


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

"""The tool registry: a few safe built-ins, user tools loaded by import path, and MCP servers' tools.

A tool is a name, a description, a JSON schema for its input, a function (sync or async) from that
input to text, and a `Policy`: its timeout, the size its result is cut to, and whether calling it
twice could do harm (`side_effects`). Built-ins have no side effects. A user module either exposes
`TOOLS` (a list of `Tool`) or a `register(registry)` function; `RuntimeConfig.python_tools` (and
the older `tools`) list such modules, each with a policy that applies to all of its tools. The
tools of MCP servers (`mcptools.py`) come from `ToolSource`s, whose lists may change while the
process runs; the registry reads them at each call.

Every call goes through `ToolRegistry.call`: the name must be offered, the input must match the
tool's schema (jsonschema), the call gets the policy's timeout and its result the size cap; the
metrics count it (`agent_tool_calls_total{tool_name,status}`, `agent_tool_call_seconds`).
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import importlib
import inspect
import math
import operator
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from agent_runtime import errors

if TYPE_CHECKING:
    from agent_runtime.config import PythonToolsConfig, ToolPolicyConfig
    from agent_runtime.metrics import Metrics

__all__ = [
    "BUILTINS",
    "Policy",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolSource",
    "builtin_registry",
    "calculate",
    "cap",
    "load_registry",
]

ToolFunc = Callable[[dict[str, Any]], "str | Awaitable[str]"]
SideEffects = Literal["none", "external"]
# A result cut to `max_result_bytes` ends with this note, so the model knows it saw part of it.
TRUNCATED_NOTE = "\n[result truncated: {size} bytes, limit {limit}]"


class ToolError(Exception):
    """A tool refused its input or failed; the message goes back to the model as an error tool_result."""


class ToolInterrupted(ToolError):
    """The call went out but its outcome is unknown (the server's connection was lost during it)."""


@dataclass(frozen=True)
class Policy:
    """What the runtime allows a tool: `timeout_seconds` (None: none), a result cap, whether it may be re-run."""

    timeout_seconds: float | None = None
    max_result_bytes: int | None = None
    side_effects: SideEffects = "none"

    @classmethod
    def of(cls, config: ToolPolicyConfig) -> Policy:
        return cls(config.timeout_seconds, config.max_result_bytes, config.side_effects)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    input_schema: dict[str, Any]
    func: ToolFunc = field(compare=False)
    policy: Policy = Policy()
    source: str = "builtin"  # "builtin", "python:<module>" or "mcp:<server>"

    def schema(self) -> dict[str, Any]:
        """The tool as the Messages API wants it in `tools`."""
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


class ToolSource(Protocol):
    """Tools that may change while the process runs (an MCP server's)."""

    name: str

    def tools(self) -> Sequence[Tool]: ...

    async def settle(self) -> None:
        """Return once a change of the list already announced has been read."""


def cap(text: str, limit: int | None) -> str:
    """`text` cut to `limit` bytes of UTF-8 (never inside a character), with a note when cut."""
    if limit is None:
        return text
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore") + TRUNCATED_NOTE.format(size=len(raw), limit=limit)


class ToolRegistry:
    """Tools by name: the fixed ones (built-ins, Python modules) and those of the sources (MCP servers)."""

    def __init__(
        self, tools: Iterable[Tool] = (), *, sources: Sequence[ToolSource] = (), metrics: Metrics | None = None
    ) -> None:
        self._tools: dict[str, Tool] = {}
        self.sources = list(sources)
        self.metrics = metrics
        self._validators: dict[tuple[str, int], Any] = {}  # a validator, or None for a schema that is not one
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise errors.ConfigError(f"tools: two tools are named {tool.name!r}")
        self._tools[tool.name] = tool

    def all(self) -> dict[str, Tool]:
        """Every tool offered now; a source's tool never shadows a fixed one (sources' names have `__`)."""
        found = dict(self._tools)
        for source in self.sources:
            for tool in source.tools():
                found.setdefault(tool.name, tool)
        return found

    async def settle(self) -> None:
        """Let every source finish reading a tool list it was told changed (before a model call)."""
        for source in self.sources:
            await source.settle()

    def get(self, name: str) -> Tool | None:
        return self.all().get(name)

    def names(self) -> list[str]:
        return sorted(self.all())

    def schemas(self) -> list[dict[str, Any]]:
        tools = self.all()
        return [tools[name].schema() for name in sorted(tools)]

    async def call(self, name: str, tool_input: dict[str, Any]) -> str:
        """Run one tool under its policy; raise `ToolError` for an unknown tool, bad input, a failure."""
        tool = self.get(name)
        if tool is None:
            if self.metrics is not None:
                self.metrics.tool_call("unknown", "error", 0.0)  # a bounded label: never the model's text
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(self.names())}")
        started = time.perf_counter()
        status = "error"
        try:
            self._validate(tool, tool_input)
            out = await self._run(tool, tool_input)
            status = "ok"
            return cap(out, tool.policy.max_result_bytes)
        except TimeoutError:
            status = "timeout"
            raise ToolError(f"{name} timed out after {tool.policy.timeout_seconds:g} s (timeoutSeconds)") from None
        except ToolInterrupted:
            status = "interrupted"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.tool_call(name, status, time.perf_counter() - started)

    async def _run(self, tool: Tool, tool_input: dict[str, Any]) -> str:
        try:
            async with asyncio.timeout(tool.policy.timeout_seconds):
                out = tool.func(tool_input)
                if inspect.isawaitable(out):
                    out = await out
        except (ToolError, TimeoutError):
            raise
        except Exception as exc:
            raise ToolError(f"{tool.name} failed: {type(exc).__name__}: {exc}") from exc
        return str(out)

    def _validate(self, tool: Tool, tool_input: dict[str, Any]) -> None:
        """Check the input against the tool's schema before anything is sent (the model may invent fields)."""
        key = (tool.name, id(tool.input_schema))
        if key not in self._validators:
            validator: Any = None
            try:
                cls = jsonschema.validators.validator_for(tool.input_schema)
                cls.check_schema(tool.input_schema)
                validator = cls(tool.input_schema)
            except jsonschema.exceptions.SchemaError:
                pass  # a server's broken schema: the server itself judges the input
            if len(self._validators) > 1024:  # schemas change with list_changed: keep the memo bounded
                self._validators.clear()
            self._validators[key] = validator
        validator = self._validators[key]
        if validator is None:
            return
        error = jsonschema.exceptions.best_match(validator.iter_errors(tool_input))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "input"
            raise ToolError(f"{tool.name}: invalid input at {where}: {error.message[:300]}")


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


def load_registry(
    import_paths: Iterable[str] = (),
    *,
    builtin: Iterable[str] | None = None,
    python: Iterable[PythonToolsConfig] = (),
    sources: Sequence[ToolSource] = (),
    metrics: Metrics | None = None,
) -> ToolRegistry:
    """The built-ins named (None: all), the tools of each module (see the module docstring for the
    contract; `import_paths` with the default policy, `python` entries with theirs), and `sources`."""
    wanted = None if builtin is None else set(builtin)
    unknown = set() if wanted is None else wanted - {t.name for t in BUILTINS}
    if unknown:
        raise errors.ConfigError(f"tools: no built-in tool named {', '.join(sorted(unknown))}")
    registry = ToolRegistry(
        [t for t in BUILTINS if wanted is None or t.name in wanted], sources=sources, metrics=metrics
    )
    entries: list[tuple[str, Policy, list[str] | None]] = [
        (path, Policy(side_effects="external"), None) for path in import_paths
    ]
    entries += [(str(p.module), Policy.of(p), p.allow_tools) for p in python]
    for path, policy, allow in entries:
        for tool in _module_tools(path):
            if allow is not None and tool.name not in allow:
                continue
            registry.register(replace(tool, policy=policy, source=f"python:{path}"))
    return registry


def _module_tools(path: str) -> list[Tool]:
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise errors.ConfigError(f"tools: cannot import {path!r}: {exc}") from exc
    register = getattr(module, "register", None)
    user_tools = getattr(module, "TOOLS", None)
    if callable(register):
        collected = ToolRegistry()
        register(collected)
        return list(collected.all().values())
    if isinstance(user_tools, list | tuple) and all(isinstance(t, Tool) for t in user_tools):
        return list(user_tools)
    raise errors.ConfigError(f"tools: module {path!r} has neither TOOLS (a list of Tool) nor register(registry)")

"""Evaluation suites: the YAML a team writes, read into one validated model. Pure.

A suite names cases (an input, optional task metadata, what the answer must satisfy, a weight),
how many times each case runs (`runs`: agents are not deterministic) and the thresholds of its
gate. Every bound is explicit: a suite may come from a tenant's ConfigMap, and the Job that runs it
must not be made to submit without end or grade with a pattern that never compiles.
`load_suite` turns any problem into one `SuiteError` naming the field (`cases[2].expect.regex: ...`).
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_runtime.tasks import metadata_problem

__all__ = [
    "MAX_CASES",
    "MAX_RUNS",
    "Case",
    "Expect",
    "JudgeExpect",
    "NumericExpect",
    "Suite",
    "SuiteError",
    "Thresholds",
    "ToolCalledExpect",
    "load_suite",
    "parse_suite",
]

MAX_CASES = 500
MAX_RUNS = 20
MAX_INPUT_CHARS = 100_000
MAX_PATTERN_CHARS = 2_000
MAX_SUITE_BYTES = 4 * 1024 * 1024  # a ConfigMap holds 1 MiB; a file given to agentctl a little more
_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


class SuiteError(ValueError):
    """A suite that cannot be run; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NumericExpect(_Strict):
    """The last number in the answer is `value`, within `tolerance` (absolute)."""

    value: float
    tolerance: float = Field(default=0.0, ge=0)


class ToolCalledExpect(_Strict):
    """The agent called this tool at least once."""

    name: str = Field(min_length=1, max_length=128)


class JudgeExpect(_Strict):
    """A model scores the answer 0-1 against the rubric; the run passes at `minScore` or above."""

    rubric: str = Field(min_length=1, max_length=20_000)
    min_score: float = Field(default=0.7, ge=0, le=1, alias="minScore")
    provider: str | None = Field(
        default=None, max_length=63, description="The service's provider that judges (default: the first)."
    )


class Expect(_Strict):
    """What the answer must satisfy: every grader given must hold (none given: the task succeeds)."""

    contains: list[str] | None = Field(default=None, max_length=100)
    equals: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    regex: str | None = Field(default=None, max_length=MAX_PATTERN_CHARS)
    json_schema: dict[str, Any] | None = Field(default=None, alias="jsonSchema")
    numeric: NumericExpect | None = None
    tool_called: ToolCalledExpect | None = Field(default=None, alias="toolCalled")
    judge: JudgeExpect | None = None

    @field_validator("contains")
    @classmethod
    def _needles(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one string (or leave contains out)")
            if any(not s or len(s) > MAX_INPUT_CHARS for s in value):
                raise ValueError(f"every string must hold 1 to {MAX_INPUT_CHARS} characters")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            problem = metadata_problem(value)  # the same depth and size bounds as task metadata
            if problem is not None:
                raise ValueError(problem.replace("metadata", "schema"))
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.path) or "(root)"
                raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        return value

    def graders(self) -> list[str]:
        """The graders given, in the order they are checked (the judge last: it is the one that costs)."""
        names = ("contains", "equals", "regex", "json_schema", "numeric", "tool_called", "judge")
        return [n for n in names if getattr(self, n) is not None]


class Case(_Strict):
    name: str = Field(min_length=1, max_length=253, pattern=_NAME)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Sent with the task (`intent` labels metrics).")
    expect: Expect = Field(default_factory=Expect)
    weight: float = Field(default=1.0, gt=0, le=1000)

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = metadata_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class Thresholds(_Strict):
    """The gate. Unset cost and latency are not checked; unset accuracy means every run must pass."""

    min_accuracy: float | None = Field(default=None, ge=0, le=1, alias="minAccuracy")
    max_cost_per_task_usd: float | None = Field(default=None, ge=0, alias="maxCostPerTaskUSD")
    max_p95_latency_seconds: float | None = Field(default=None, gt=0, alias="maxP95LatencySeconds")

    def merged(
        self,
        *,
        min_accuracy: float | None = None,
        max_cost_per_task_usd: float | None = None,
        max_p95_latency_seconds: float | None = None,
    ) -> Thresholds:
        """These thresholds with the given ones in their place (command-line flags override the suite)."""
        return Thresholds(
            min_accuracy=self.min_accuracy if min_accuracy is None else min_accuracy,
            max_cost_per_task_usd=self.max_cost_per_task_usd
            if max_cost_per_task_usd is None
            else max_cost_per_task_usd,
            max_p95_latency_seconds=self.max_p95_latency_seconds
            if max_p95_latency_seconds is None
            else max_p95_latency_seconds,
        )

    def effective_min_accuracy(self) -> float:
        return 1.0 if self.min_accuracy is None else self.min_accuracy


class Suite(_Strict):
    name: str = Field(min_length=1, max_length=63, pattern=_NAME)
    runs: int = Field(default=1, ge=1, le=MAX_RUNS, description="How many times each case runs.")
    task_timeout_seconds: float = Field(
        default=300, gt=0, le=3600, alias="taskTimeoutSeconds", description="A run with no answer by then fails."
    )
    cases: list[Case] = Field(min_length=1, max_length=MAX_CASES)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        seen: set[str] = set()
        for i, case in enumerate(self.cases):
            if case.name in seen:
                raise ValueError(f"cases[{i}].name: {case.name!r} is used by an earlier case; names must be unique")
            seen.add(case.name)
        return self

    def judges(self) -> list[tuple[int, JudgeExpect]]:
        """(case index, judge) of every case graded by a model."""
        return [(i, c.expect.judge) for i, c in enumerate(self.cases) if c.expect.judge is not None]


_ALIASES = {
    "json_schema": "jsonSchema",
    "tool_called": "toolCalled",
    "min_score": "minScore",
    "min_accuracy": "minAccuracy",
    "max_cost_per_task_usd": "maxCostPerTaskUSD",
    "max_p95_latency_seconds": "maxP95LatencySeconds",
    "task_timeout_seconds": "taskTimeoutSeconds",
}


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _ALIASES.get(part, part)
    return out


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = _where(tuple(error.get("loc", ())))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        field = where.rsplit(".", 1)[-1]
        message = f"unknown field {field!r}"
        if ".expect." in f".{where}":
            message = f"unknown grader {field!r} (contains, equals, regex, jsonSchema, numeric, toolCalled, judge)"
    return f"{where}: {message}" if where else message


def parse_suite(data: Any) -> Suite:
    """The suite of a decoded YAML/JSON document; `SuiteError` naming the first bad field."""
    if not isinstance(data, dict):
        raise SuiteError("a suite is a mapping with name, cases and optional runs and thresholds")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_first_problem(exc)) from None


def load_suite(text: str) -> Suite:
    """Read a suite from YAML (or JSON) text."""
    if len(text.encode()) > MAX_SUITE_BYTES:
        raise SuiteError(f"the suite is larger than {MAX_SUITE_BYTES} bytes")
    try:
        # Aliases refused: a few lines of anchors expand to billions of nodes (the "billion laughs").
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise SuiteError("YAML anchors and aliases are not accepted in a suite; write each value out")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_suite(data)

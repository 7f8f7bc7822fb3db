"""Suites as written: the issue's YAML shape, and every kind of bad suite named by its field.

Covers: the issue's example parses with aliases (jsonSchema, toolCalled, minScore, thresholds);
defaults (runs 1, minAccuracy unset = every run must pass); unknown grader, bad regex, bad JSON
Schema, empty cases, duplicate case names, zero weight, runs over the bound, unknown top-level
field, metadata nested too deep, YAML that is not a mapping, YAML anchors: each a `SuiteError`
whose message names the field; the command-line thresholds override the suite's.
"""

from __future__ import annotations

import pytest

from agent_runtime.evaluation.suite import SuiteError, Thresholds, load_suite

EXAMPLE = """
name: smoke
cases:
  - name: arithmetic
    input: "A crate holds 12*7+3 apples. How many?"
    metadata: {intent: math}
    expect:
      contains: ["87"]
      numeric: {value: 87, tolerance: 0}
      toolCalled: {name: calculator}
      regex: "\\\\b87\\\\b"
      jsonSchema: {type: object}
      judge: {rubric: "says 87", minScore: 0.5, provider: local}
    weight: 2
  - name: plain
    input: hello
    expect: {equals: "hi"}
thresholds:
  minAccuracy: 0.85
  maxCostPerTaskUSD: 2.0
  maxP95LatencySeconds: 30
"""


def test_the_issue_shape_parses() -> None:
    suite = load_suite(EXAMPLE)
    case = suite.cases[0]
    assert (suite.name, suite.runs, len(suite.cases)) == ("smoke", 1, 2)
    assert case.metadata == {"intent": "math"} and case.weight == 2
    assert case.expect.contains == ["87"]
    assert case.expect.numeric is not None and case.expect.numeric.value == 87
    assert case.expect.tool_called is not None and case.expect.tool_called.name == "calculator"
    assert case.expect.json_schema == {"type": "object"}
    assert case.expect.judge is not None and (case.expect.judge.min_score, case.expect.judge.provider) == (0.5, "local")
    assert case.expect.graders() == ["contains", "regex", "json_schema", "numeric", "tool_called", "judge"]
    assert suite.thresholds == Thresholds(min_accuracy=0.85, max_cost_per_task_usd=2.0, max_p95_latency_seconds=30)
    assert suite.judges() == [(0, case.expect.judge)]


def test_defaults() -> None:
    suite = load_suite("name: s\ncases: [{name: a, input: x}]")
    assert suite.runs == 1 and suite.task_timeout_seconds == 300
    assert suite.cases[0].expect.graders() == [] and suite.cases[0].weight == 1
    assert suite.thresholds.effective_min_accuracy() == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: s\ncases: [{name: a, input: x, expect: {startsWith: x}}]",
            "cases[0].expect.startsWith: unknown grader 'startsWith'",
        ),
        ("name: s\ncases: [{name: a, input: x, expect: {regex: '(unclosed'}}]", "cases[0].expect.regex: not a valid"),
        (
            "name: s\ncases: [{name: a, input: x, expect: {jsonSchema: {type: 12}}}]",
            "cases[0].expect.jsonSchema: not a valid JSON Schema at type",
        ),
        ("name: s\ncases: []", "cases: List should have at least 1 item"),
        ("name: s", "cases: Field required"),
        ("name: s\ncases: [{name: a, input: x}, {name: a, input: y}]", "cases[1].name: 'a' is used by an earlier case"),
        ("name: s\ncases: [{name: a, input: x, weight: 0}]", "cases[0].weight: Input should be greater than 0"),
        ("name: s\nruns: 21\ncases: [{name: a, input: x}]", "runs: Input should be less than or equal to 20"),
        ("name: s\nsteps: 1\ncases: [{name: a, input: x}]", "steps: unknown field 'steps'"),
        ("name: s\ncases: [{name: a, input: ''}]", "cases[0].input: String should have at least 1 character"),
        ("name: s\ncases: [{name: a, input: x, expect: {contains: []}}]", "cases[0].expect.contains: give at least"),
        (
            "name: s\ncases: [{name: a, input: x, expect: {judge: {rubric: r, minScore: 2}}}]",
            "cases[0].expect.judge.minScore: Input should be less than or equal to 1",
        ),
        ("name: s\nthresholds: {minAccuracy: 1.5}\ncases: [{name: a, input: x}]", "thresholds.minAccuracy:"),
        ("- just a list", "a suite is a mapping"),
        ("name: [unclosed", "not valid YAML"),
        ("name: s\nbase: &b {name: a, input: x}\ncases: [*b]", "anchors and aliases are not accepted"),
    ],
)
def test_bad_suites_name_the_field(text: str, message: str) -> None:
    with pytest.raises(SuiteError) as caught:
        load_suite(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_metadata_too_deep_is_refused() -> None:
    deep = "{a: " * 40 + "1" + "}" * 40
    with pytest.raises(SuiteError, match=r"cases\[0\].metadata: .*metadata depth"):
        load_suite(f"name: s\ncases: [{{name: a, input: x, metadata: {deep}}}]")


def test_flags_override_thresholds() -> None:
    suite = load_suite(EXAMPLE)
    merged = suite.thresholds.merged(min_accuracy=0.5, max_p95_latency_seconds=5)
    assert merged == Thresholds(min_accuracy=0.5, max_cost_per_task_usd=2.0, max_p95_latency_seconds=5)
    assert suite.thresholds.merged() == suite.thresholds

"""Every grader on answers that pass and answers that fail, with the reason a rollback would name.

Covers: contains (all strings), equals (trimmed), regex (search), jsonSchema (plain and fenced JSON,
not JSON, schema violation with its path), numeric (last number, tolerance, thousands separators,
no number), toolCalled, judge (score at/below minScore, no score), several graders at once
(reasons joined), no graders (passes); the judge's reply reader and the local model's judge.
"""

from __future__ import annotations

from agentops_dev.localmodel import respond

from agent_runtime.evaluation.graders import Answer, JudgeScore, grade, last_number
from agent_runtime.evaluation.judge import JUDGE_SYSTEM, judge_request, read_score
from agent_runtime.evaluation.suite import Expect


def expect(**data: object) -> Expect:
    return Expect.model_validate(data)


def test_contains() -> None:
    assert grade(expect(contains=["87", "apples"]), Answer("87 apples")).passed
    failed = grade(expect(contains=["87", "pears"]), Answer("87 apples"))
    assert not failed.passed and failed.reason == "contains: [\"pears\"] not in the answer '87 apples'"


def test_equals_trims_whitespace_only() -> None:
    assert grade(expect(equals="yes"), Answer("  yes\n")).passed
    assert grade(expect(equals="yes"), Answer("Yes")).reason == "equals: expected 'yes', got 'Yes'"


def test_regex_searches() -> None:
    assert grade(expect(regex=r"\b87\b"), Answer("it is 87.")).passed
    assert grade(expect(regex=r"^\d+$"), Answer("it is 87")).reason == "regex: '^\\\\d+$' does not match 'it is 87'"


def test_json_schema() -> None:
    schema = {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}
    assert grade(expect(jsonSchema=schema), Answer('{"total": 87}')).passed
    assert grade(expect(jsonSchema=schema), Answer('```json\n{"total": 87}\n```')).passed
    assert grade(expect(jsonSchema=schema), Answer("87")).reason == "jsonSchema: at (root): 87 is not of type 'object'"
    assert grade(expect(jsonSchema=schema), Answer('{"total": "x"}')).reason.startswith("jsonSchema: at total: 'x'")
    assert grade(expect(jsonSchema=schema), Answer("total: 87")).reason.startswith("jsonSchema: the answer is not JSON")


def test_numeric_reads_the_last_number() -> None:
    assert last_number("12*7+3 = 87.") == 87
    assert last_number("about 1,234.5 units") == 1234.5
    assert last_number("none") is None
    assert grade(expect(numeric={"value": 87}), Answer("The answer: 12*7+3 = 87.")).passed
    assert grade(expect(numeric={"value": 87, "tolerance": 1}), Answer("= 88")).passed
    wrong = grade(expect(numeric={"value": 87}), Answer("The answer: 12*7+3 = 88."))
    assert wrong.reason == "numeric: expected 87 ± 0, the answer ends with 88"
    assert grade(expect(numeric={"value": 1}), Answer("no")).reason == "numeric: no number in the answer 'no'"


def test_tool_called() -> None:
    assert grade(expect(toolCalled={"name": "calculator"}), Answer("x", ("calculator",))).passed
    failed = grade(expect(toolCalled={"name": "calculator"}), Answer("x", ("search", "search")))
    assert failed.reason == "toolCalled: 'calculator' was not called (called: search)"
    assert "called: none" in grade(expect(toolCalled={"name": "calculator"}), Answer("x")).reason


def test_judge_threshold_and_missing_score() -> None:
    judged = expect(judge={"rubric": "r", "minScore": 0.7})
    assert grade(judged, Answer("x"), JudgeScore(0.7, "ok")).passed
    assert grade(judged, Answer("x"), JudgeScore(0.5, "vague")).reason == "judge: score 0.50 below 0.70: vague"
    assert grade(judged, Answer("x"), JudgeScore(None, "judge down")).reason == "judge: no score (judge down)"
    assert grade(judged, Answer("x")).reason == "judge: no score (not asked)"


def test_all_graders_must_hold_and_reasons_join() -> None:
    both = expect(contains=["87"], numeric={"value": 87})
    assert grade(both, Answer("87")).passed
    failed = grade(both, Answer("86"))
    assert failed.reason.count(";") == 1 and failed.reason.startswith("contains:")
    assert grade(Expect(), Answer("anything")).passed


def test_read_score() -> None:
    assert read_score('{"score": 0.8, "reason": "fine"}') == JudgeScore(0.8, "fine")
    assert read_score('Here: {"score": 1, "reason": "all"} done').score == 1.0
    assert read_score('{"score": 1.5}').score is None
    assert read_score('{"score": true}').score is None
    assert read_score("great answer").score is None


def test_the_local_models_judge_scores_required_terms() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "system": JUDGE_SYSTEM,
        "messages": judge_request("12*7+3?", "The answer: 12*7+3 = 87.", 'says 87 and "apples"'),
    }
    reply = respond(body, message_id="m1")
    assert read_score(reply["content"][0]["text"]) == JudgeScore(0.5, "1 of 2 required terms; missing apples")

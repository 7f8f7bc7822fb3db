"""Graders: does one answer satisfy a case's `expect`? Pure (the judge's score is passed in).

Each grader answers `(passed, reason)`; a run passes when its task succeeded and every grader given
holds. The reason of a failure says what was expected and what came back, shortened, so a rollback
can name it in an Event. Rules:

- `contains`: every string appears in the answer (case-sensitive substrings);
- `equals`: the answer, surrounding whitespace trimmed, is the string;
- `regex`: the pattern matches somewhere in the answer (`re.search`);
- `jsonSchema`: the answer (a ```json fence around it is allowed) is JSON valid against the schema;
- `numeric`: the last number in the answer is within `tolerance` of `value` (thousands
  separators allowed): the final figure is what an answer concludes with;
- `toolCalled`: the task's transcript holds a call of the named tool;
- `judge`: the score a model gave (0-1, `judge.py`) is at least `minScore`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jsonschema

from agent_runtime.evaluation.suite import Expect

__all__ = ["Answer", "Grade", "JudgeScore", "grade", "last_number", "shorten"]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)
_SHOWN = 120  # characters of an answer a reason quotes


@dataclass(frozen=True)
class Answer:
    """What a finished task gave back."""

    text: str
    tool_calls: Sequence[str] = ()


@dataclass(frozen=True)
class JudgeScore:
    """A judge's verdict on one answer; `score` None when it could not give one (`reason` says why)."""

    score: float | None
    reason: str


@dataclass(frozen=True)
class Grade:
    passed: bool
    reason: str  # "" when passed


def shorten(text: str, limit: int = _SHOWN) -> str:
    """`text` on one line, at most `limit` characters (an ellipsis marks the cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def last_number(text: str) -> float | None:
    """The last number written in `text`, or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        value = float(found[-1].replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _contains(needles: Sequence[str], text: str) -> str:
    missing = [n for n in needles if n not in text]
    if missing:
        return f"contains: {shorten(json.dumps(missing, ensure_ascii=False), 80)} not in the answer {shorten(text)!r}"
    return ""


def _json_schema(schema: dict[str, object], text: str) -> str:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return f"jsonSchema: the answer is not JSON: {shorten(text)!r}"
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"jsonSchema: at {where}: {shorten(error.message, 160)}"
    return ""


def _equals(expect: Expect, answer: Answer, judged: JudgeScore | None) -> str:
    want = expect.equals or ""
    if answer.text.strip() == want.strip():
        return ""
    return f"equals: expected {shorten(want, 60)!r}, got {shorten(answer.text)!r}"


def _regex(expect: Expect, answer: Answer, judged: JudgeScore | None) -> str:
    pattern = expect.regex or ""
    ok = re.search(pattern, answer.text) is not None
    return "" if ok else f"regex: {shorten(pattern, 60)!r} does not match {shorten(answer.text)!r}"


def _numeric(expect: Expect, answer: Answer, judged: JudgeScore | None) -> str:
    want = expect.numeric
    assert want is not None
    value = last_number(answer.text)
    if value is None:
        return f"numeric: no number in the answer {shorten(answer.text)!r}"
    if abs(value - want.value) > want.tolerance:
        return f"numeric: expected {want.value:g} ± {want.tolerance:g}, the answer ends with {value:g}"
    return ""


def _tool_called(expect: Expect, answer: Answer, judged: JudgeScore | None) -> str:
    assert expect.tool_called is not None
    name = expect.tool_called.name
    if name in answer.tool_calls:
        return ""
    called = ", ".join(dict.fromkeys(answer.tool_calls)) or "none"
    return f"toolCalled: {name!r} was not called (called: {shorten(called, 80)})"


def _judge(expect: Expect, answer: Answer, judged: JudgeScore | None) -> str:
    assert expect.judge is not None
    if judged is None or judged.score is None:
        return f"judge: no score ({judged.reason if judged else 'not asked'})"
    if judged.score < expect.judge.min_score:
        why = f": {shorten(judged.reason, 100)}" if judged.reason else ""
        return f"judge: score {judged.score:.2f} below {expect.judge.min_score:.2f}{why}"
    return ""


_GRADERS: dict[str, Callable[[Expect, Answer, JudgeScore | None], str]] = {
    "contains": lambda e, a, _: _contains(e.contains or [], a.text),
    "equals": _equals,
    "regex": _regex,
    "json_schema": lambda e, a, _: _json_schema(e.json_schema or {}, a.text),
    "numeric": _numeric,
    "tool_called": _tool_called,
    "judge": _judge,
}


def grade(expect: Expect, answer: Answer, judged: JudgeScore | None = None) -> Grade:
    """Every grader of `expect` on the answer of a succeeded task; the reasons of those that fail, joined."""
    reasons = [r for r in (_GRADERS[g](expect, answer, judged) for g in expect.graders()) if r]
    return Grade(passed=not reasons, reason="; ".join(reasons))

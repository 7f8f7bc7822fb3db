"""The judge's prompt and the reading of its reply. Pure, and light to import: the local model of
the tests (`agentops_dev.localmodel`) recognises the prompt without loading the provider clients."""

from __future__ import annotations

import json
import re
from typing import Any

from agent_runtime.evaluation.graders import JudgeScore, shorten

__all__ = ["JUDGE_MAX_TOKENS", "JUDGE_SYSTEM", "MAX_JUDGED_CHARS", "judge_request", "read_score"]

JUDGE_SYSTEM = (
    "You are the judge of an evaluation suite.\n"
    "Score how well the answer meets the rubric, from 0 (not at all) to 1 (fully). "
    'Reply with only a JSON object: {"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)
JUDGE_MAX_TOKENS = 256
MAX_JUDGED_CHARS = 20_000  # of the answer and of the task shown to the judge
_OBJECT = re.compile(r"\{[^{}]*\}")


def judge_request(task: str, answer: str, rubric: str) -> list[dict[str, Any]]:
    """The messages of one judging call. Pure."""
    content = (
        f"Rubric:\n{rubric}\n\n"
        f"Task given to the agent:\n{task[:MAX_JUDGED_CHARS]}\n\n"
        f"The agent's answer:\n{answer[:MAX_JUDGED_CHARS]}"
    )
    return [{"role": "user", "content": content}]


def read_score(text: str) -> JudgeScore:
    """The score in a judge's reply: the first JSON object with a number `score` in [0, 1]. Pure."""
    for candidate in _OBJECT.findall(text):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        score = data.get("score") if isinstance(data, dict) else None
        if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
            return JudgeScore(score=float(score), reason=str(data.get("reason") or "")[:500])
    return JudgeScore(score=None, reason=f"the judge's reply holds no score from 0 to 1: {shorten(text, 80)!r}")

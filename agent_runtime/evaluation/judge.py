"""The `judge` grader's model call: one of the service's providers scores an answer 0-1 against a rubric.

The prompt and the reading of the reply are pure (`judge_request`, `read_score`); `Judge` makes the
calls, one per judged run, and counts and prices them apart from the cases' own spend (they are the
evaluation's cost). The provider is the one the judge names, else the service's first. A reply with
no readable score is no score: the run fails with the reason, never a silent pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_runtime import errors
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.evaluation.graders import JudgeScore, shorten
from agent_runtime.evaluation.suite import JudgeExpect
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import Provider, build_provider

__all__ = ["JUDGE_SYSTEM", "Judge", "JudgeSetupError", "judge_request", "pick_provider", "read_score"]

# The local model of the tests recognises this first line (agentops_dev.localmodel) and scores.
JUDGE_SYSTEM = (
    "You are the judge of an evaluation suite.\n"
    "Score how well the answer meets the rubric, from 0 (not at all) to 1 (fully). "
    'Reply with only a JSON object: {"score": <number from 0 to 1>, "reason": "<one sentence>"}.'
)
JUDGE_MAX_TOKENS = 256
MAX_JUDGED_CHARS = 20_000  # of the answer and of the task shown to the judge
_OBJECT = re.compile(r"\{[^{}]*\}")


class JudgeSetupError(ValueError):
    """The suite asks for a judge the configuration cannot provide (the message names the field)."""


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


def pick_provider(config: RuntimeConfig, name: str | None) -> ProviderConfig:
    """The provider a judge names, else the first; `JudgeSetupError` when there is none."""
    if not config.providers:
        raise JudgeSetupError("judge: no provider to judge with (give --config with the service's providers)")
    if name is None:
        return config.providers[0]
    for provider in config.providers:
        if provider.name == name:
            return provider
    known = ", ".join(p.name for p in config.providers)
    raise JudgeSetupError(f"judge.provider: {name!r} is not one of the service's providers ({known})")


@dataclass
class Judge:
    """Scores answers with the service's providers; counts and prices its own calls."""

    config: RuntimeConfig
    environ: Mapping[str, str] | None = None
    calls: int = 0
    cost_usd: float = 0.0
    _providers: dict[str, Provider] = field(default_factory=dict)

    def check(self, judges: Sequence[JudgeExpect]) -> None:
        """Fail before any task runs when a judge names a provider that does not exist."""
        for expect in judges:
            pick_provider(self.config, expect.provider)

    def _provider(self, name: str | None) -> Provider:
        chosen = pick_provider(self.config, name)
        if chosen.name not in self._providers:
            self._providers[chosen.name] = build_provider(chosen, self.config, self.environ)
        return self._providers[chosen.name]

    async def score(self, expect: JudgeExpect, *, task: str, answer: str, run_id: str) -> JudgeScore:
        provider = self._provider(expect.provider)
        try:
            reply = await provider.complete(
                system=JUDGE_SYSTEM,
                messages=judge_request(task, answer, expect.rubric),
                tools=[],
                max_tokens=JUDGE_MAX_TOKENS,
                task_id=run_id,
            )
        except errors.ProviderError as exc:
            self.calls += 1
            return JudgeScore(score=None, reason=f"the judge ({provider.name}) failed: {shorten(str(exc), 160)}")
        self.calls += 1
        self.cost_usd += PriceTable(self.config.prices).cost(reply.model, reply.input_tokens, reply.output_tokens)
        return read_score(reply.text())

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()

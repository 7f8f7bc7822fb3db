"""The `judge` grader's model call: one of the service's providers scores an answer 0-1 against a rubric.

The prompt and the reading of the reply are pure (`judge_request`, `read_score`); `Judge` makes the
calls, one per judged run, and counts and prices them apart from the cases' own spend (they are the
evaluation's cost). The provider is the one the judge names, else the service's first. A reply with
no readable score is no score: the run fails with the reason, never a silent pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agent_runtime import errors
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.evaluation.graders import JudgeScore, shorten
from agent_runtime.evaluation.judgeprompt import JUDGE_MAX_TOKENS, JUDGE_SYSTEM, judge_request, read_score
from agent_runtime.evaluation.suite import JudgeExpect
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import Provider, build_provider

__all__ = ["JUDGE_SYSTEM", "Judge", "JudgeSetupError", "judge_request", "pick_provider", "read_score"]


class JudgeSetupError(ValueError):
    """The suite asks for a judge the configuration cannot provide (the message names the field)."""


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

"""The agent loop: model turns and tool calls up to the step limit, with a checkpoint after every step.

A step is one model call. Its reply is checkpointed (transcript, step count, usage) before anything
else happens, and the tool results that answer it are checkpointed before the next call. Resuming
from a checkpoint therefore never repeats a model call that completed — it is neither re-run nor
re-billed — and at most re-runs the tools of the last step, which are side-effect free. The loop
raises provider and ownership errors; the worker decides what they mean for the task — except two
endings the loop decides itself: when no provider's circuit can take a call (`static` degradation)
the task fails at once with `all providers unavailable` and an honest static message, and when the
task's spend reaches `per_task_budget_usd` it stops with a clear error, its transcript kept.

Before each step the loop asks the providers for the degradation level (`degradation.py`): below
`full` only the `degraded_tools` are offered. The worst level a task ran at is stored with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent_runtime import budget, errors, tracing
from agent_runtime.budget import DailyBudget
from agent_runtime.degradation import STATIC_MESSAGE, Level
from agent_runtime.logging import get_logger
from agent_runtime.metrics import Metrics
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import ProviderSet
from agent_runtime.tasks import Checkpoint, TaskStatus
from agent_runtime.tools import ToolError, ToolRegistry

__all__ = ["Agent", "Outcome", "SaveCheckpoint"]

SaveCheckpoint = Callable[[Checkpoint], Awaitable[None]]
log = get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a run ended (the worker stores it)."""

    status: TaskStatus
    checkpoint: Checkpoint
    result: str | None = None
    error: str | None = None
    degradation: str = Level.FULL.label  # the worst level the task ran at


class Agent:
    """Runs one task's conversation against the providers with the tool registry."""

    def __init__(
        self,
        *,
        providers: ProviderSet,
        tools: ToolRegistry,
        prices: PriceTable,
        metrics: Metrics,
        system_prompt: str,
        max_output_tokens: int,
        degraded_tools: Iterable[str] = (),
        per_task_budget_usd: float | None = None,
        daily_budget: DailyBudget | None = None,
    ) -> None:
        self.providers = providers
        self.tools = tools
        self.prices = prices
        self.metrics = metrics
        self.system_prompt = system_prompt
        self.max_output_tokens = max_output_tokens
        self.degraded_tools = frozenset(degraded_tools)
        self.per_task_budget_usd = per_task_budget_usd
        self.daily_budget = daily_budget

    async def run(
        self, task_id: str, task_input: str, checkpoint: Checkpoint, *, max_steps: int, save: SaveCheckpoint
    ) -> Outcome:
        """Continue the task from `checkpoint` (empty for a new task) until a final answer or the step limit."""
        state = checkpoint if checkpoint.messages else Checkpoint(messages=[{"role": "user", "content": task_input}])
        if checkpoint.messages:
            log.info("task_resumed", step=state.step)
        worst = Level.FULL
        while True:
            last = state.messages[-1]
            if last["role"] == "assistant":
                uses = [b for b in last["content"] if b.get("type") == "tool_use"]
                if not uses:
                    return Outcome(TaskStatus.SUCCEEDED, state, result=_text(last["content"]), degradation=worst.label)
                if self._over_budget(state):
                    return self._budget_outcome(state, worst)
                results = [await self._call_tool(use) for use in uses]
                state = state.model_copy(update={"messages": [*state.messages, {"role": "user", "content": results}]})
                await save(state)
                continue
            if state.step >= max_steps:
                error = f"reached maxStepsPerTask ({max_steps}) without a final answer"
                return Outcome(TaskStatus.FAILED, state, error=error, degradation=worst.label)
            if self._over_budget(state):
                return self._budget_outcome(state, worst)
            level = self.providers.refresh_metrics()
            worst = max(worst, level)
            try:
                state, cost = await self._step(task_id, state, level)
            except errors.AllProvidersUnavailable as exc:
                log.warning("all_providers_unavailable", error=str(exc))
                return Outcome(
                    TaskStatus.FAILED, state, result=STATIC_MESSAGE, error=str(exc), degradation=Level.STATIC.label
                )
            # Spend reaches the shared daily budget before the checkpoint: a crash or a lost claim
            # between the two must not leave a paid call uncounted.
            if self.daily_budget is not None and cost > 0:
                await self.daily_budget.record(cost)
            await save(state)

    def _over_budget(self, state: Checkpoint) -> bool:
        return budget.per_task_exceeded(state.usage.cost_usd, self.per_task_budget_usd)

    def _budget_outcome(self, state: Checkpoint, worst: Level) -> Outcome:
        assert self.per_task_budget_usd is not None
        self.metrics.budget_rejected("per_task")
        error = budget.per_task_message(state.usage.cost_usd, self.per_task_budget_usd, state.step)
        return Outcome(TaskStatus.FAILED, state, error=error, degradation=worst.label)

    def _tool_schemas(self, level: Level) -> list[dict[str, Any]]:
        schemas = self.tools.schemas()
        if level == Level.FULL:
            return schemas
        return [schema for schema in schemas if schema["name"] in self.degraded_tools]

    async def _step(self, task_id: str, state: Checkpoint, level: Level) -> tuple[Checkpoint, float]:
        with tracing.span("agent.step", {"agent.step": state.step + 1, "agent.degradation": level.label}) as span:
            reply = await self.providers.complete(
                system=self.system_prompt,
                messages=state.messages,
                tools=self._tool_schemas(level),
                max_tokens=self.max_output_tokens,
                task_id=task_id,
            )
            cost = 0.0 if reply.cached else self.prices.cost(reply.model, reply.input_tokens, reply.output_tokens)
            span.set(
                {  # names from the OpenTelemetry GenAI conventions; figures only, never the messages
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": reply.provider,
                    "gen_ai.response.model": reply.model,
                    "gen_ai.response.finish_reasons": [reply.stop_reason],
                    "gen_ai.usage.input_tokens": reply.input_tokens,
                    "gen_ai.usage.output_tokens": reply.output_tokens,
                    "agent.cost_usd": cost,
                    "agent.cached": reply.cached,
                }
            )
        self.metrics.spent(cost)  # billed now, whatever happens next
        log.info(
            "step_completed",
            step=state.step + 1,
            provider=reply.provider,
            stop_reason=reply.stop_reason,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            cost_usd=cost,
            cached=reply.cached,
            degradation=level.label,
        )
        content = reply.content or [{"type": "text", "text": ""}]
        checkpoint = Checkpoint(
            messages=[*state.messages, {"role": "assistant", "content": content}],
            step=state.step + 1,
            usage=state.usage.plus(reply.input_tokens, reply.output_tokens, cost),
        )
        return checkpoint, cost

    async def _call_tool(self, use: dict[str, Any]) -> dict[str, Any]:
        name = str(use.get("name"))
        known = name in self.tools.names()
        with tracing.span("agent.tool", {"gen_ai.tool.name": name if known else "unknown"}) as span:
            try:
                output = await self.tools.call(name, dict(use.get("input") or {}))
            except ToolError as exc:
                self.metrics.tool_called(name if known else "unknown", ok=False)
                log.info("tool_failed", tool=name, error=str(exc))
                span.fail("tool error")  # the message may quote the model's arguments: logs only
                return {"type": "tool_result", "tool_use_id": use["id"], "content": str(exc), "is_error": True}
        self.metrics.tool_called(name, ok=True)
        return {"type": "tool_result", "tool_use_id": use["id"], "content": output}


def _text(content: list[dict[str, Any]]) -> str:
    return "".join(str(block.get("text", "")) for block in content if block.get("type") == "text")

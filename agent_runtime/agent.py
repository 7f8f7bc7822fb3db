"""The agent loop: model turns and tool calls up to the step limit, with a checkpoint after every step.

A step is one model call. Its reply is checkpointed (transcript, step count, usage) before anything
else happens, and the tool results that answer it are checkpointed before the next call. Resuming
from a checkpoint therefore never repeats a model call that completed — it is neither re-run nor
re-billed. Tools with `side_effects: external` (by default every MCP and Python tool) are
checkpointed call by call: the id of the call before it is sent, its result as soon as it is back.
A resumed task reuses the stored result, and a call that was sent but whose result was never
stored is not sent again: the model is told its outcome is unknown. Only side-effect-free tools
(the built-ins, `side_effects: none`) may run twice after a crash. The loop
raises provider and ownership errors; the worker decides what they mean for the task — except the
endings the loop decides itself: when no provider's circuit can take a call (`static` degradation)
the task fails at once with `all providers unavailable` and an honest static message; and budgets.

Budgets (`budget.py`): before every model call the loop reserves the call's worst case against
the task's and the day's budget, and after it settles to the real cost (before the checkpoint, so
no paid call goes uncounted). A call whose reservation does not fit is not made: over the
per-task budget the task stops failed, its transcript kept; over the daily one it raises
`BudgetHeld` for the worker to put the task aside (`budget_on_exhausted: hold`) or fails with the
figure (`fail`).

Before each step the loop asks the providers for the degradation level (`degradation.py`): below
`full` only the `degraded_tools` are offered. The worst level a task ran at is stored with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent_runtime import budget, costs, errors, tracing
from agent_runtime.budget import BudgetLedger, Reservation, Scope, Verdict
from agent_runtime.degradation import STATIC_MESSAGE, Level
from agent_runtime.logging import get_logger
from agent_runtime.metrics import Metrics
from agent_runtime.pricing import PriceTable
from agent_runtime.providers import ProviderSet
from agent_runtime.tasks import CallUsage, Checkpoint, TaskStatus, Waiting
from agent_runtime.tools import ToolError, ToolRegistry

__all__ = ["Agent", "Outcome", "SaveCheckpoint"]

SaveCheckpoint = Callable[[Checkpoint], Awaitable[None]]
ROUTE_DEFAULT = "default"  # the route label of calls made without `routing` (one tier: the providers)
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
        ledger: BudgetLedger | None = None,
        on_exhausted: Literal["hold", "fail"] = "hold",
        min_output_tokens: int = 256,
        budget_wait_seconds: float = 30.0,
        on_settled: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.providers = providers
        self.tools = tools
        if tools.metrics is None:
            tools.metrics = metrics  # the registry counts every call (`agent_tool_calls_total`)
        self.prices = prices
        self.metrics = metrics
        self.system_prompt = system_prompt
        self.max_output_tokens = max_output_tokens
        self.degraded_tools = frozenset(degraded_tools)
        self.per_task_budget_usd = per_task_budget_usd
        self.ledger = ledger
        self.on_exhausted = on_exhausted
        self.min_output_tokens = max(1, min(min_output_tokens, max_output_tokens))
        self.budget_wait_seconds = budget_wait_seconds
        self.on_settled = on_settled
        # Failover may send a call to any provider: its worst case is at the dearest of their prices.
        self.call_prices = [prices.price(p.model) for p in providers.providers]
        # A reservation capped to what the day has left prices input and output at the dearest
        # rates of any provider, each on its own: an upper bound of every mix failover may bill.
        self.dearest_input = max((p.input_per_mtok for p in self.call_prices), default=0.0)
        self.dearest_output = max((p.output_per_mtok for p in self.call_prices), default=0.0)
        # Calls are reported under the model the spec configures for the provider that answered: a
        # bounded set (a reply's own model id may carry a date, or anything an endpoint sends).
        self.configured_models = {p.name: p.model for p in providers.providers}

    async def run(
        self,
        task_id: str,
        task_input: str,
        checkpoint: Checkpoint,
        *,
        max_steps: int,
        save: SaveCheckpoint,
        fence: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Continue the task from `checkpoint` (empty for a new task) until a final answer or the step limit.

        `metadata` (the task's) names the user and intent its calls are reported under (`costs.py`).
        """
        metadata = metadata or {}
        user, intent = costs.user_label(metadata), self.metrics.intent(metadata.get("intent"))
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
                state = await self._call_tools(state, uses, save)
                continue
            if state.step >= max_steps:
                error = f"reached maxStepsPerTask ({max_steps}) without a final answer"
                return Outcome(TaskStatus.FAILED, state, error=error, degradation=worst.label)
            if self._over_budget(state):
                return self._budget_outcome(state, worst)
            await self.tools.settle()  # a tool list the server said changed is read before the call
            level = self.providers.refresh_metrics()
            worst = max(worst, level)
            verdict, reservation = await self._reserve(task_id, fence, state, level)
            if not verdict.fits:
                return self._not_made(verdict, state, worst)
            try:
                state = await self._step(task_id, state, level, verdict.output_tokens or self.max_output_tokens)
            except errors.AllProvidersUnavailable as exc:
                await self._release(reservation)
                log.warning("all_providers_unavailable", error=str(exc))
                return Outcome(
                    TaskStatus.FAILED, state, result=STATIC_MESSAGE, error=str(exc), degradation=Level.STATIC.label
                )
            except BaseException:
                # No reply: the call failed, was refused or was cancelled, and is not billed. If the
                # release fails (Redis away) the reservation's expiry brings the money back.
                await self._release(reservation)
                raise
            # Settled before the checkpoint: a crash or a lost claim between the two must not
            # leave a paid call uncounted.
            await self._settle(reservation, state.calls[-1], user=user, intent=intent)
            await save(state)

    async def _reserve(
        self, task_id: str, fence: int, state: Checkpoint, level: Level
    ) -> tuple[Verdict, Reservation | None]:
        """Reserve the next call's worst case (see `budget.py`); without a ledger, only the per-task cap."""
        bound = budget.input_token_bound(self.system_prompt, state.messages, self._tool_schemas(level))
        amount = budget.worst_case(self.call_prices, bound, self.max_output_tokens)
        spent = budget.micros(state.usage.cost_usd)
        if self.ledger is None:
            limit = None if self.per_task_budget_usd is None else budget.micros(self.per_task_budget_usd)
            verdict = budget.decide(
                amount=amount, day_spent=0, day_reserved=0, day_limit=None,
                task_spent=spent, task_reserved=0, task_limit=limit,
            )  # fmt: skip
            return verdict, None
        shrink = None
        if self.ledger.daily_limit is not None:
            shrink = budget.Shrink(
                input_micros=bound * self.dearest_input,
                output_micros=self.dearest_output,
                max_output=self.max_output_tokens,
                min_output=self.min_output_tokens,
            )
        deadline = time.monotonic() + self.budget_wait_seconds
        pause = 0.02
        while True:
            verdict, reservation = await self.ledger.reserve(
                task_id, fence=fence, amount=amount, task_floor=spent, shrink=shrink
            )
            if shrink is not None and not verdict.fits:
                verdict = dataclasses.replace(verdict, least=shrink.amount(shrink.min_output))
            if verdict.scope != Scope.WAIT:
                return verdict, reservation
            if time.monotonic() >= deadline:  # the calls in flight did not give enough back in time
                return dataclasses.replace(verdict, scope=Scope.DAILY), None
            # Calls in flight hold reservations above what they will cost: wait for them to settle
            # rather than hold the task while the day still has money.
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _settle(self, reservation: Reservation | None, call: CallUsage, *, user: str, intent: str) -> None:
        """Replace the reservation by what the call cost, reporting it (`costs.py`) in the same script."""
        if reservation is None or self.ledger is None:
            return
        charge = costs.Charge(
            model=call.model,
            user=user,
            intent=intent,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
        )
        await self.ledger.settle(reservation, call.cost_micros, charge)
        if self.on_settled is not None and call.cost_micros < reservation.amount:
            await self.on_settled()  # money came back: a held task may fit now

    async def _release(self, reservation: Reservation | None) -> None:
        if reservation is not None and self.ledger is not None:
            with contextlib.suppress(errors.AgentRuntimeError):
                await self.ledger.settle(reservation, 0)

    def _not_made(self, verdict: Verdict, state: Checkpoint, worst: Level) -> Outcome:
        """The call did not fit a budget, so it is not made: stop, fail or (raise to) hold."""
        if verdict.scope == Scope.PER_TASK:
            assert self.per_task_budget_usd is not None
            self.metrics.budget_rejected("per_task")
            limit = budget.micros(self.per_task_budget_usd)
            error = budget.per_task_stop_message(verdict, limit, state.step)
            log.info("budget_per_task_stop", needed_micros=verdict.amount, spent_micros=verdict.task_spent)
            return Outcome(TaskStatus.FAILED, state, error=error, degradation=worst.label)
        assert self.ledger is not None and self.ledger.daily_limit is not None
        limit = self.ledger.daily_limit
        self.metrics.budget_rejected("daily")
        if verdict.scope == Scope.DAILY and self.on_exhausted == "hold":
            now = self.ledger.now()
            until = budget.next_midnight(now)
            message = budget.held_message(verdict, limit, until)
            waiting = Waiting(
                reason="budget_exhausted",
                message=message,
                until=until,
                needed_usd=verdict.amount / budget.MICROS,
                least_usd=None if verdict.least is None else verdict.least / budget.MICROS,
                spent_usd=verdict.day_spent / budget.MICROS,
                reserved_usd=verdict.day_reserved / budget.MICROS,
                limit_usd=limit / budget.MICROS,
                since=now,
            )
            raise errors.BudgetHeld(message, waiting=waiting)
        log.info("budget_daily_stop", scope=verdict.scope.value, needed_micros=verdict.amount)
        return Outcome(
            TaskStatus.FAILED, state, error=budget.daily_stop_message(verdict, limit), degradation=worst.label
        )

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
        return [schema for schema in schemas if kept_when_degraded(schema["name"], self.degraded_tools)]

    async def _step(self, task_id: str, state: Checkpoint, level: Level, max_tokens: int) -> Checkpoint:
        with tracing.span("agent.step", {"agent.step": state.step + 1, "agent.degradation": level.label}) as span:
            reply = await self.providers.complete(
                system=self.system_prompt,
                messages=state.messages,
                tools=self._tool_schemas(level),
                max_tokens=max_tokens,
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
        call = CallUsage(
            model=self.configured_models.get(reply.provider, reply.model),
            provider=reply.provider,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            cost_micros=budget.micros(cost),
            cached=reply.cached,
        )
        self.metrics.model_call(call.model, route=ROUTE_DEFAULT, call=call)
        checkpoint = Checkpoint(
            messages=[*state.messages, {"role": "assistant", "content": content}],
            step=state.step + 1,
            usage=state.usage.plus(reply.input_tokens, reply.output_tokens, cost),
            calls=[*state.calls, call],
        )
        return checkpoint

    async def _call_tools(self, state: Checkpoint, uses: list[dict[str, Any]], save: SaveCheckpoint) -> Checkpoint:
        """Answer one step's tool calls, checkpointing around each external one; return the next state."""
        results: list[dict[str, Any]] = []
        for use in uses:
            use_id = str(use.get("id"))
            done = state.tool_results.get(use_id)
            if done is not None:
                results.append(done)
                continue
            tool = self.tools.get(str(use.get("name")))
            external = tool is not None and tool.policy.side_effects == "external"
            if use_id in state.tools_started:
                result = _result(use_id, _UNKNOWN_OUTCOME.format(name=use.get("name")), error=True)
                log.warning("tool_not_repeated", tool=str(use.get("name")))
            else:
                if external:
                    state = state.model_copy(update={"tools_started": [*state.tools_started, use_id]})
                    await save(state)
                result = await self._call_tool(use)
            if external or use_id in state.tools_started:
                started = [i for i in state.tools_started if i != use_id]
                state = state.model_copy(
                    update={"tool_results": {**state.tool_results, use_id: result}, "tools_started": started}
                )
                await save(state)
            results.append(result)
        state = state.model_copy(
            update={
                "messages": [*state.messages, {"role": "user", "content": results}],
                "tool_results": {},
                "tools_started": [],
            }
        )
        await save(state)
        return state

    async def _call_tool(self, use: dict[str, Any]) -> dict[str, Any]:
        name = str(use.get("name"))
        known = self.tools.get(name) is not None
        with tracing.span("agent.tool", {"gen_ai.tool.name": name if known else "unknown"}) as span:
            try:
                output = await self.tools.call(name, dict(use.get("input") or {}))
            except ToolError as exc:
                log.info("tool_failed", tool=name if known else "unknown", error=str(exc))
                span.fail("tool error")  # the message may quote the model's arguments: logs only
                return _result(use["id"], str(exc), error=True)
        return _result(use["id"], output)


_UNKNOWN_OUTCOME = (
    "{name}: this call was sent before the worker running the task stopped, and its outcome is unknown;"
    " it was not sent again because the tool may have side effects (sideEffects: external)"
)


def _result(use_id: Any, content: str, *, error: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use_id, "content": content}
    if error:
        block["is_error"] = True
    return block


def kept_when_degraded(name: str, kept: Iterable[str]) -> bool:
    """Whether `degraded_tools` keeps tool `name`: named exactly, or `<server>__*` for all of a server's."""
    return any(name == entry or (entry.endswith("__*") and name.startswith(entry[:-1])) for entry in kept)


def _text(content: list[dict[str, Any]]) -> str:
    return "".join(str(block.get("text", "")) for block in content if block.get("type") == "text")

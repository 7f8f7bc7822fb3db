"""Budgets as hard caps: reserve before every model call, settle after it (real redis-server, real workers).

Covers: the pure core (UTC day and midnight, micro-dollars rounded up, the input bound against the
local model's own count, the worst case, `decide`, `release_count`); the reserve script agrees with
`decide` on a table of cases; a burst far over the daily budget through four worker processes
with concurrency spends — summed from the model server's own usage — no more than the budget, the
rest of the tasks held (`budget_exhausted`, with the figures and 00:00 UTC), submissions 429 and the
budget gauges exported; a worker SIGKILLed while holding a reservation: the reservation comes back
(the task's next delivery releases it) and a reservation nobody settles expires; the daily rollover
at an injected clock (held on day D, released and run on D+1, the spend on D+1's key); `fail` mode
(failed with the figure, transcript kept); `hold` then a raised budget (the task resumes from its
checkpoint); the per-task stop before the call that could cross `perTaskUSD`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import signal

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer, respond
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime import budget, constants
from agent_runtime.api import create_app
from agent_runtime.budget import MICROS, BudgetLedger, Scope
from agent_runtime.composition import WorkerParts, build_ledger, build_worker
from agent_runtime.config import PriceConfig, RuntimeConfig
from agent_runtime.pricing import PriceTable
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus
from agent_runtime.tools import builtin_registry
from tests.integration.runtime.conftest import AUTH, TOKEN, Fleet

LABELS = {"service": "svc", "track": "stable"}
MODEL = "claude-sonnet-5-5"
SONNET = PriceTable().price(MODEL)


def billed(model_server: LocalModelServer) -> float:
    """What the model server's own usage counts cost, over the calls it answered."""
    prices = PriceTable()
    return sum(prices.cost(MODEL, c.input_tokens, c.output_tokens) for c in model_server.completed())


def first_call_worst_case(cfg: RuntimeConfig, task_input: str) -> int:
    """The reservation of a task's first call, as the agent computes it (µUSD)."""
    tools = builtin_registry().schemas()
    bound = budget.input_token_bound(cfg.system_prompt, [{"role": "user", "content": task_input}], tools)
    return budget.worst_case([SONNET], bound, cfg.max_output_tokens)


# --- the pure core ------------------------------------------------------------------------------


def test_days_midnights_and_micros() -> None:
    noon = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC).timestamp()
    assert budget.day_of(noon) == "2026-03-01"
    assert budget.next_midnight(noon) == noon + 12 * 3600
    assert budget.seconds_until_midnight(noon) == 12 * 3600
    assert budget.seconds_until_midnight(noon + 12 * 3600 - 0.2) == 1
    assert budget.micros(0.1 + 0.2) == 300_000  # binary noise adds no micro-dollar
    assert budget.micros(0.0000001) == 1  # a cost is rounded up, never down to free
    assert budget.micros(0) == 0
    assert budget.daily_message(12.3456, 10) == (
        "budget exhausted until 00:00 UTC: spent $12.35 of the $10.00 daily budget (budget.dailyUSD)"
    )
    assert budget.usd(0.00123) == "$0.0012"


def test_input_bound_is_above_the_model_servers_own_count() -> None:
    system = "You are a helpful agent."
    tools = builtin_registry().schemas()
    for messages in (
        [{"role": "user", "content": "What is 6*7?"}],
        [{"role": "user", "content": "Zähle die Wörter: ünïcödé " * 40}],
    ):
        counted = respond({"system": system, "messages": messages, "tools": tools}, message_id="m")["usage"]
        assert budget.input_token_bound(system, messages, tools) >= counted["input_tokens"]


def test_worst_case_takes_the_dearest_provider() -> None:
    cheap, dear = PriceConfig(input_per_mtok=1, output_per_mtok=5), PriceConfig(input_per_mtok=3, output_per_mtok=15)
    assert budget.worst_case([cheap, dear], 1000, 1000) == 18_000  # $0.003 + $0.015
    assert budget.worst_case([cheap], 1000, 1000) == 6_000
    assert budget.smallest_call([cheap, dear], 1000) == 15_000


@pytest.mark.parametrize(
    ("figures", "scope"),
    [
        ({"day_spent": 0, "day_reserved": 0, "task_spent": 0}, Scope.FITS),
        ({"day_spent": 60, "day_reserved": 30, "task_spent": 0}, Scope.FITS),  # exactly the budget fits
        ({"day_spent": 60, "day_reserved": 31, "task_spent": 0}, Scope.DAILY),
        ({"day_spent": 0, "day_reserved": 0, "task_spent": 41}, Scope.PER_TASK),  # the task's cap first
        ({"day_spent": 95, "day_reserved": 0, "task_spent": 41}, Scope.PER_TASK),
    ],
)
def test_decide(figures: dict[str, int], scope: Scope) -> None:
    verdict = budget.decide(amount=10, day_limit=100, task_limit=50, task_reserved=0, **figures)
    assert verdict.scope == scope and verdict.fits == (scope == Scope.FITS)


def test_decide_never_and_no_limits() -> None:
    common = {"day_spent": 0, "day_reserved": 0, "task_spent": 0, "task_reserved": 0}
    assert budget.decide(amount=101, day_limit=100, task_limit=None, **common).scope == Scope.NEVER
    assert budget.decide(amount=10**12, day_limit=None, task_limit=None, **common).fits


def test_release_count() -> None:
    assert budget.release_count(room=0, smallest_call=10, held=5, most=8) == 0
    assert budget.release_count(room=9, smallest_call=10, held=5, most=8) == 0  # no call could start
    assert budget.release_count(room=35, smallest_call=10, held=5, most=8) == 3
    assert budget.release_count(room=10**6, smallest_call=10, held=5, most=8) == 5
    assert budget.release_count(room=10**6, smallest_call=10, held=50, most=8) == 8
    assert budget.release_count(room=None, smallest_call=10, held=50, most=8) == 8  # the daily budget was removed
    assert budget.release_count(room=100, smallest_call=10, held=0, most=8) == 0


# --- the reserve script -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day_spent", "others", "task_spent", "amount"),
    [(0, [], 0, 10), (60, [20, 10], 0, 10), (60, [20, 11], 0, 10), (0, [], 41, 10), (95, [], 41, 10), (0, [], 0, 101)],
)
async def test_reserve_script_agrees_with_decide(
    redis_client: redis.asyncio.Redis, day_spent: int, others: list[int], task_spent: int, amount: int
) -> None:
    keys = constants.ServiceKeys("default", "svc")
    ledger = BudgetLedger(redis_client, keys=keys, daily_limit_usd=100 / MICROS, per_task_limit_usd=50 / MICROS)
    await redis_client.set(keys.budget_spent(ledger.today()), day_spent)
    await redis_client.set(keys.budget_task("t"), task_spent)
    for n, other in enumerate(others):
        _, held = await ledger.reserve(f"other-{n}", fence=1, amount=other)
        assert held is not None
    verdict, reservation = await ledger.reserve("t", fence=1, amount=amount)
    expected = budget.decide(
        amount=amount, day_spent=day_spent, day_reserved=sum(others), day_limit=100,
        task_spent=task_spent, task_reserved=0, task_limit=50,
    )  # fmt: skip
    assert verdict == expected
    assert (reservation is not None) == expected.fits
    snap = await ledger.snapshot()
    assert snap.reserved == sum(others) + (amount if expected.fits else 0)


async def test_settle_counts_the_real_cost_even_after_the_hold_was_released(redis_client: redis.asyncio.Redis) -> None:
    keys = constants.ServiceKeys("default", "svc")
    ledger = BudgetLedger(redis_client, keys=keys, daily_limit_usd=1.0, per_task_limit_usd=None)
    _, first = await ledger.reserve("t", fence=1, amount=400_000)
    assert first is not None
    # The task's next delivery (fence 2) reserves: the first delivery's hold comes back.
    _, second = await ledger.reserve("t", fence=2, amount=500_000)
    assert second is not None and (await ledger.snapshot()).reserved == 500_000
    # The slow first delivery still settles what its call cost: counted, never lost.
    assert await ledger.settle(first, 1_234) == 1_234
    assert await ledger.settle(second, 0) == 1_234
    snap = await ledger.snapshot()
    assert (snap.spent, snap.reserved, snap.remaining) == (1_234, 0, 1_000_000 - 1_234)
    assert int(await redis_client.get(keys.budget_task("t"))) == 1_234


async def test_a_reservation_nobody_settles_expires(redis_client: redis.asyncio.Redis) -> None:
    keys = constants.ServiceKeys("default", "svc")
    ledger = BudgetLedger(redis_client, keys=keys, daily_limit_usd=1.0, per_task_limit_usd=None, hold_ttl_seconds=0.3)
    _, held = await ledger.reserve("t", fence=1, amount=900_000)
    assert held is not None
    verdict, _ = await ledger.reserve("u", fence=1, amount=200_000)
    assert verdict.scope == Scope.DAILY  # the holder's money is taken while it may be calling
    await eventually(lambda: _reserved(ledger, 0), timeout=5)
    verdict, _ = await ledger.reserve("u", fence=1, amount=200_000)
    assert verdict.fits


async def _reserved(ledger: BudgetLedger, amount: int) -> bool:
    return (await ledger.snapshot()).reserved == amount


async def test_the_day_spent_before_reservations_is_carried_over(redis_client: redis.asyncio.Redis) -> None:
    """A day begun by a runtime that counted USD floats (`spend:<day>`) keeps its spend."""
    keys = constants.ServiceKeys("default", "svc")
    ledger = BudgetLedger(redis_client, keys=keys, daily_limit_usd=1.0, per_task_limit_usd=None)
    await redis_client.set(keys.spend(ledger.today()), "0.9")
    assert (await ledger.snapshot()).spent == 900_000
    verdict, _ = await ledger.reserve("t", fence=1, amount=200_000)
    assert verdict.scope == Scope.DAILY and verdict.day_spent == 900_000


# --- real workers -------------------------------------------------------------------------------


async def test_a_burst_far_over_the_daily_budget_spends_at_most_the_budget(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer, fleet: Fleet
) -> None:
    limit = 0.05
    cfg = config.model_copy(update={"daily_budget_usd": limit, "worker_concurrency": 4})
    queue = TaskQueue.from_config(cfg, redis_client)
    ids = [(await queue.submit(f"What is {n}*7?", max_steps=6)).task_id for n in range(120)]
    model_server.faults.latency_seconds = 0.02  # calls overlap across the 16 slots
    await fleet.run(cfg, count=4)  # burst workers: they exit once nothing is left to run

    spent = billed(model_server)
    assert 0 < spent <= limit, spent
    records = [await queue.get(task_id) for task_id in ids]
    statuses = {r.status for r in records}
    assert statuses == {TaskStatus.SUCCEEDED, TaskStatus.QUEUED}  # none failed, none lost
    held = [r for r in records if r.status == TaskStatus.QUEUED]
    assert len(held) > 60  # far over: most of the burst waits for money
    # Would every task have run, the burst would have cost this much.
    per_task = spent / sum(r.status == TaskStatus.SUCCEEDED for r in records)
    assert per_task * len(ids) > 2 * limit

    ledger = build_ledger(cfg, redis_client)
    snap = await ledger.snapshot()
    assert snap.reserved == 0 and snap.held_tasks == len(held)
    # recorded rounds up, never under the real spend (compared in micro-dollars as the ledger counts:
    # 0.005534 * 1e6 is 5534.000000000001 in binary floating point)
    assert budget.micros(spent) <= snap.spent <= limit * MICROS
    assert snap.spent - budget.micros(spent) <= len(model_server.completed())  # by at most 1 µUSD a call

    registry = CollectorRegistry()
    app = create_app(cfg, redis=redis_client, registry=registry, auth_token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        view = (await api.get(f"{constants.TASKS_PATH}/{held[0].task_id}", headers=AUTH)).json()
        waiting = view["waiting"]
        assert view["status"] == "queued" and waiting["reason"] == "budget_exhausted"
        assert waiting["until"] == budget.next_midnight(waiting["since"]) and waiting["limit_usd"] == limit
        assert waiting["spent_usd"] + waiting["reserved_usd"] + waiting["needed_usd"] > limit
        assert "waiting until" in waiting["message"] and "00:00:00Z" in waiting["message"]
        refused = await api.post(constants.TASKS_PATH, json={"input": "One more"}, headers=AUTH)
        assert refused.status_code == 429 and refused.json()["error"].startswith("budget exhausted until 00:00 UTC")
        assert 1 <= int(refused.headers["retry-after"]) <= 86_400
        await api.get(constants.METRICS_PATH)
    assert registry.get_sample_value("agent_budget_held_tasks", LABELS) == len(held)
    assert registry.get_sample_value("agent_budget_reserved_usd", LABELS) == 0
    assert registry.get_sample_value("agent_budget_spent_usd", LABELS) == snap.spent / MICROS
    assert registry.get_sample_value("agent_budget_remaining_usd", LABELS) == pytest.approx(limit - snap.spent / MICROS)
    assert await queue.depth() == 0  # held tasks are out of the streams: they do not drive autoscaling


async def test_a_sigkilled_workers_reservation_comes_back(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer, fleet: Fleet
) -> None:
    cfg = config.model_copy(update={"daily_budget_usd": 1.0})
    ledger = build_ledger(cfg, redis_client)
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit("What is 6*7?", max_steps=6)).task_id
    model_server.faults.latency_seconds = 60  # the first call hangs: its reservation is held
    await fleet.start(cfg, burst=False, count=1)
    await eventually(model_server.inflight, timeout=20)
    held = (await ledger.snapshot()).reserved
    assert held == first_call_worst_case(cfg, "What is 6*7?")
    fleet.processes[0].signal(signal.SIGKILL)
    assert await fleet.processes[0].wait(10) == -signal.SIGKILL
    assert (await ledger.snapshot()).reserved == held  # the dead worker's call might still be running

    model_server.faults.latency_seconds = 0
    await fleet.start(cfg, burst=True, count=1)  # reclaims the task; its reservation releases the dead one's
    assert await fleet.processes[1].wait(30) == 0, fleet.processes[1].logs()[-2000:]
    record = await queue.get(task_id)
    assert record.status == TaskStatus.SUCCEEDED and record.deliveries == 2
    snap = await ledger.snapshot()
    assert snap.reserved == 0
    assert snap.spent == pytest.approx(record.checkpoint.usage.cost_usd * MICROS, abs=record.checkpoint.step)
    assert await redis_client.hlen(constants.ServiceKeys("default", "svc").budget_holds()) == 0  # type: ignore[misc]


class Clock:
    def __init__(self, at: datetime.datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def worker_at(cfg: RuntimeConfig, redis_client: redis.asyncio.Redis, clock: Clock) -> WorkerParts:
    return build_worker(cfg, redis_client=redis_client, registry=CollectorRegistry(), burst=True, clock=clock)


async def test_daily_rollover_at_an_injected_clock(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    cfg = config.model_copy(update={"daily_budget_usd": 0.05})
    keys = cfg.keys()
    clock = Clock(datetime.datetime(2026, 3, 1, 23, 59, 50, tzinfo=datetime.UTC))
    await redis_client.set(keys.budget_spent("2026-03-01"), 49_000)  # $0.049 of $0.05: no call fits
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit("What is 6*7?", max_steps=6)).task_id

    parts = worker_at(cfg, redis_client, clock)
    try:
        await parts.worker.run()
        record = await queue.get(task_id)
        assert record.status == TaskStatus.QUEUED and record.waiting is not None
        midnight = datetime.datetime(2026, 3, 2, tzinfo=datetime.UTC).timestamp()
        assert record.waiting.until == midnight and record.deliveries == 0
        assert "waiting until 2026-03-02T00:00:00Z" in record.waiting.message
        assert not model_server.calls
        await parts.worker.release_held()
        assert (await queue.get(task_id)).status == TaskStatus.QUEUED  # still 23:59:50: nothing came back

        clock.now = midnight + 1
        await parts.worker.release_held()
        assert await queue.depth() == 1
        await parts.worker.run()
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    assert record.status == TaskStatus.SUCCEEDED and record.waiting is None
    assert int(await redis_client.get(keys.budget_spent("2026-03-01"))) == 49_000
    spent = int(await redis_client.get(keys.budget_spent("2026-03-02")))
    assert spent == pytest.approx(billed(model_server) * MICROS, abs=2)


async def test_fail_mode_ends_the_task_with_the_figure_keeping_its_transcript(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    # budget_min_output_tokens = max_output_tokens: no call goes with its output capped (tested below)
    cfg = config.model_copy(
        update={"daily_budget_usd": 0.05, "budget_on_exhausted": "fail", "budget_min_output_tokens": 1024}
    )
    clock = Clock(datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC))
    # Room for exactly the first call's worst case: the second call (a longer transcript) cannot fit.
    room = first_call_worst_case(cfg, "What is 6*7?")
    await redis_client.set(cfg.keys().budget_spent("2026-03-01"), 50_000 - room)
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit("What is 6*7?", max_steps=6)).task_id
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True, clock=clock)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    assert record.status == TaskStatus.FAILED and len(model_server.calls) == 1
    assert record.error is not None and record.error.startswith(
        "budget exhausted until 00:00 UTC: the next model call could cost up to $0.0"
    )
    assert "daily budget (budget.dailyUSD); the transcript so far is kept" in record.error
    assert record.checkpoint.step == 1 and record.checkpoint.messages[-1]["content"][0]["type"] == "tool_result"
    assert registry.get_sample_value("agent_budget_rejections_total", {**LABELS, "budget": "daily"}) == 1


async def test_hold_then_a_raised_budget_resumes_from_the_checkpoint(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    cfg = config.model_copy(update={"daily_budget_usd": 0.05, "budget_min_output_tokens": 1024})  # no capping
    clock = Clock(datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC))
    room = first_call_worst_case(cfg, "What is 6*7?")
    await redis_client.set(cfg.keys().budget_spent("2026-03-01"), 50_000 - room)
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit("What is 6*7?", max_steps=6)).task_id
    parts = worker_at(cfg, redis_client, clock)
    try:
        await parts.worker.run()
        # The room left could start a call with a short input, so the task is sent back; its next
        # call does not fit and it is held again. Holding is no failed delivery: none is counted.
        await parts.worker.release_held()
        await parts.worker.run()
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    assert record.status == TaskStatus.QUEUED and record.checkpoint.step == 1 and record.waiting is not None
    assert record.deliveries == 0 and len(model_server.calls) == 1
    assert json.loads(await redis_client.hget(queue.task_key(task_id), "waiting"))["reason"] == "budget_exhausted"  # type: ignore[misc]

    # The spec raises the budget: the pods roll, and the new workers find room for the held task.
    raised = cfg.model_copy(update={"daily_budget_usd": 1.0})
    parts = worker_at(raised, redis_client, clock)
    try:
        await parts.worker.release_held()
        await parts.worker.run()
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    assert record.status == TaskStatus.SUCCEEDED and record.result == "The answer: 6*7 = 42."
    assert [c.step for c in model_server.calls] == [0, 1]  # resumed: the first step was not sent again


async def test_per_task_budget_stops_before_the_call_that_could_cross_it(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    task_input = "Compute 1+2, then 3+4, then 5+6."
    first = first_call_worst_case(config, task_input)
    limit = (first + 1_000) / MICROS  # the first call fits; the next one's worst case cannot
    cfg = config.model_copy(update={"per_task_budget_usd": limit})
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit(task_input, max_steps=6)).task_id
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    assert len(model_server.calls) == 1 and billed(model_server) <= limit
    assert record.status == TaskStatus.FAILED and record.checkpoint.step == 1
    spent = budget.micros(billed(model_server)) / MICROS
    assert record.error is not None and record.error.startswith(
        f"per-task budget exhausted: spent ${spent:.4f} of ${limit:.4f} (budget.perTaskUSD) after 1 steps; "
        "the next model call could cost up to $0.0"
    )
    assert record.error.endswith("so it was not made; the transcript so far is kept")
    assert record.checkpoint.messages[-1]["content"][0]["type"] == "tool_result"  # kept up to the stop
    assert registry.get_sample_value("agent_budget_rejections_total", {**LABELS, "budget": "per_task"}) == 1
    assert registry.get_sample_value("agent_cost_usd_total", LABELS) == pytest.approx(billed(model_server))


# --- budgets that are reached (issue 30) ------------------------------------------------------------

SHRINK = budget.Shrink(input_micros=1000.5, output_micros=10.0, max_output=1000, min_output=100)


def test_shrink_caps_the_output_to_what_is_left() -> None:
    assert SHRINK.amount(1000) == 11_001  # rounded up
    assert SHRINK.fitting(11_001) == 1000  # the whole call fits
    assert SHRINK.fitting(10_000) == 899  # 1000.5 + 899 * 10 = 9990.5 -> 9991
    assert SHRINK.fitting(SHRINK.amount(100)) == 100
    assert SHRINK.fitting(SHRINK.amount(100) - 1) is None  # under the least output: no call
    free = budget.Shrink(input_micros=0, output_micros=0, max_output=50, min_output=10)
    assert free.fitting(0) == 50


def test_decide_with_shrink() -> None:
    common = {"task_spent": 0, "task_reserved": 0, "task_limit": None, "day_limit": 20_000, "shrink": SHRINK}
    whole = budget.decide(amount=11_001, day_spent=0, day_reserved=0, **common)
    assert whole.fits and whole.amount == 11_001 and whole.output_tokens == 1000
    capped = budget.decide(amount=11_001, day_spent=10_000, day_reserved=0, **common)
    assert capped.fits and capped.output_tokens == 899 and capped.amount == 9_991  # <= the 10,000 left
    # too little for the least output: wait while others hold reservations, held when none does
    assert budget.decide(amount=11_001, day_spent=15_000, day_reserved=3_000, **common).scope == Scope.WAIT
    assert budget.decide(amount=11_001, day_spent=18_000, day_reserved=0, **common).scope == Scope.DAILY
    small_day = {**common, "day_limit": 2_000}
    assert budget.decide(amount=11_001, day_spent=0, day_reserved=0, **small_day).scope == Scope.NEVER


def test_releasable_takes_each_task_whose_call_fits() -> None:
    needs = [("a", 50), ("b", 200), ("c", 30), ("d", 30)]
    assert budget.releasable(room=100, needs=needs, most=8) == ["a", "c"]  # b does not fit, d no longer does
    assert budget.releasable(room=1000, needs=needs, most=2) == ["a", "b"]
    assert budget.releasable(room=None, needs=needs, most=3) == ["a", "b", "c"]
    assert budget.releasable(room=10, needs=needs, most=8) == []


@pytest.mark.parametrize(
    ("day_spent", "others"),
    [(0, []), (10_000, []), (15_000, [3_000]), (18_000, []), (19_000, [500]), (8_990, [1_000])],
)
async def test_reserve_script_agrees_with_decide_when_shrinking(
    redis_client: redis.asyncio.Redis, day_spent: int, others: list[int]
) -> None:
    keys = constants.ServiceKeys("default", "svc")
    ledger = BudgetLedger(redis_client, keys=keys, daily_limit_usd=20_000 / MICROS, per_task_limit_usd=None)
    await redis_client.set(keys.budget_spent(ledger.today()), day_spent)
    for n, other in enumerate(others):
        assert (await ledger.reserve(f"other-{n}", fence=1, amount=other))[1] is not None
    verdict, reservation = await ledger.reserve("t", fence=1, amount=11_001, shrink=SHRINK)
    expected = budget.decide(
        amount=11_001, day_spent=day_spent, day_reserved=sum(others), day_limit=20_000,
        task_spent=0, task_reserved=0, task_limit=None, shrink=SHRINK,
    )  # fmt: skip
    assert verdict == expected
    assert (reservation is not None) == expected.fits
    if reservation is not None:
        assert reservation.amount == expected.amount
        assert day_spent + sum(others) + reservation.amount <= 20_000  # never past the budget


def min_output_config(config: RuntimeConfig, **update: object) -> RuntimeConfig:
    return config.model_copy(update={"max_output_tokens": 4096, "budget_min_output_tokens": 64, **update})


async def test_a_call_that_does_not_fit_whole_goes_with_its_output_capped(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    cfg = min_output_config(config, daily_budget_usd=0.05)
    clock = Clock(datetime.datetime(2026, 3, 1, 12, tzinfo=datetime.UTC))
    whole = first_call_worst_case(cfg, "What is 6*7?")
    room = whole // 2  # half the worst case is left: enough for the input and about half the output
    await redis_client.set(cfg.keys().budget_spent("2026-03-01"), 50_000 - room)
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit("What is 6*7?", max_steps=6)).task_id
    parts = worker_at(cfg, redis_client, clock)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    first = model_server.completed()[0]
    tools = builtin_registry().schemas()
    bound = budget.input_token_bound(cfg.system_prompt, [{"role": "user", "content": "What is 6*7?"}], tools)
    shrink = budget.Shrink(bound * SONNET.input_per_mtok, SONNET.output_per_mtok, 4096, 64)
    assert first.max_tokens == shrink.fitting(room) < 4096  # capped, by exactly what was left
    assert record.status == TaskStatus.SUCCEEDED and record.result == "The answer: 6*7 = 42."
    spent = int(await redis_client.get(cfg.keys().budget_spent("2026-03-01")))
    assert spent <= 50_000 and spent == 50_000 - room + record.checkpoint.cost_micros()


async def test_a_call_waits_for_reservations_in_flight_instead_of_being_held(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    cfg = min_output_config(config, daily_budget_usd=0.05)
    ledger = build_ledger(cfg, redis_client)
    # Another call in flight reserved all the day has: this task's call cannot go now.
    _, other = await ledger.reserve("other", fence=1, amount=50_000)
    assert other is not None
    queue = TaskQueue.from_config(cfg, redis_client)
    task_id = (await queue.submit("What is 6*7?", max_steps=6)).task_id
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True)
    try:
        running = asyncio.create_task(parts.worker.run())
        await eventually(lambda: _status_is(queue, task_id, TaskStatus.RUNNING), timeout=20)
        assert not model_server.calls  # waiting for money, not calling
        await ledger.settle(other, 2_000)  # the other call cost far less than its worst case
        await asyncio.wait_for(running, 30)
    finally:
        await parts.aclose()
    record = await queue.get(task_id)
    assert record.status == TaskStatus.SUCCEEDED and record.deliveries == 1
    assert registry.get_sample_value("agent_budget_rejections_total", {**LABELS, "budget": "daily"}) == 0


async def _status_is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return (await queue.get(task_id)).status == status


async def test_a_held_task_resumes_when_a_settle_leaves_room_for_its_next_call(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    """No periodic pass here (burst workers run none): only a settle's money coming back can resume it."""
    cfg = min_output_config(config, daily_budget_usd=0.05, budget_wait_seconds=0.0, worker_concurrency=2)
    whole = first_call_worst_case(cfg, "What is 6*7?")
    ledger = build_ledger(cfg, redis_client)
    # What is left fits one whole first call and not a second call's least.
    _, other = await ledger.reserve("other", fence=1, amount=50_000 - whole - 100)
    assert other is not None
    queue = TaskQueue.from_config(cfg, redis_client)
    ids = [(await queue.submit("What is 6*7?", max_steps=6)).task_id for _ in range(2)]
    model_server.faults.latency_seconds = 1.0  # the first task's call is in flight while the second is held
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True)
    try:
        await asyncio.wait_for(parts.worker.run(), 60)
    finally:
        await parts.aclose()
    records = [await queue.get(task_id) for task_id in ids]
    assert [r.status for r in records] == [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]
    assert registry.get_sample_value("agent_budget_rejections_total", {**LABELS, "budget": "daily"}) >= 1  # held
    snap = await ledger.snapshot()
    assert snap.reserved == 50_000 - whole - 100 and snap.held_tasks == 0
    assert snap.spent + snap.reserved <= 50_000  # never past the budget

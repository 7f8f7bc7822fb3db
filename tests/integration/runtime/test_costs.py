"""Cost reports (`costs.py`, `GET /v1/costs`): real redis-server, the local model server, real workers.

Covers: the pure core (the period asked for: defaults, RFC 3339 with a zone, an empty or reversed
range, a start past the retention; the user label's bounds; merging hours and ranking tasks);
a mixed burst over two models and several users and intents: the report's total equals the sum of
the tasks' settled costs and the day's budget spend to the micro-dollar, each breakdown sums to the
total, the dearest tasks come first with their model and tokens, the per-model metrics agree; the
bound on users per hour (the rest count as `other`); the 422s; the bearer token.
"""

from __future__ import annotations

import datetime
import time

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from prometheus_client import CollectorRegistry

from agent_runtime import costs, errors
from agent_runtime.api import create_app
from agent_runtime.composition import build_ledger, build_worker
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import TaskStatus
from tests.integration.runtime.conftest import AUTH, TOKEN

NOON = datetime.datetime(2026, 3, 10, 12, 30, tzinfo=datetime.UTC).timestamp()


# --- the pure core ------------------------------------------------------------------------------


def test_a_period_defaults_to_the_last_24_hours() -> None:
    period = costs.parse_range(None, None, now=NOON, retention_days=35)
    assert costs.rfc3339(period.end) == "2026-03-10T12:30:00Z"
    assert costs.rfc3339(period.start) == "2026-03-09T12:30:00Z"
    assert len(period.hours()) == 25  # 12:00 of the 9th (rounded down) to 12:00 of the 10th
    assert period.hours()[0] == "2026-03-09T12" and period.hours()[-1] == "2026-03-10T12"
    assert period.days() == ["2026-03-09", "2026-03-10"]


def test_a_period_in_any_offset_is_read_in_utc() -> None:
    period = costs.parse_range("2026-03-10T09:00:00+09:00", "2026-03-10T02:00:00Z", now=NOON, retention_days=35)
    assert period.hours() == ["2026-03-10T00", "2026-03-10T01"]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("yesterday", None, "from='yesterday' is not an RFC 3339 time"),
        ("2026-03-10T00:00:00", None, "has no time zone"),
        ("2026-03-10T10:00:00Z", "2026-03-10T10:00:00Z", "must be after from"),
        ("2026-03-10T11:00:00Z", "2026-03-10T10:00:00Z", "must be after from"),
        ("2026-02-01T00:00:00Z", None, "past the retention: cost reports are kept 35 days"),
    ],
)
def test_bad_periods_are_refused_naming_why(start: str, end: str | None, message: str) -> None:
    with pytest.raises(errors.InvalidReportRange, match=message):
        costs.parse_range(start, end, now=NOON, retention_days=35)


def test_the_oldest_hour_kept_is_named() -> None:
    with pytest.raises(errors.InvalidReportRange, match=r"the oldest hour kept starts at 2026-02-03T13:00:00Z"):
        costs.parse_range("2026-02-03T12:59:00Z", None, now=NOON, retention_days=35)
    assert costs.parse_range("2026-02-03T13:00:00Z", None, now=NOON, retention_days=35).hours()[0] == "2026-02-03T13"


def test_user_labels_are_bounded() -> None:
    assert costs.user_label({"user": "alice@example.com"}) == "alice@example.com"
    assert costs.user_label({}) == costs.UNKNOWN
    assert costs.user_label({"user": ""}) == costs.UNKNOWN
    assert costs.user_label({"user": "x" * 129}) == costs.OTHER
    assert costs.user_label({"user": {"nested": 1}}) == costs.OTHER
    assert costs.user_label({"user": "line\nbreak"}) == costs.OTHER
    assert costs.user_label({"user": "a|b"}) == "a|b"  # the field names split on the first and last bar


def test_build_report_merges_hours_and_ranks_tasks() -> None:
    period = costs.Range(
        datetime.datetime(2026, 3, 10, 10, tzinfo=datetime.UTC), datetime.datetime(2026, 3, 10, 12, tzinfo=datetime.UTC)
    )
    hours = [
        ("2026-03-10T10", {"cost": "30", "requests": "2", "m|a|cost": "30", "m|a|requests": "2", "m|a|input": "5",
                           "u|a|b|cost": "30", "u|a|b|requests": "2", "users": "1"}),
        ("2026-03-10T11", {"cost": "12", "requests": "1", "m|a|cost": "12", "m|a|requests": "1", "m|a|output": "7",
                           "u|a|b|cost": "12", "u|a|b|requests": "1", "users": "1"}),
    ]  # fmt: skip
    inside = period.start.timestamp() + 60
    tasks = [
        {"taskId": "cheap", "costMicros": 2, "model": "a", "tokens": 1, "finishedAt": inside},
        {"taskId": "dear", "costMicros": 40, "model": "a", "tokens": 11, "finishedAt": inside},
        {"taskId": "later", "costMicros": 99, "model": "a", "tokens": 1, "finishedAt": period.end.timestamp()},
    ]
    report = costs.build_report(period, hours, tasks, top=10)
    assert report["totalCostUSD"] == 0.000042 and report["totalRequests"] == 3
    assert report["byModel"] == {"a": {"costUSD": 0.000042, "requests": 3, "tokens": 12}}
    assert report["byUser"] == {"a|b": {"costUSD": 0.000042, "requests": 3}}
    assert list(report["byHour"]) == ["2026-03-10T10:00:00Z", "2026-03-10T11:00:00Z"]
    assert [t["taskId"] for t in report["topExpensiveTasks"]] == ["dear", "cheap"]  # `later` is past the end
    assert costs.build_report(period, hours, tasks, top=1)["topExpensiveTasks"][0]["taskId"] == "dear"


# --- real workers -------------------------------------------------------------------------------

USERS = ["alice", "bob", "carol", "dave", "erin"]


def two_models(config: RuntimeConfig, model_server: LocalModelServer) -> RuntimeConfig:
    return config.model_copy(
        update={
            "providers": [
                ProviderConfig(name="strong", model="claude-sonnet-5-5", base_url=model_server.url, weight=1),
                ProviderConfig(name="cheap", model="claude-haiku-4-5", base_url=model_server.url, weight=1),
            ],
            "strategy": "weighted",
            "daily_budget_usd": 5.0,
            "known_intents": ["math"],
            "report_max_users": 3,
        }
    )


async def test_the_report_equals_the_tasks_and_the_budget_to_the_micro_dollar(
    config: RuntimeConfig, redis_client: redis.asyncio.Redis, model_server: LocalModelServer
) -> None:
    cfg = two_models(config, model_server)
    queue = TaskQueue.from_config(cfg, redis_client)
    started = time.time()
    ids = []
    for n in range(24):
        task_input = "Compute 1+2, then 3+4, then 5+6." if n % 3 == 0 else f"What is {n}*7?"
        metadata = {"user": USERS[n % len(USERS)], "intent": "math" if n % 2 else "chat"}
        ids.append((await queue.submit(task_input, metadata=metadata, max_steps=6)).task_id)
    registry = CollectorRegistry()
    parts = build_worker(cfg, redis_client=redis_client, registry=registry, burst=True)
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    records = [await queue.get(task_id) for task_id in ids]
    assert {r.status for r in records} == {TaskStatus.SUCCEEDED}
    task_micros = {r.task_id: r.checkpoint.cost_micros() for r in records}
    spent = (await build_ledger(cfg, redis_client).snapshot()).spent
    assert sum(task_micros.values()) == spent > 0
    calls = [call for r in records for call in r.checkpoint.calls]
    assert len(calls) == sum(r.checkpoint.step for r in records) == len(model_server.completed())
    assert {call.model for call in calls} == {"claude-sonnet-5-5", "claude-haiku-4-5"}

    app = create_app(cfg, redis=redis_client, registry=CollectorRegistry(), auth_token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        since = costs.rfc3339(datetime.datetime.fromtimestamp(started - 3600, datetime.UTC))
        response = await api.get("/v1/costs", params={"from": since, "top": 5}, headers=AUTH)
        assert response.status_code == 200, response.text
        report = response.json()
        assert set(report) >= {
            "period", "totalCostUSD", "totalRequests", "byModel", "byUser", "byHour", "topExpensiveTasks",
        }  # fmt: skip
        assert round(report["totalCostUSD"] * 1_000_000) == spent == sum(task_micros.values())
        assert report["totalRequests"] == len(calls)
        for breakdown in ("byModel", "byUser", "byHour", "byIntent"):
            rows = report[breakdown].values()
            assert round(sum(row["costUSD"] for row in rows) * 1_000_000) == spent, breakdown
            assert sum(row["requests"] for row in rows) == len(calls), breakdown
        for model, row in report["byModel"].items():
            mine = [c for c in calls if c.model == model]
            assert row["requests"] == len(mine)
            assert row["tokens"] == sum(c.input_tokens + c.output_tokens for c in mine)
            assert round(row["costUSD"] * 1_000_000) == sum(c.cost_micros for c in mine)
        # three users named per hour (report_max_users), the others counted as `other`
        assert len(report["byUser"]) == 4 and costs.OTHER in report["byUser"]
        assert set(report["byIntent"]) == {"math", "other"}  # `chat` is not a known intent: bounded like the metric
        dearest = sorted(task_micros.items(), key=lambda item: (-item[1], item[0]))[:5]
        assert [(t["taskId"], round(t["costUSD"] * 1_000_000)) for t in report["topExpensiveTasks"]] == dearest
        first = next(r for r in records if r.task_id == dearest[0][0])
        top = report["topExpensiveTasks"][0]
        assert top["model"] == first.checkpoint.main_model()
        assert top["tokens"] == first.checkpoint.usage.input_tokens + first.checkpoint.usage.output_tokens

        view = (await api.get(f"/v1/tasks/{first.task_id}", headers=AUTH)).json()
        assert [c["model"] for c in view["calls"]] == [c.model for c in first.checkpoint.calls]

        assert (await api.get("/v1/costs")).status_code == 401
        for params, says in (
            ({"from": "2020-01-01T00:00:00Z"}, "past the retention"),
            ({"from": "2026-03-10T00:00:00"}, "no time zone"),
            ({"top": 101}, "top"),
            ({"from": since, "to": since}, "must be after"),
        ):
            refused = await api.get("/v1/costs", params=params, headers=AUTH)
            assert refused.status_code == 422 and says in refused.json()["error"], refused.text

    for model in ("claude-sonnet-5-5", "claude-haiku-4-5"):
        labels = {"service": "svc", "track": "stable", "model": model, "route": "default"}
        micros = sum(c.cost_micros for c in calls if c.model == model)
        assert registry.get_sample_value("agent_model_cost_usd_total", labels) == pytest.approx(micros / 1e6)
        assert registry.get_sample_value("agent_model_calls_total", labels) == sum(c.model == model for c in calls)

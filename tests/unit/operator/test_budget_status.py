"""The budget's part of the status (`agent_operator.budget`): queries, refresh rules, `status.budget`.

Covers:
- the exact PromQL: `max` of each `agent_budget_*` gauge over every track of one service, with the
  canary's selector (namespace when known, label values escaped);
- `spec.budget.dailyUSD` read off a raw body (unset, int, float; a bool, a string, a negative or an
  infinite value counts as unset);
- when a refresh is due: never refreshed, the interval passed, dailyUSD changed; not before;
- a measured refresh: every figure, rounded to micro-dollars, held tasks as an integer, the UTC
  day and time of the query; absent or NaN side figures left out;
- refreshes that cannot measure keep the last figures and say why, naming the time they are from:
  no series of the service, a query error (a shared "unreachable" said once), an infinite, negative
  or absurdly large figure, an operator without Prometheus; with no figures yet, only the reason is shown;
- `settled`: a refresh that finds the same figures keeps the status as it is (no write), anything
  else replaces it; the JSON written and the merge patch that nulls dropped keys;
- hypothesis: whatever Prometheus answers, `status.budget` is valid JSON (no NaN or Inf) with
  figures from 0 to 1e15, and a repeated answer changes nothing.
"""

from __future__ import annotations

import datetime
import json
import math

from agent_operator import budget
from agent_operator.api import models
from agent_operator.canary.analysis import Measurement, Scope
from hypothesis import given
from hypothesis import strategies as st

SCOPE = Scope(service="support-bot", namespace="prod")
QUERIES = budget.queries(SCOPE)
NOW = datetime.datetime(2026, 3, 1, 23, 59, 30, tzinfo=datetime.UTC)
SOON = NOW + datetime.timedelta(seconds=20)
LATER = NOW + datetime.timedelta(minutes=1)  # the next UTC day
UNREACHABLE = "Prometheus at http://prometheus:9090 is unreachable: [Errno 111] Connection refused"


def answers(spent: float | None, reserved: float | None, remaining: float | None, held: float | None) -> dict:
    return {
        QUERIES.spent: Measurement(spent),
        QUERIES.reserved: Measurement(reserved),
        QUERIES.remaining: Measurement(remaining),
        QUERIES.held: Measurement(held),
    }


def refresh(measured: dict, *, previous: models.BudgetStatus | None = None, now: datetime.datetime = NOW):
    return budget.refreshed(5.0, QUERIES, measured, now=now, previous=previous, scope=SCOPE)


def measured_status() -> models.BudgetStatus:
    status, _ = refresh(answers(1.25, 0.0125, 3.7375, 2.0))
    return status


# --- queries and the spec -------------------------------------------------------------------------


def test_queries_take_the_max_of_each_gauge_over_every_track_of_the_service() -> None:
    where = '{service="support-bot", namespace="prod"}'
    assert QUERIES.all() == [
        f"max(agent_budget_spent_usd{where})",
        f"max(agent_budget_reserved_usd{where})",
        f"max(agent_budget_remaining_usd{where})",
        f"max(agent_budget_held_tasks{where})",
    ]


def test_queries_use_the_canary_selector_rules() -> None:
    assert budget.queries(Scope('odd"name')).spent == 'max(agent_budget_spent_usd{service="odd\\"name"})'


def test_daily_budget_is_read_off_the_raw_body() -> None:
    def body(budget_spec: object) -> dict:
        return {"spec": {"budget": budget_spec}}

    assert budget.daily_usd({"spec": {}}) is None
    assert budget.daily_usd(body({"perTaskUSD": 1.0})) is None
    assert budget.daily_usd(body({"dailyUSD": 5})) == 5.0
    assert budget.daily_usd(body({"dailyUSD": 0.05})) == 0.05
    assert budget.daily_usd(body({"dailyUSD": 0})) == 0.0
    for odd in (True, "5", -1.0, math.inf, math.nan, None):
        assert budget.daily_usd(body({"dailyUSD": odd})) is None, odd


def test_a_refresh_is_due_at_first_after_the_interval_or_when_the_budget_changed() -> None:
    assert budget.due(now=0.0, next_at=None, daily=5.0, refreshed_daily=None)
    assert not budget.due(now=59.9, next_at=60.0, daily=5.0, refreshed_daily=5.0)
    assert budget.due(now=60.0, next_at=60.0, daily=5.0, refreshed_daily=5.0)
    assert budget.due(now=1.0, next_at=60.0, daily=10.0, refreshed_daily=5.0)
    assert budget.due(now=1.0, next_at=60.0, daily=None, refreshed_daily=5.0)  # the budget was removed


# --- refreshes --------------------------------------------------------------------------------------


def test_a_measured_refresh_shows_every_figure_with_the_day_and_time_of_the_query() -> None:
    status, outcome = refresh(answers(1.2500004, 0.0125, 3.7374996, 2.0))
    assert outcome == budget.Outcome.MEASURED
    assert status == models.BudgetStatus(
        daily_usd=5.0,
        day="2026-03-01",
        spent_today_usd=1.25,
        reserved_usd=0.0125,
        remaining_usd=3.7375,
        held_tasks=2,
        observed_at="2026-03-01T23:59:30Z",
    )
    assert isinstance(status.held_tasks, int)


def test_the_day_is_the_utc_day_of_the_query() -> None:
    evening_in_new_york = datetime.datetime(2026, 3, 1, 20, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    status, _ = refresh(answers(1.0, 0.0, 4.0, 0.0), now=evening_in_new_york)
    assert (status.day, status.observed_at) == ("2026-03-02", "2026-03-02T01:30:00Z")


def test_absent_or_nan_side_figures_are_left_out() -> None:
    status, outcome = refresh(answers(1.0, math.nan, None, None))
    assert outcome == budget.Outcome.MEASURED
    assert (status.spent_today_usd, status.reserved_usd, status.remaining_usd, status.held_tasks) == (
        1.0,
        None,
        None,
        None,
    )
    assert budget.as_json(status) == {
        "dailyUSD": 5.0,
        "day": "2026-03-01",
        "spentTodayUSD": 1.0,
        "observedAt": "2026-03-01T23:59:30Z",
    }


def test_no_series_of_the_service_keeps_the_last_figures_and_says_why() -> None:
    previous = measured_status()
    status, outcome = refresh(answers(None, None, None, None), previous=previous, now=LATER)
    assert outcome == budget.Outcome.NO_DATA
    assert status.spent_today_usd == 1.25 and status.observed_at == previous.observed_at
    assert status.message == (
        "Prometheus has no value of agent_budget_spent_usd for service 'support-bot' in namespace 'prod': its "
        "pods are not running or not scraped (the ServiceMonitor needs the Prometheus Operator); "
        "the figures are those of 2026-03-01T23:59:30Z"
    )


def test_nan_spend_is_no_data() -> None:
    _, outcome = refresh(answers(math.nan, 0.0, 1.0, 0.0))
    assert outcome == budget.Outcome.NO_DATA


def test_a_query_error_keeps_the_last_figures_and_names_the_query() -> None:
    previous = measured_status()
    measured = answers(2.0, 0.0, 3.0, 0.0)
    measured[QUERIES.held] = Measurement(error="HTTP 400: bad_data: parse error")
    status, outcome = refresh(measured, previous=previous, now=LATER)
    assert outcome == budget.Outcome.ERROR
    assert status.spent_today_usd == 1.25  # not half of a refresh: the last whole one
    assert status.message == (
        f"Prometheus could not give today's spend: {QUERIES.held}: HTTP 400: bad_data: parse error; "
        "the figures are those of 2026-03-01T23:59:30Z"
    )


def test_an_unreachable_prometheus_is_said_once_and_nothing_else_is_shown_without_figures() -> None:
    status, outcome = refresh({query: Measurement(error=UNREACHABLE) for query in QUERIES.all()})
    assert outcome == budget.Outcome.ERROR
    assert status.message == f"Prometheus could not give today's spend: {UNREACHABLE}"
    assert budget.as_json(status) == {"dailyUSD": 5.0, "message": status.message}


def test_figures_that_are_not_money_are_errors() -> None:
    for odd in (math.inf, -math.inf, -0.5, 1e300):
        status, outcome = refresh(answers(odd, 0.0, 1.0, 0.0))
        assert outcome == budget.Outcome.ERROR, odd
        assert "not a figure of money or tasks" in status.message
        assert status.spent_today_usd is None


def test_a_missing_measurement_is_an_error() -> None:
    status, outcome = refresh({})
    assert outcome == budget.Outcome.ERROR
    assert "the query was not run" in status.message


def test_without_prometheus_the_status_says_so_and_keeps_the_last_figures() -> None:
    alone, outcome = budget.not_configured(5.0, None)
    assert outcome == budget.Outcome.NOT_CONFIGURED
    assert budget.as_json(alone) == {"dailyUSD": 5.0, "message": budget.NO_PROMETHEUS}
    kept, _ = budget.not_configured(7.0, measured_status())
    assert (kept.daily_usd, kept.spent_today_usd) == (7.0, 1.25)
    assert kept.message == f"{budget.NO_PROMETHEUS}; the figures are those of 2026-03-01T23:59:30Z"


# --- writing ----------------------------------------------------------------------------------------


def test_the_same_figures_a_minute_later_change_nothing() -> None:
    previous = measured_status()
    again, _ = refresh(answers(1.25, 0.0125, 3.7375, 2.0), previous=previous, now=SOON)
    assert again.observed_at != previous.observed_at
    assert budget.settled(previous, again) is previous
    next_day, _ = refresh(answers(1.25, 0.0125, 3.7375, 2.0), previous=previous, now=LATER)
    assert budget.settled(previous, next_day) is next_day  # the same figures, but for another day


def test_a_changed_figure_or_message_replaces_the_status() -> None:
    previous = measured_status()
    spent_more, _ = refresh(answers(1.5, 0.0125, 3.4875, 2.0), previous=previous, now=LATER)
    assert budget.settled(previous, spent_more) is spent_more
    assert (spent_more.day, spent_more.observed_at) == ("2026-03-02", "2026-03-02T00:00:30Z")
    failing, _ = refresh(answers(None, None, None, None), previous=previous, now=LATER)
    assert budget.settled(previous, failing) is failing
    failing_again, _ = refresh(answers(None, None, None, None), previous=failing, now=LATER)
    assert budget.settled(failing, failing_again) == failing  # the same reason: nothing to write
    assert budget.settled(None, previous) is previous
    assert budget.settled(previous, None) is None


def test_the_merge_patch_nulls_what_the_new_status_drops() -> None:
    live = budget.as_json(measured_status())
    failing, _ = refresh(answers(None, None, None, None))
    assert budget.merge_patch(live, budget.as_json(failing)) == {
        "dailyUSD": 5.0,
        "day": None,
        "spentTodayUSD": None,
        "reservedUSD": None,
        "remainingUSD": None,
        "heldTasks": None,
        "observedAt": None,
        "message": failing.message,
    }
    assert budget.merge_patch(live, None) is None
    assert budget.merge_patch(None, {"dailyUSD": 5.0}) == {"dailyUSD": 5.0}


def test_a_status_is_read_back_or_counts_as_none() -> None:
    status = measured_status()
    assert budget.parse(budget.as_json(status)) == status
    assert budget.parse(None) is None
    assert budget.parse({"spentTodayUSD": "lots"}) is None
    assert budget.parse("budget") is None


# --- property ---------------------------------------------------------------------------------------

ANSWER = st.one_of(
    st.builds(Measurement, st.none() | st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(Measurement, st.just(None), st.sampled_from(["HTTP 503: unavailable", UNREACHABLE])),
)


@given(st.lists(ANSWER, min_size=4, max_size=4), st.lists(ANSWER, min_size=4, max_size=4))
def test_whatever_prometheus_answers_the_status_is_json_with_figures_of_money(first: list, second: list) -> None:
    previous, _ = refresh(dict(zip(QUERIES.all(), first, strict=True)))
    status, _ = refresh(dict(zip(QUERIES.all(), second, strict=True)), previous=previous, now=LATER)
    for shown in (previous, status):
        written = budget.as_json(shown)
        json.dumps(written, allow_nan=False)  # a NaN or an Inf would make the API server refuse the write
        for key in ("spentTodayUSD", "reservedUSD", "remainingUSD", "heldTasks"):
            assert key not in written or 0 <= written[key] <= budget.MAX_FIGURE
    repeated, _ = refresh(dict(zip(QUERIES.all(), second, strict=True)), previous=status, now=LATER)
    assert budget.settled(status, repeated) == status

"""The budget's part of the status: what to ask Prometheus, and `status.budget` from its answers. Pure.

The runtime keeps a service's daily money in Redis, which the operator must not reach (a
`redis.urlSecretRef` is the pods' credential, not the operator's). Every runtime pod exports the
service-wide figures as gauges (`agent_budget_*`), so the operator reads them from the Prometheus
it already queries for canary analyses: `max(agent_budget_spent_usd{service="…", namespace="…"})`
and its siblings, with the canary's label selector. `max`, not `sum`: every pod of every track
exports the same service-wide figure.

The rules (docs/budgets.md, "What you can see"):

- a refresh is due `interval` seconds after the last one, or at once when `dailyUSD` changed;
- the figures shown are those of the last refresh that measured them: `observedAt` is the time of
  that query and `day` its UTC day. A refresh that finds the same figures keeps the status as it
  is (`settled`), so a service at rest costs no status write;
- a refresh that cannot measure (Prometheus unreachable, a query error, no series of the service)
  keeps the last figures and says why in `message`; so does an operator without a Prometheus URL;
- a figure that is not a number from 0 to 1e15 (+Inf, a negative: series are anyone's to export) is
  an error, and NaN or an absent series is no data.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from agent_operator.api import models
from agent_operator.canary import analysis
from agent_runtime import constants

DEFAULT_INTERVAL: Final = 60.0  # seconds between two refreshes of one service's figures
USD_DIGITS: Final = 6  # the runtime counts whole micro-dollars
# Larger is no one's spend or queue, and heldTasks must fit the API server's int64.
MAX_FIGURE: Final = 1e15
NO_PROMETHEUS: Final = (
    "the operator runs without a Prometheus URL (--prometheus-url, chart value prometheus.url): today's spend "
    "cannot be shown here; the runtime's agent_budget_* metrics and GET /v1/tasks/{id} still show it"
)


class Outcome(StrEnum):
    """How one refresh went (the label of the operator's refresh counter)."""

    MEASURED = "measured"
    NO_DATA = "no_data"
    ERROR = "error"
    NOT_CONFIGURED = "not_configured"


@dataclass(frozen=True)
class Queries:
    """The four instant queries of one service's figures."""

    spent: str
    reserved: str
    remaining: str
    held: str

    def all(self) -> list[str]:
        return [self.spent, self.reserved, self.remaining, self.held]


def figure_expr(series: str, scope: analysis.Scope) -> str:
    """One service-wide figure, every track: `max` of what the pods export (a `sum` would count it per pod)."""
    return f"max({series}{analysis.selector(scope, None)})"


def queries(scope: analysis.Scope) -> Queries:
    """The queries of the figures of the service of `scope` (its window is not used: gauges are instant)."""
    return Queries(
        spent=figure_expr(constants.METRIC_BUDGET_SPENT, scope),
        reserved=figure_expr(constants.METRIC_BUDGET_RESERVED, scope),
        remaining=figure_expr(constants.METRIC_BUDGET_REMAINING, scope),
        held=figure_expr(constants.METRIC_BUDGET_HELD, scope),
    )


def daily_usd(body: Mapping[str, Any]) -> float | None:
    """`spec.budget.dailyUSD` of a raw AgentService body; None when unset or not a number."""
    raw = ((body.get("spec") or {}).get("budget") or {}).get("dailyUSD")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw < 0:
        return None
    return float(raw)


def due(*, now: float, next_at: float | None, daily: float | None, refreshed_daily: float | None) -> bool:
    """Whether a service's figures should be refreshed now (`next_at` None: never refreshed)."""
    return next_at is None or daily != refreshed_daily or now >= next_at


def rfc3339(moment: datetime.datetime) -> str:
    """`2026-01-01T00:00:00Z`, the timestamp format of status fields."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def figure(measured: analysis.Measurement | None) -> tuple[float | None, str]:
    """A figure from one measurement: (the number, or None for no data; an error, or '')."""
    if measured is None:
        return None, "the query was not run"
    if measured.error:
        return None, measured.error
    value = measured.value
    if value is None or math.isnan(value):
        return None, ""
    if not 0 <= value <= MAX_FIGURE:  # +-Inf too
        return None, f"the query returned {value}, not a figure of money or tasks (a number from 0 to 1e15)"
    return value, ""


def refreshed(
    daily: float,
    asked: Queries,
    measurements: Mapping[str, analysis.Measurement],
    *,
    now: datetime.datetime,
    previous: models.BudgetStatus | None,
    scope: analysis.Scope,
) -> tuple[models.BudgetStatus, Outcome]:
    """`status.budget` after a refresh that ran `asked` at `now` and got `measurements` (keyed by query)."""
    spent, reserved, remaining, held = figures = [figure(measurements.get(query)) for query in asked.all()]
    failed: dict[str, list[str]] = {}  # error -> the queries that got it
    for query, (_, error) in zip(asked.all(), figures, strict=True):
        if error:
            failed.setdefault(error, []).append(query)
    if failed:
        # An error every query shared (Prometheus unreachable) is said once, without the queries.
        text = "; ".join(
            error if len(which) == len(figures) else f"{', '.join(which)}: {error}" for error, which in failed.items()
        )
        return stale(daily, previous, f"Prometheus could not give today's spend: {text}"), Outcome.ERROR
    if spent[0] is None:
        where = f"service {scope.service!r}" + (f" in namespace {scope.namespace!r}" if scope.namespace else "")
        why = (
            f"Prometheus has no value of {constants.METRIC_BUDGET_SPENT} for {where}: its pods are not running "
            "or not scraped (the ServiceMonitor needs the Prometheus Operator)"
        )
        return stale(daily, previous, why), Outcome.NO_DATA
    status = models.BudgetStatus(
        daily_usd=daily,
        day=now.astimezone(datetime.UTC).strftime("%Y-%m-%d"),
        spent_today_usd=round(spent[0], USD_DIGITS),
        reserved_usd=None if reserved[0] is None else round(reserved[0], USD_DIGITS),
        remaining_usd=None if remaining[0] is None else round(remaining[0], USD_DIGITS),
        held_tasks=None if held[0] is None else round(held[0]),
        observed_at=rfc3339(now),
    )
    return status, Outcome.MEASURED


def not_configured(daily: float, previous: models.BudgetStatus | None) -> tuple[models.BudgetStatus, Outcome]:
    """`status.budget` of an operator without a Prometheus URL."""
    return stale(daily, previous, NO_PROMETHEUS), Outcome.NOT_CONFIGURED


def stale(daily: float, previous: models.BudgetStatus | None, why: str) -> models.BudgetStatus:
    """The last figures (if any), with `why` they were not refreshed."""
    if previous is None or not previous.observed_at:
        return models.BudgetStatus(daily_usd=daily, message=why)
    return previous.model_copy(
        update={"daily_usd": daily, "message": f"{why}; the figures are those of {previous.observed_at}"}
    )


def settled(previous: models.BudgetStatus | None, new: models.BudgetStatus | None) -> models.BudgetStatus | None:
    """`previous` when `new` differs from it only by the time of the query: nothing to write."""
    if previous is None or new is None:
        return new
    if previous.model_copy(update={"observed_at": new.observed_at}) == new:
        return previous
    return new


def parse(raw: Any) -> models.BudgetStatus | None:
    """`status.budget` as read from a body; anything unreadable counts as none."""
    if not isinstance(raw, Mapping):
        return None
    try:
        return models.BudgetStatus.model_validate(dict(raw))
    except ValueError:
        return None


def as_json(status: models.BudgetStatus | None) -> dict[str, Any] | None:
    """`status.budget` as written: camelCase, absent figures and empty texts left out."""
    if status is None:
        return None
    return status.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


def merge_patch(live: Mapping[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any] | None:
    """The merge patch of `status.budget` from `live` to `new`: null for every key `new` drops."""
    if new is None:
        return None
    return {**dict.fromkeys(live or {}), **new}

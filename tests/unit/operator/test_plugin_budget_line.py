"""The `Budget:` line of `kubectl agentservice get` (`plugin.views`), for every shape of status.budget.

Covers: no line without `dailyUSD`; "not measured yet" before the operator wrote status.budget;
figures of today ("today"), of another UTC day (named), with the optional ones left out and held
tasks only when there are some; the reason on its own line when figures are old or missing.
(The whole view, budget line included: tests/integration/operator/plugin/test_plugin_snapshots.py.)
"""

from __future__ import annotations

import datetime
from typing import Any

from agent_operator.plugin import views

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)


def budget_lines(spec_budget: dict[str, Any] | None, status_budget: dict[str, Any] | None) -> list[str]:
    svc: dict[str, Any] = {"metadata": {"name": "shop", "namespace": "default"}, "spec": {}, "status": {}}
    if spec_budget is not None:
        svc["spec"]["budget"] = spec_budget
    if status_budget is not None:
        svc["status"]["budget"] = status_budget
    lines = views.get_view(svc, {}, [], NOW).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Budget:")), None)
    if start is None:
        return []
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("            "))
    return lines[start:end]


def test_no_line_without_a_daily_budget() -> None:
    assert budget_lines(None, None) == []
    assert budget_lines({"perTaskUSD": 1.0}, None) == []


def test_a_budget_not_measured_yet() -> None:
    assert budget_lines({"dailyUSD": 0.05}, None) == ["Budget:     $0.0500 a day, not measured yet"]


def test_todays_figures() -> None:
    shown = {
        "dailyUSD": 50.0,
        "day": "2026-03-01",
        "spentTodayUSD": 12.5,
        "reservedUSD": 0.25,
        "remainingUSD": 37.25,
        "heldTasks": 0,
        "observedAt": "2026-03-01T11:57:00Z",
    }
    assert budget_lines({"dailyUSD": 50.0}, shown) == [
        "Budget:     $12.50 of $50.00 spent today, $0.2500 reserved, $37.25 left   observed 3m ago"
    ]


def test_old_figures_name_their_day_and_the_reason() -> None:
    shown = {
        "dailyUSD": 5.0,
        "day": "2026-02-28",
        "spentTodayUSD": 4.99,
        "heldTasks": 3,
        "observedAt": "2026-02-28T23:59:00Z",
        "message": "Prometheus could not give today's spend: unreachable",
    }
    assert budget_lines({"dailyUSD": 5.0}, shown) == [
        "Budget:     $4.99 of $5.00 spent on 2026-02-28 (UTC), 3 tasks held   observed 12h ago",
        "            Prometheus could not give today's spend: unreachable",
    ]


def test_no_figures_only_the_reason() -> None:
    shown = {"dailyUSD": 5.0, "message": "the operator runs without a Prometheus URL"}
    assert budget_lines({"dailyUSD": 5.0}, shown) == [
        "Budget:     $5.00 a day, not measured",
        "            the operator runs without a Prometheus URL",
    ]

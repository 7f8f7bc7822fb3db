"""`status.budget` from a real Prometheus, written by the real operator on the dev cluster.

Two exporters play two runtime pods of the service `shop`: each is the runtime's own `Metrics`
(agent_runtime/metrics.py) on a registry of its own, served over HTTP, its budget gauges set as
`agent_runtime.budget.export` sets them. A real `prometheus` scrapes both every second, adding a
`namespace` target label as Kubernetes discovery would. (The runtime itself spending against the
local model server: tests/e2e/test_budget_status_e2e.py.)

Covers:
- status.budget shows the service-wide figures, `max` of the pods' (not their sum, and a pod that
  lags behind does not pull the spend down), with the UTC day and time of the query, and follows a
  change of the spend;
- steady state: refreshes that find the same figures make no write at all (counted refreshes, not
  a sleep);
- a +Inf in a tenant's series is an error: the last figures are kept and the message names the
  cause; once the series is a number again the message goes;
- a raised dailyUSD is shown at once (not an interval later); a removed one removes status.budget;
- no series of the service, no Prometheus URL, an unreachable Prometheus: the message says which,
  the service is Ready all the same, and nothing is written at steady state.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from agent_operator import budget, opmetrics, run
from agentops_dev import devcluster, waiting
from agentops_dev.localprometheus import DiscoveringPrometheus, serving
from agentops_dev.localredis import free_port
from prometheus_client import CollectorRegistry, start_http_server

from agent_runtime.metrics import Metrics
from tests.integration.operator.conftest import Operator, agent_service, ready_service

SERVICE = "shop"
REFRESHES = "agentservice_operator_budget_refreshes_total"
FIGURES = {"spent_usd": 1.25, "reserved_usd": 0.0125, "remaining_usd": 3.7375, "held": 2}


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """`waiting.eventually` with room for a busy machine: each wait spans a scrape and a refresh."""
    return await waiting.eventually(check, timeout)


class Pod:
    """The runtime's metrics of one pod of `shop`, served on a loopback port."""

    def __init__(self, track: str) -> None:
        self.metrics = Metrics(CollectorRegistry(), service=SERVICE, track=track)
        self._server, self._thread = start_http_server(0, addr="127.0.0.1", registry=self.metrics.registry)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self._server.server_port}"

    def export(self, **figures: Any) -> None:
        self.metrics.budget(**{**FIGURES, **figures})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclasses.dataclass
class Pods:
    api: Pod
    worker: Pod
    prometheus: DiscoveringPrometheus

    def export(self, **figures: Any) -> None:
        """Both pods export the same figures (as they do once both have read Redis)."""
        self.api.export(**figures)
        self.worker.export(**figures)

    def scraped(self, spent: float) -> None:
        """Block until Prometheus's max of the spend is `spent`: what a test starts from."""
        query = f'max(agent_budget_spent_usd{{service="{SERVICE}", namespace="default"}})'

        def probe() -> bool | None:
            result = self.prometheus.query(query)
            return True if result and float(result[0]["value"][1]) == spent else None

        self.prometheus.wait_for(probe)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    api, worker = Pod("stable"), Pod("canary")
    try:
        with serving(DiscoveringPrometheus(tmp_path_factory.mktemp("prometheus"))) as prometheus:
            # labelled as the operator's ServiceMonitor has them labelled (the target's, not the pod's)
            prometheus.set_targets(
                {
                    pod.target: {"namespace": "default", "pod": name, "service": SERVICE, "track": track}
                    for name, pod, track in (("api", api, "stable"), ("worker", worker, "canary"))
                }
            )
            yield Pods(api, worker, prometheus)
    finally:
        api.close()
        worker.close()


class BudgetOperator(Operator):
    """The conftest operator with a Prometheus URL (or none) and a short budget refresh interval."""

    prometheus_url: str | None = None
    budget_interval: float = 0.3

    def config(self, resync: float) -> run.Config:
        return dataclasses.replace(
            super().config(resync),
            prometheus_url=self.prometheus_url,
            budget_interval=self.budget_interval,
            budget_tick=0.1,
        )


@contextlib.asynccontextmanager
async def running(
    cluster: tuple[devcluster.DevCluster, str], prometheus_url: str | None, *, interval: float = 0.3
) -> AsyncIterator[BudgetOperator]:
    emulator, url = cluster
    handle = BudgetOperator(cluster=emulator, url=url, metrics=opmetrics.create())
    handle.prometheus_url, handle.budget_interval = prometheus_url, interval
    await handle.start()
    try:
        yield handle
    finally:
        await handle.halt()


def shop(name: str = SERVICE, daily: float | None = 5.0) -> dict[str, Any]:
    model = {"providers": [{"name": "primary", "model": "claude-sonnet-4-5", "baseURL": "http://127.0.0.1:9/"}]}
    return agent_service(name, model=model, budget={} if daily is None else {"dailyUSD": daily})


def budget_of(op: Operator, name: str = SERVICE) -> dict[str, Any]:
    return dict(op.status(name).get("budget") or {})


def refreshes(op: Operator, result: budget.Outcome) -> float:
    return op.metrics.registry.get_sample_value(REFRESHES, {"result": result.value}) or 0.0


async def assert_quiet(op: Operator, result: budget.Outcome, passes: int = 3) -> None:
    """Over `passes` more refreshes (each ending in `result`), the operator writes nothing at all."""
    mark = op.cluster.request_count
    start = refreshes(op, result)
    await eventually(lambda: refreshes(op, result) >= start + passes)
    assert op.cluster.writes(mark) == []


async def test_status_shows_the_service_wide_figures_and_follows_the_spend(
    cluster: tuple[devcluster.DevCluster, str], pods: Pods
) -> None:
    pods.export()
    pods.worker.export(spent_usd=1.0)  # a pod that has not read Redis since the last call settled
    pods.scraped(1.25)
    async with running(cluster, pods.prometheus.url) as op:
        await ready_service(op, shop())
        await eventually(lambda: budget_of(op).get("spentTodayUSD") == 1.25)
        shown = budget_of(op)
        first = shown.pop("observedAt")
        observed = datetime.datetime.fromisoformat(first.replace("Z", "+00:00"))
        now = datetime.datetime.now(datetime.UTC)
        assert abs((now - observed).total_seconds()) < 60
        assert shown == {
            "dailyUSD": 5.0,
            "day": observed.strftime("%Y-%m-%d"),
            "spentTodayUSD": 1.25,
            "reservedUSD": 0.0125,
            "remainingUSD": 3.7375,
            "heldTasks": 2,
        }
        await assert_quiet(op, budget.Outcome.MEASURED)

        pods.export(spent_usd=2.5, remaining_usd=2.4875, held=0)
        # Prometheus scrapes the two pods at different moments: a refresh in between may show the
        # new spend beside the other pod's old remainder; the next one shows all of the new figures.
        await eventually(
            lambda: [budget_of(op).get(k) for k in ("spentTodayUSD", "remainingUSD", "heldTasks")] == [2.5, 2.4875, 0]
        )
        assert budget_of(op)["observedAt"] >= first  # RFC 3339 in UTC: compares as text
        await assert_quiet(op, budget.Outcome.MEASURED)


async def test_an_infinite_figure_keeps_the_last_ones_and_says_why(
    cluster: tuple[devcluster.DevCluster, str], pods: Pods
) -> None:
    pods.export()
    pods.scraped(1.25)
    async with running(cluster, pods.prometheus.url) as op:
        await ready_service(op, shop())
        await eventually(lambda: budget_of(op).get("spentTodayUSD") == 1.25)
        observed = budget_of(op)["observedAt"]

        pods.worker.export(spent_usd=math.inf)  # anyone can export a series with these labels
        await eventually(lambda: "not a figure of money" in budget_of(op).get("message", ""))
        shown = budget_of(op)
        assert (shown["spentTodayUSD"], shown["observedAt"]) == (1.25, observed)
        assert shown["message"].endswith(f"the figures are those of {observed}")
        await assert_quiet(op, budget.Outcome.ERROR)

        pods.export(spent_usd=1.5, remaining_usd=3.4875)
        await eventually(lambda: budget_of(op).get("spentTodayUSD") == 1.5)
        assert "message" not in budget_of(op)


async def test_a_changed_daily_budget_is_shown_at_once_and_a_removed_one_removes_the_status(
    cluster: tuple[devcluster.DevCluster, str], pods: Pods
) -> None:
    pods.export()
    pods.scraped(1.25)
    async with running(cluster, pods.prometheus.url, interval=3600) as op:  # no refresh by the clock
        await ready_service(op, shop())
        await eventually(lambda: budget_of(op).get("dailyUSD") == 5.0)
        live = copy.deepcopy(op.service(SERVICE))  # the emulator's own dict: edited in place, no event
        assert live is not None
        live["spec"]["budget"]["dailyUSD"] = 8.0
        await op.put(live)
        await eventually(lambda: budget_of(op).get("dailyUSD") == 8.0)
        assert budget_of(op)["spentTodayUSD"] == 1.25

        live = copy.deepcopy(op.service(SERVICE))
        assert live is not None
        del live["spec"]["budget"]["dailyUSD"]
        await op.put(live)
        await eventually(lambda: "budget" not in op.status(SERVICE))


@pytest.mark.parametrize(
    ("where", "outcome", "says"),
    [
        ("scraped", budget.Outcome.NO_DATA, "Prometheus has no value of agent_budget_spent_usd for service 'quiet'"),
        ("none", budget.Outcome.NOT_CONFIGURED, budget.NO_PROMETHEUS),
        ("nobody", budget.Outcome.ERROR, "is unreachable"),
    ],
)
async def test_without_figures_the_message_says_why_and_nothing_is_rewritten(
    cluster: tuple[devcluster.DevCluster, str], pods: Pods, where: str, outcome: budget.Outcome, says: str
) -> None:
    url = {"scraped": pods.prometheus.url, "none": None, "nobody": f"http://127.0.0.1:{free_port()}"}[where]
    async with running(cluster, url) as op:
        await ready_service(op, shop("quiet"))  # Ready whatever Prometheus does
        await eventually(lambda: says in budget_of(op, "quiet").get("message", ""))
        assert set(budget_of(op, "quiet")) == {"dailyUSD", "message"}  # nothing measured, nothing shown
        await assert_quiet(op, outcome)
        assert op.status("quiet")["phase"] == "Ready"

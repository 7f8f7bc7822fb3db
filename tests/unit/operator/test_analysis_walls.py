"""The tenant walls of canary analysis that need no server (docs/security.md).

- `spec.canary.interval` between 1s and 24h, in the model and in the CRD's CEL rule; an absurd
  duration (`999999999999h`) is refused, never an overflow;
- analysis slots (`slots.FairSlots`): a namespace runs at most its share, a freed slot goes to the
  waiting namespaces in turn, a busy namespace never holds another's analysis behind its own;
- the Prometheus client's messages: no series labels (several series, execution errors), no
  credentials of the URL; a refusal of the namespace enforcer is marked as one and judged `error`
  with the check named in the AnalysisReady condition.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
import pytest
from agent_operator import status
from agent_operator.api import crd, models
from agent_operator.canary import analysis, slots
from agent_operator.canary.prometheus import _api_error, parse_result, redact_url
from prometheus_api_client.exceptions import PrometheusApiClientException

from tests.support.crdcheck import cel_failures


def canary_schema() -> dict[str, Any]:
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema: dict[str, Any] = spec["properties"]["canary"]
    return schema


@pytest.mark.parametrize("interval", ["1s", "1000ms", "60s", "1h30m", "24h", "23h59m60s"])
def test_intervals_from_one_second_to_a_day_are_accepted(interval: str) -> None:
    assert models.Canary.model_validate({"interval": interval}).interval == interval
    assert cel_failures({"steps": [10, 100], "interval": interval}, canary_schema()) == []


@pytest.mark.parametrize("interval", ["0s", "999ms", "24h1s", "25h", "999999999999h"])
def test_intervals_outside_one_second_to_a_day_are_refused(interval: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"between 1s and 24h|should match pattern"):
        models.Canary.model_validate({"interval": interval})
    assert cel_failures({"steps": [10, 100], "interval": interval}, canary_schema()) != []


def test_an_interval_too_long_to_be_a_duration_is_refused_by_its_length() -> None:
    with pytest.raises(pydantic.ValidationError):
        models.Canary.model_validate({"interval": "9" * 20 + "h"})
    assert canary_schema()["properties"]["interval"]["maxLength"] == models.MAX_INTERVAL_LENGTH


# --- fair slots -----------------------------------------------------------------------------------


async def test_a_namespace_runs_at_most_its_share_and_another_gets_a_slot_at_once() -> None:
    fair = slots.FairSlots(total=4, per_namespace=2)
    assert fair.try_acquire("hostile") and fair.try_acquire("hostile")
    assert not fair.try_acquire("hostile")
    waiting = [asyncio.create_task(fair.acquire("hostile")) for _ in range(10)]
    await asyncio.sleep(0)
    # the victim's analysis is not queued behind the ten hostile ones
    await asyncio.wait_for(fair.acquire("victim"), timeout=1)
    assert fair.running("victim") == 1 and fair.running("hostile") == 2
    fair.release("victim")
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert not fair._waiting


async def test_freed_slots_go_to_the_waiting_namespaces_in_turn() -> None:
    fair = slots.FairSlots(total=1, per_namespace=1)
    assert fair.try_acquire("a")
    order: list[str] = []

    async def take(namespace: str) -> None:
        await fair.acquire(namespace)
        order.append(namespace)

    tasks = [asyncio.create_task(take(ns)) for ns in ("a", "a", "a", "b", "c")]
    await asyncio.sleep(0)
    for _ in range(5):
        fair.release(order[-1] if order else "a")
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    # a's three waiters do not all go before b and c: one each, in turn
    assert order == ["a", "b", "c", "a", "a"]
    fair.release("a")
    assert fair.in_use == 0


async def test_a_slot_is_marked_held_for_the_code_inside() -> None:
    fair = slots.FairSlots(total=1)
    assert slots.HELD.get() is None
    async with fair.slot("team"):
        assert slots.HELD.get() == "team"
    assert slots.HELD.get() is None and fair.in_use == 0


# --- messages ---------------------------------------------------------------------------------------


def test_several_series_are_counted_never_quoted() -> None:
    result = [
        {"metric": {"namespace": "other", "service": "secret-project"}, "value": [1, "1"]},
        {"metric": {"namespace": "other", "service": "another"}, "value": [1, "2"]},
    ]
    measured = parse_result(result)
    assert "2 series" in measured.error
    assert "other" not in measured.error and "secret-project" not in measured.error
    assert "other" not in parse_result({"metric": {"namespace": "other"}}).error


def test_an_execution_error_loses_its_label_sets_a_parse_error_keeps_the_query() -> None:
    body = (
        b'{"status":"error","errorType":"execution","error":"found duplicate series for the match group '
        b'{namespace=\\"other\\"} on the right hand-side of the operation: [{namespace=\\"other\\", '
        b'service=\\"x\\"}];many-to-many matching not allowed"}'
    )
    measured = _api_error(PrometheusApiClientException(f"HTTP Status Code 422 ({body!r})"))
    assert measured.error.startswith("HTTP 422: execution: found duplicate series")
    assert "other" not in measured.error and "service" not in measured.error
    parse = b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \\"{\\""}'
    assert "parse error" in _api_error(PrometheusApiClientException(f"HTTP Status Code 400 ({parse!r})")).error


def test_a_refusal_of_the_enforcer_is_marked_and_named_in_the_condition() -> None:
    body = (
        b'{"status":"error","errorType":"prom-label-proxy","error":"conflicting label matcher: label matcher '
        b'\\"namespace=\\\\\\"b\\\\\\"\\" conflicts with injected matcher \\"namespace=\\\\\\"a\\\\\\"\\""}'
    )
    measured = _api_error(PrometheusApiClientException(f"HTTP Status Code 400 ({body!r})"))
    assert measured.refused and "conflicting label matcher" in measured.error
    canary = models.Canary.model_validate(
        {"enabled": True, "checks": [{"name": "spy", "query": 'sum(x{namespace="b"})', "max": 1}]}
    )
    plan = analysis.plan(canary, analysis.Scope(service="s", namespace="a"))
    measurements = {query: analysis.Measurement(5.0) for query in plan.queries()}
    measurements['sum(x{namespace="b"})'] = measured
    result = analysis.judge(plan, measurements, time="t", weight=10)
    spy = next(c for c in result.checks if c.name == "spy")
    assert spy.verdict == "error" and spy.value is None and spy.message.startswith(analysis.REFUSED)
    state = models.CanaryStatus(phase="Progressing", canary_revision="r2", stable_revision="r1", last_analysis=result)
    conditions = status.canary_conditions(canary, state, "r2", prometheus_url="http://127.0.0.1:9095")
    assert conditions is not None
    ready = next(c for c in conditions if c.type == status.ANALYSIS_READY)
    assert (ready.status, ready.reason) == ("False", "QueryRefused")
    assert "spy" in ready.message and "5" not in ready.message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pa55@prom.monitoring:9090/", "http://***@prom.monitoring:9090/"),
        ("https://token@prom:443/api?x=secret", "https://***@prom:443/api"),
        ("http://[::1]:9090", "http://[::1]:9090"),
        ("http://prometheus.monitoring:9090", "http://prometheus.monitoring:9090"),
    ],
)
def test_the_prometheus_url_is_shown_without_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown

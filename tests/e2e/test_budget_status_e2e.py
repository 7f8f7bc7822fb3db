"""`status.budget` end to end: the runtime spends, a real Prometheus scrapes it, the operator shows it.

The real operator (with `--prometheus-url` and 1 s budget refreshes) on the dev cluster; the
harness kubelet runs the service's API and worker Deployments as runtime processes, configured
from the operator's ConfigMap (so with the spec's `dailyUSD`); a real redis-server; the local
Anthropic-compatible model server; `DiscoveringPrometheus` scraping the pods.

Covers:
- before any task, the status shows a day with nothing spent, the whole budget remaining;
- after tasks ran, the status comes to show the day's spend exactly as the runtime settled it in
  Redis (for the day the status names), nothing reserved or held, `remainingUSD` = `dailyUSD` -
  spent; the tasks' own usage adds up to that spend (each call rounded up to a micro-dollar);
- the service at rest: further refreshes that find the same figures make no write to the API server.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis.asyncio
from agentops_dev.localmodel import LocalModelServer
from agentops_dev.stack import NAMESPACE, Stack, service_body

from agent_runtime import constants
from agent_runtime.budget import MICROS
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.slow

NAME = "spender"
DAILY_USD = 5.0
TASKS = 3
REFRESHES = "agentservice_operator_budget_refreshes_total"


def budget_of(stack: Stack) -> dict[str, Any]:
    return dict(stack.status(NAME).get("budget") or {})


def measured(stack: Stack) -> float:
    return stack.sample(REFRESHES, result="measured")


async def run_tasks(stack: Stack, count: int) -> list[dict[str, Any]]:
    """Submit `count` tasks to the API pod and wait until every one has finished."""
    (pod,) = stack.kubelet.api_pods()
    base = f"http://{pod.address}"
    async with httpx.AsyncClient(timeout=5.0, headers={"authorization": f"Bearer {stack.token(NAME)}"}) as http:
        ids = []
        for number in range(count):
            response = await http.post(f"{base}{constants.TASKS_PATH}", json={"input": f"Say hello, {number}."})
            assert response.status_code == 202, response.text
            ids.append(response.json()["task_id"])

        async def finished() -> list[dict[str, Any]] | None:
            tasks = [(await http.get(f"{base}{constants.TASKS_PATH}/{task_id}")).json() for task_id in ids]
            return tasks if all(t["status"] in ("succeeded", "failed") for t in tasks) else None

        tasks: list[dict[str, Any]] = await eventually(finished, timeout=60)
    assert [t["status"] for t in tasks] == ["succeeded"] * count, tasks
    return tasks


async def test_status_budget_is_the_runtimes_spend(stack: Stack) -> None:
    async with LocalModelServer() as model:
        body = service_body(NAME, model.url, stack.redis_url)
        body["spec"].update(canary={"enabled": False}, worker={"replicas": 1}, budget={"dailyUSD": DAILY_USD})
        await stack.serve(body)
        await eventually(lambda: budget_of(stack).get("spentTodayUSD") == 0.0, timeout=60)
        assert budget_of(stack)["remainingUSD"] == DAILY_USD

        tasks = await run_tasks(stack, TASKS)
        billed = sum(t["usage"]["cost_usd"] for t in tasks)
        calls = len(model.completed())
        assert billed > 0 and calls >= TASKS

        keys = constants.ServiceKeys(namespace=NAMESPACE, service=NAME)
        client = redis.asyncio.Redis.from_url(stack.redis_url)
        try:

            async def settled_spend_shown() -> bool:
                # The worker pod re-reads Redis every 5 s, the API pod at each scrape, and `max` takes
                # the larger: for a refresh or two the last call's reservation, or the remainder from
                # before it, can still show beside the settled spend (docs/budgets.md).
                shown = budget_of(stack)
                if not shown.get("spentTodayUSD") or (shown["reservedUSD"], shown["heldTasks"]) != (0.0, 0):
                    return False
                micros = int(await client.get(keys.budget_spent(shown["day"])) or 0)
                remaining = round(DAILY_USD - micros / MICROS, 6)
                return bool((shown["spentTodayUSD"], shown["remainingUSD"]) == (micros / MICROS, remaining))

            await eventually(settled_spend_shown, timeout=60)
        finally:
            await client.aclose()
        shown = budget_of(stack)
        spent = shown["spentTodayUSD"]
        # Each call's cost is settled rounded up to a micro-dollar (1e-9: the float noise of the sum).
        assert billed - 1e-9 <= spent <= billed + calls / MICROS
        assert shown["observedAt"].startswith(shown["day"])
        assert "message" not in shown

        # At rest: every refresh finds the same figures and writes nothing.
        mark = stack.cluster.request_count
        start = measured(stack)
        await eventually(lambda: measured(stack) >= start + 3, timeout=60)
        assert stack.cluster.writes(mark) == []
        assert budget_of(stack) == shown

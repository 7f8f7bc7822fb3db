"""How long a cost report over the whole retention takes: 35 days of hourly figures, read and summed.

Usage (from the repository root): `PYTHONPATH=. python bench/cost_report.py [--days 35] [--models 3]
[--users 100] [--intents 5] [--calls-per-hour 200] [--repeat 20]`.

One redis-server (no persistence). The hours are filled the way workers fill them: `--calls-per-hour`
settles per hour through the ledger's own settle script (`BudgetLedger.settle`, each with its
report figures) — spread over `--models` models, `--users` users and `--intents` intents — for every
hour of `--days` days, at an injected clock; then 100 finished tasks per day are ranked
(`CostReports.rank_task`). Then `GET /v1/costs` over the whole retention is asked `--repeat` times
through the API app in-process (ASGI: the HTTP stack without a socket) and `CostReports.report`
alone as many times: min / median / max milliseconds of each, and the report's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import time

import httpx
from agentops_dev.localredis import LocalRedis
from prometheus_client import CollectorRegistry

from agent_runtime import costs
from agent_runtime.api import create_app
from agent_runtime.budget import BudgetLedger
from agent_runtime.composition import build_reports, connect_redis
from agent_runtime.config import RuntimeConfig

TOKEN = "bench"


async def fill(client: object, cfg: RuntimeConfig, args: argparse.Namespace, now: float) -> int:
    clock = [now]
    ledger = BudgetLedger(
        client,  # type: ignore[arg-type]
        keys=cfg.keys(),
        daily_limit_usd=None,
        per_task_limit_usd=None,
        report_retention_days=cfg.report_retention_days,
        report_max_users=cfg.report_max_users,
        clock=lambda: clock[0],
    )
    reports = build_reports(cfg, client)  # type: ignore[arg-type]
    calls = 0
    hours = args.days * 24
    for hour in range(hours):
        clock[0] = now - (hours - hour - 1) * 3600
        for n in range(args.calls_per_hour):
            _, reservation = await ledger.reserve(f"t{hour}-{n % 20}", fence=1, amount=10_000)
            assert reservation is not None
            charge = costs.Charge(
                model=f"model-{n % args.models}",
                user=f"user-{(n * 7 + hour) % args.users}",
                intent=f"intent-{n % args.intents}",
                input_tokens=900 + n,
                output_tokens=120,
            )
            await ledger.settle(reservation, 2_500 + n, charge)
            calls += 1
        if hour % 24 == 23:
            for n in range(100):
                await reports.rank_task(
                    f"day{hour // 24}-task{n}", cost_micros=5_000 + n * 13, model="model-0", tokens=2_000,
                    finished_at=clock[0] - n, user=f"user-{n}",
                )  # fmt: skip
    return calls


def summary(samples: list[float]) -> str:
    return f"min {min(samples):.1f} / median {statistics.median(samples):.1f} / max {max(samples):.1f} ms"


async def run(args: argparse.Namespace) -> None:
    server = LocalRedis(durable=False)
    server.start()
    client = connect_redis(server.url)
    try:
        cfg = RuntimeConfig(service="bench", report_retention_days=args.days, report_max_users=args.users)
        now = time.time()
        started = time.monotonic()
        calls = await fill(client, cfg, args, now)
        filled = time.monotonic() - started
        start = datetime.datetime.fromtimestamp(now, datetime.UTC) - datetime.timedelta(days=args.days)
        start = start.replace(minute=0, second=0, microsecond=0) + datetime.timedelta(hours=1)
        params = {"from": costs.rfc3339(start), "top": "10"}
        app = create_app(cfg, redis=client, registry=CollectorRegistry(), auth_token=TOKEN)
        http: list[float] = []
        direct: list[float] = []
        reports = build_reports(cfg, client)
        period = costs.parse_range(params["from"], None, now=time.time(), retention_days=args.days)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            for _ in range(args.repeat):
                begin = time.perf_counter()
                response = await api.get("/v1/costs", params=params, headers={"authorization": f"Bearer {TOKEN}"})
                http.append((time.perf_counter() - begin) * 1000)
                assert response.status_code == 200, response.text
                begin = time.perf_counter()
                await reports.report(period, top=10)
                direct.append((time.perf_counter() - begin) * 1000)
        report = response.json()
        print(
            f"{args.days} days x 24 hours, {calls} settles ({args.calls_per_hour} per hour, filled in {filled:.0f} s),"
            f" {args.models} models, {args.users} users, {args.intents} intents"
        )
        print(f"  report: {len(report['byHour'])} hours, totalRequests {report['totalRequests']},"
              f" {len(report['byUser'])} users, {len(report['topExpensiveTasks'])} top tasks")  # fmt: skip
        print(f"  GET /v1/costs (ASGI, in-process): {summary(http)}")
        print(f"  CostReports.report alone: {summary(direct)}")
    finally:
        await client.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--intents", type=int, default=5)
    parser.add_argument("--calls-per-hour", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

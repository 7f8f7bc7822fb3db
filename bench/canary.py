"""Canary analysis speed and accuracy, end to end: seconds (and intervals) from a fault to the rollback,
and false rollbacks of healthy canaries.

The machinery is the end-to-end tests' (`agentops_dev.stack`): the real operator on the dev cluster
(`--prometheus-url`, 1 s scrapes), a kubelet that runs every Deployment's pods as runtime processes,
a real Prometheus discovering them, one local model server per track and a load generator. One
stack serves every run; each run is a fresh AgentService (1 API and 2 worker replicas), deleted at
the end (the garbage collector removes its children, the kubelet its pods).

- fault runs: a healthy canary (steps 10, 20, 50, 100) passes its analysis at 10; at a random
  moment of the next interval (counted from that analysis's time) its model starts answering 30 %
  of calls with an error (HTTP 400); measured: seconds from that moment to
  `status.canary.phase == RolledBack`, and the same in intervals; and, for every analysis after
  the fault, the fault's age when its queries ran (its `time`) and when it was seen (polling the
  status every 20 ms), its verdict and the error rate it measured: the smallest age that failed
  and the largest that passed bound the detection delay (docs/canary.md, "How fast a fault is
  caught"). With `failureLimit` F a fault at a random moment is rolled back after d + (F-1) to
  d + F intervals (d: the detection delay), so within two intervals needs F = 1 and d <= interval;
- healthy runs: a canary as good as stable (steps 10, 50, 100), the same `failureLimit`; counted:
  promoted, rolled back (a false rollback), paused or stuck.

Also reported: the load averages (`/proc/loadavg`) at every run, the spacing of the analyses seen,
and how late Prometheus scraped (its own `prometheus_target_interval_length_seconds` quantiles
and the targets' `scrape_duration_seconds`).

Run: `python bench/canary.py [--fault-runs 10] [--healthy-runs 20] [--interval 3] [--failure-limit 1]
[--min-requests 5] [--rate 16]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import random
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import structlog
from agentops_dev import kubelet
from agentops_dev.localmodel import FAULT_STATUS, Faults, LocalModelServer
from agentops_dev.localprometheus import DiscoveringPrometheus
from agentops_dev.localredis import LocalRedis
from agentops_dev.stack import AGSVC, NAMESPACE, Stack, running_stack, service_body
from agentops_dev.waiting import eventually

DEFAULT_RATE = 16.0  # tasks/s submitted across the API pods
LOADS: list[float] = []  # 1-minute load average at the start of every run


def load_average() -> str:
    """`/proc/loadavg`'s three averages, as `uptime` prints them."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    LOADS.append(float(one))
    return f"{one}, {five}, {fifteen}"


def error_rate(analysis: dict[str, Any]) -> float | None:
    for check in analysis.get("checks", []):
        if check["name"] == "error-rate":
            value = check.get("value")
            return None if value is None else round(float(value), 4)
    return None


class Watcher:
    """Polls a service's canary status and stamps each new analysis with the monotonic time it was seen."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack, self.name = stack, name
        self.seen: list[tuple[float, dict[str, Any]]] = []
        self.count = 0

    def poll(self) -> dict[str, Any]:
        status = self.stack.canary(self.name)
        history = status.get("history") or []
        last = status.get("lastAnalysis")
        # history is reset by a new rollout and bounded to 10: count by the last analysis's identity
        if last and (not self.seen or self.seen[-1][1] != last):
            self.seen.append((time.monotonic(), last))
        self.count = len(history)
        return status


async def _rollout(stack: Stack, name: str, model: LocalModelServer) -> None:
    def change(body: dict[str, Any]) -> None:
        body["spec"]["model"]["providers"][0]["baseURL"] = model.url

    await stack.edit(name, change)
    # generous: on the loaded 2 cores a canary pod once took more than 30 s to be ready
    await eventually(lambda: stack.kubelet.ready_at(f"{name}-worker-canary") is not None, timeout=120)


def _due_in(status: dict[str, Any]) -> float | None:
    """Seconds from now to `status.canary.nextAnalysisTime`: where in its interval the fault started."""
    stamp = status.get("nextAnalysisTime")
    if not stamp:
        return None
    return round(datetime.datetime.fromisoformat(stamp).timestamp() - time.time(), 2)


def _wall(analysis: dict[str, Any]) -> float:
    """When the analysis's queries ran (its `time`, in milliseconds), on the wall clock."""
    return datetime.datetime.fromisoformat(analysis["time"]).timestamp()


def _age(analysis: dict[str, Any], since: float) -> float:
    """Seconds from `since` (wall clock) to when the analysis's queries ran."""
    return round(_wall(analysis) - since, 2)


async def _retire(stack: Stack, name: str) -> None:
    await stack.cluster.delete_object(AGSVC, NAMESPACE, name)
    await eventually(lambda: not any(p.deployment.startswith(f"{name}-") for p in stack.kubelet.pods.values()), 30)


async def fault_run(
    stack: Stack,
    index: int,
    interval: float,
    failure_limit: int,
    rng: random.Random,
    *,
    min_requests: int = 5,
    rate: float = DEFAULT_RATE,
) -> dict[str, Any]:
    name = f"fault-{index}"
    load = load_average()
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(
            name,
            stable_model.url,
            stack.redis_url,
            steps=[10, 20, 50, 100],
            interval=f"{interval:g}s",
            minRequests=min_requests,
            failureLimit=failure_limit,
        )
        await stack.serve(body)
        watcher = Watcher(stack, name)
        async with stack.load(name, rate):
            await _rollout(stack, name, canary_model)
            moved = await eventually(
                lambda: (c := watcher.poll()).get("weight") == 20 and c, timeout=120, interval=0.02
            )
            step = time.monotonic()
            # a random moment of the interval at 20, which starts with the analysis that moved the
            # rollout there (the step changes no pod: docs/canary.md), not when the bench saw the
            # step: on the loaded machine the status came up to 2.9 s after that analysis, and a
            # fault drawn from then fell after the analysis at 20 and before the last one (promoted)
            target = _wall(moved["lastAnalysis"]) + rng.uniform(0, interval)
            late = max(0.0, time.time() - target)
            await asyncio.sleep(max(0.0, target - time.time()))
            canary_model.faults = Faults(error_ratio=0.3, error_status=FAULT_STATUS, seed=index)
            fault, fault_wall = time.monotonic(), time.time()
            due_in = _due_in(stack.canary(name))
            await eventually(
                lambda: watcher.poll().get("phase") in ("RolledBack", "Promoted"), timeout=60, interval=0.02
            )
            seconds = time.monotonic() - fault
        status = stack.canary(name)
    await _retire(stack, name)
    # every analysis seen after the fault: (fault age when its queries ran, when it was seen in the
    # status, weight, verdict, error rate measured)
    after = [
        (_age(a, fault_wall), round(seen - fault, 2), a["weight"], a["verdict"], error_rate(a))
        for seen, a in watcher.seen
        if seen > fault
    ]
    # seen apart: the step to 20 and the first analysis at 20 (the first interval), then each next one
    times = [step] + [seen for seen, _ in watcher.seen if seen > step]
    spacing = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    return {
        "phase": status["phase"],
        "seconds": round(seconds, 2),
        "intervals": round(seconds / interval, 2),
        "due_in": due_in,
        "late": round(late, 2),  # the moment drawn had passed when the step was seen: injected then
        "after_fault": after,
        "spacing": spacing,
        "load": load,
    }


async def healthy_run(
    stack: Stack, index: int, interval: float, failure_limit: int, *, min_requests: int = 5, rate: float = DEFAULT_RATE
) -> dict[str, Any]:
    name = f"healthy-{index}"
    load = load_average()
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(
            name,
            stable_model.url,
            stack.redis_url,
            steps=[10, 50, 100],
            interval=f"{interval:g}s",
            minRequests=min_requests,
            failureLimit=failure_limit,
        )
        await stack.serve(body)
        started = time.monotonic()
        async with stack.load(name, rate):
            await _rollout(stack, name, canary_model)
            with contextlib.suppress(TimeoutError):  # paused or stuck: reported as such
                await eventually(
                    lambda: stack.canary(name).get("phase") in ("Promoted", "RolledBack"),
                    timeout=12 * interval + 20,
                    interval=0.05,
                )
        status = stack.canary(name)
        seconds = time.monotonic() - started
    await _retire(stack, name)
    analyses = [(a["weight"], a["verdict"], error_rate(a)) for a in status["history"]]
    return {"phase": status["phase"], "seconds": round(seconds, 1), "analyses": analyses, "load": load}


async def attempt(run: Any, stack: Stack, name: str) -> dict[str, Any]:
    """One run; a run whose pods could not start on the loaded machine is reported, not fatal."""
    stack.kubelet.errors.clear()  # a pod of an earlier run that started late must not fail this one
    try:
        result: dict[str, Any] = await run
    except (TimeoutError, RuntimeError) as exc:
        with contextlib.suppress(TimeoutError, RuntimeError):
            await _retire(stack, name)
        return {"phase": "not run", "why": str(exc)[:200], "load": load_average()}
    return result


async def main_async(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    # a runtime pod needs more than the dev kubelet's 30 s to answer /healthz when the 2 cores run
    # a load average of 20 (seen: a run lost to it)
    setattr(kubelet, "START_TIMEOUT", 120.0)  # noqa: B010 (a Final of the dev package, for this bench only)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        root = Path(tmp)
        (root / "redis").mkdir()
        (root / "prometheus").mkdir()
        redis = LocalRedis(directory=root / "redis", durable=False)
        redis.start()
        prometheus = DiscoveringPrometheus(root / "prometheus")
        prometheus.start()
        try:
            prometheus.wait_ready()
            async with running_stack(root / "pods", redis.url, prometheus) as stack:
                print(f"start: load average {load_average()}", flush=True)
                faults = []
                for i in range(args.fault_runs):
                    run = fault_run(
                        stack, i, args.interval, args.failure_limit, rng, min_requests=args.min_requests, rate=args.rate
                    )
                    faults.append(await attempt(run, stack, f"fault-{i}"))
                    print(f"fault run {i}: {faults[-1]}", flush=True)
                healthy = []
                for i in range(args.healthy_runs):
                    run = healthy_run(
                        stack, i, args.interval, args.failure_limit, min_requests=args.min_requests, rate=args.rate
                    )
                    healthy.append(await attempt(run, stack, f"healthy-{i}"))
                    print(f"healthy run {i}: {healthy[-1]}", flush=True)
                print(f"end: load average {load_average()}", flush=True)
                scrapes = scrape_health(prometheus.url)
        finally:
            prometheus.stop()
            redis.kill()
    report(faults, healthy, args, scrapes)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def scrape_health(url: str) -> str:
    """How late Prometheus scraped: its own scrape-interval quantiles and the targets' scrape durations."""
    lines = []
    for line in _get(f"{url}/metrics").splitlines():
        if line.startswith('prometheus_target_interval_length_seconds{interval="1s"'):
            lines.append(line)
    for what in ("0.5", "0.99", "1"):
        query = f"max(quantile_over_time({what}, scrape_duration_seconds[3h]))"
        body = json.loads(_get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query})))
        result = body["data"]["result"]
        value = float(result[0]["value"][1]) if result else float("nan")
        lines.append(f"scrape duration, worst target's {what} quantile over the run: {value:.3f} s")
    return "\n".join(lines)


def report(faults: list[dict[str, Any]], healthy: list[dict[str, Any]], args: argparse.Namespace, scrapes: str) -> None:
    interval = args.interval
    print(
        f"\ninterval {interval:g} s, 1 s scrapes, {args.rate:g} tasks/s, failureLimit {args.failure_limit}, "
        f"minRequests {args.min_requests}"
    )
    if LOADS:
        print(
            f"1-minute load average at the runs: min {min(LOADS):.2f}, median {statistics.median(LOADS):.2f}, "
            f"max {max(LOADS):.2f}"
        )
    print(scrapes)
    late = [r["late"] for r in faults if r.get("late")]
    if late:
        print(f"faults injected late (the step was seen after the moment drawn): {len(late)}, by {sorted(late)} s")
    lost = [r for r in [*faults, *healthy] if r["phase"] == "not run"]
    if lost:
        print(f"runs lost to pods that did not start: {len(lost)}")
    faults = [r for r in faults if r["phase"] != "not run"]
    healthy = [r for r in healthy if r["phase"] != "not run"]
    first = [r["after_fault"][0] for r in faults if r["after_fault"]]
    failed = sorted(age for age, _, _, verdict, _ in first if verdict == "failure")
    passed = sorted(age for age, _, _, verdict, _ in first if verdict != "failure")
    if failed:
        print(f"first analysis after the fault: failed at fault ages {failed} s (when its queries ran)")
    if passed:
        print(f"first analysis after the fault: did not fail at fault ages {passed} s")
    lags = sorted(round(seen - ran, 2) for r in faults for ran, seen, *_ in r["after_fault"])
    if lags:
        median, worst = statistics.median(lags), lags[-1]
        print(f"queries run -> analysis seen in the status: median {median:.2f} s, max {worst:.2f} s")
    spacing = sorted(x for r in faults for x in r["spacing"])
    if spacing:
        median, worst = statistics.median(spacing), spacing[-1]
        print(f"analyses seen apart (the step to the first, then each next): median {median:.2f} s, max {worst:.2f} s")
    rolled = [r for r in faults if r["phase"] == "RolledBack"]
    if rolled:
        seconds = sorted(r["seconds"] for r in rolled)
        intervals = sorted(r["intervals"] for r in rolled)
        print(
            f"fault -> rollback: {len(rolled)}/{len(faults)} rolled back; "
            f"seconds median {statistics.median(seconds):.2f}, max {seconds[-1]:.2f}; "
            f"intervals median {statistics.median(intervals):.2f}, max {intervals[-1]:.2f}; "
            f"within two intervals: {sum(1 for i in intervals if i <= 2.0)}/{len(rolled)}"
        )
    missed = [r for r in faults if r["phase"] != "RolledBack"]
    if missed:
        print(f"faults NOT rolled back: {missed}")
    outcomes = {phase: sum(1 for r in healthy if r["phase"] == phase) for phase in ("Promoted", "RolledBack")}
    other = len(healthy) - sum(outcomes.values())
    if healthy:
        seconds = sorted(r["seconds"] for r in healthy)
        print(
            f"healthy canaries: {outcomes['Promoted']}/{len(healthy)} promoted, {outcomes['RolledBack']} false "
            f"rollbacks, {other} paused or stuck; change -> promoted median {statistics.median(seconds):.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault-runs", type=int, default=10)
    parser.add_argument("--healthy-runs", type=int, default=20)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--failure-limit", type=int, default=1)
    parser.add_argument("--min-requests", type=int, default=5)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="tasks/s submitted (default: %(default)s)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

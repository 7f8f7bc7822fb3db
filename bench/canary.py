"""Canary analysis speed and accuracy, end to end: seconds (and intervals) from a fault to the rollback,
and false rollbacks of healthy canaries.

The machinery is the end-to-end tests' (`agentops_dev.stack`): the real operator on the dev cluster
(`--prometheus-url`, 1 s scrapes), a kubelet that runs every Deployment's pods as runtime processes,
a real Prometheus discovering them, one local model server per track and a load generator. One
stack serves every run; each run is a fresh AgentService (1 API and 2 worker replicas), deleted at
the end (the garbage collector removes its children, the kubelet its pods).

- fault runs: a healthy canary (steps 10, 20, 50, 100) passes its analysis at 10; at a random
  moment of the next interval its model starts answering 30 % of calls with an error (HTTP 400);
  measured: seconds from that moment to `status.canary.phase == RolledBack`, and the same in
  intervals. `failureLimit: 2`, so the floor is one interval (fault just before an analysis whose
  window is mostly faulty) plus one, and the goal is at most two;
- healthy runs: a canary as good as stable (steps 10, 50, 100); counted: promoted, rolled back
  (a false rollback), paused or stuck.

Run: `python bench/canary.py [--fault-runs 10] [--healthy-runs 20] [--interval 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from agentops_dev.localmodel import FAULT_STATUS, Faults, LocalModelServer
from agentops_dev.localprometheus import DiscoveringPrometheus
from agentops_dev.localredis import LocalRedis
from agentops_dev.stack import AGSVC, NAMESPACE, Stack, running_stack, service_body
from agentops_dev.waiting import eventually

RATE = 16.0


async def _rollout(stack: Stack, name: str, model: LocalModelServer) -> None:
    def change(body: dict[str, Any]) -> None:
        body["spec"]["model"]["providers"][0]["baseURL"] = model.url

    await stack.edit(name, change)
    await eventually(lambda: stack.kubelet.ready_at(f"{name}-worker-canary") is not None, timeout=30)


async def _retire(stack: Stack, name: str) -> None:
    await stack.cluster.delete_object(AGSVC, NAMESPACE, name)
    await eventually(lambda: not any(p.deployment.startswith(f"{name}-") for p in stack.kubelet.pods.values()), 30)


async def fault_run(stack: Stack, index: int, interval: float, rng: random.Random) -> dict[str, Any]:
    name = f"fault-{index}"
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(
            name,
            stable_model.url,
            stack.redis_url,
            steps=[10, 20, 50, 100],
            interval=f"{interval:g}s",
            minRequests=5,
            failureLimit=2,
        )
        await stack.serve(body)
        async with stack.load(name, RATE):
            await _rollout(stack, name, canary_model)
            await eventually(lambda: stack.canary(name).get("weight") == 20, timeout=30, interval=0.02)
            await asyncio.sleep(rng.uniform(0, interval))
            canary_model.faults = Faults(error_ratio=0.3, error_status=FAULT_STATUS, seed=index)
            fault = time.monotonic()
            await eventually(
                lambda: stack.canary(name).get("phase") in ("RolledBack", "Promoted"), timeout=60, interval=0.02
            )
            seconds = time.monotonic() - fault
        status = stack.canary(name)
    await _retire(stack, name)
    verdicts = [a["verdict"] for a in status["history"] if a["weight"] == 20]
    return {"phase": status["phase"], "seconds": seconds, "intervals": seconds / interval, "at_20": verdicts}


async def healthy_run(stack: Stack, index: int, interval: float) -> dict[str, Any]:
    name = f"healthy-{index}"
    async with LocalModelServer() as stable_model, LocalModelServer() as canary_model:
        body = service_body(
            name, stable_model.url, stack.redis_url, steps=[10, 50, 100], interval=f"{interval:g}s", minRequests=5
        )
        await stack.serve(body)
        started = time.monotonic()
        async with stack.load(name, RATE):
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
    return {"phase": status["phase"], "seconds": seconds, "analyses": [a["verdict"] for a in status["history"]]}


async def main_async(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
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
                faults = []
                for i in range(args.fault_runs):
                    faults.append(await fault_run(stack, i, args.interval, rng))
                    print(f"fault run {i}: {faults[-1]}", flush=True)
                healthy = []
                for i in range(args.healthy_runs):
                    healthy.append(await healthy_run(stack, i, args.interval))
                    print(f"healthy run {i}: {healthy[-1]}", flush=True)
        finally:
            prometheus.stop()
            redis.kill()
    report(faults, healthy, args.interval)


def report(faults: list[dict[str, Any]], healthy: list[dict[str, Any]], interval: float) -> None:
    print(f"\ninterval {interval:g} s, 1 s scrapes, {RATE:g} tasks/s, failureLimit 2")
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
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

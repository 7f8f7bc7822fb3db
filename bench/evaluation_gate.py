"""The `before` evaluation gate, end to end: how often it stops a version answering wrong, how often it
wrongly stops a good one, how long it takes, and whether any user task reached the candidate.

The machinery is the end-to-end tests' (`agentops_dev.stack`): the real operator on the dev cluster,
a kubelet that runs every Deployment's pods and the evaluation Jobs as runtime processes, a real
Prometheus, a load generator on the service's API pods. One stack serves every run; each run is a
fresh AgentService (1 API, 2 workers, `spec.canary.evaluation.before: [smoke]`, a 10-case arithmetic
suite with `minAccuracy: 0.85`), deleted at the end.

- wrong runs: the new version's model answers 3 of every 10 final answers off by one, with no error
  (same latency and cost); counted: rolled back by the gate (`EvaluationFailed`), and user tasks
  (the load generator's prompt) its model received; measured: seconds from the edit to RolledBack;
- good runs: the new version's model answers right, the suite with `runs: 3`; counted: passed the
  gate (first step at weight 50) versus rolled back (a false rollback); measured: seconds to the step.

Run: `python bench/evaluation_gate.py [--wrong-runs 10] [--good-runs 10] [--rate 8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from agentops_dev import kubelet
from agentops_dev.localmodel import Faults, LocalModelServer
from agentops_dev.localprometheus import DiscoveringPrometheus
from agentops_dev.localredis import LocalRedis
from agentops_dev.stack import AGSVC, NAMESPACE, Stack, running_stack, service_body
from agentops_dev.waiting import eventually

CASES = [
    (12, 7, 3),
    (9, 8, 1),
    (15, 4, 6),
    (7, 7, 7),
    (3, 11, 2),
    (21, 2, 5),
    (6, 6, 6),
    (13, 3, 4),
    (8, 9, 10),
    (5, 12, 8),
]
USER_PROMPT = "Say hello."  # the load generator's


def suite(runs: int) -> str:
    lines = ["name: smoke", f"runs: {runs}", "thresholds: {minAccuracy: 0.85}", "cases:"]
    for i, (a, b, c) in enumerate(CASES):
        lines += [
            f"  - name: crate-{i}",
            f'    input: "A crate holds {a}*{b}+{c} apples. How many?"',
            f"    expect: {{numeric: {{value: {a * b + c}}}, toolCalled: {{name: calculator}}}}",
        ]
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def one_run(stack: Stack, name: str, *, wrong: bool, rate: float) -> dict[str, Any]:
    faults = Faults(wrong_per_ten=3) if wrong else Faults()
    async with LocalModelServer() as stable_model, LocalModelServer(faults=faults) as candidate_model:
        body = service_body(name, stable_model.url, stack.redis_url, steps=[50, 100], interval="3s", minRequests=3,
                            evaluation={"before": ["smoke"]})  # fmt: skip
        body["spec"]["evaluation"] = {"suites": [{"name": "smoke", "inline": suite(1 if wrong else 3)}]}
        await stack.serve(body)
        async with stack.load(name, rate):
            live = copy.deepcopy(stack.service(name))  # the dev cluster's own dict: never edit it in place
            live["spec"]["model"]["providers"][0]["baseURL"] = candidate_model.url
            started = time.monotonic()
            await stack.cluster.put_object(AGSVC, live)

            def settled() -> dict[str, Any] | None:
                canary = stack.canary(name)
                done = canary.get("phase") in ("RolledBack", "Paused") or (
                    canary.get("weight") == 50 and not canary.get("gate")
                )
                return canary if done and canary.get("evaluation") else None

            canary = await eventually(settled, 300, 0.05)
            seconds = time.monotonic() - started
        user_tasks = sum(1 for c in candidate_model.calls if c.prompt == USER_PROMPT)
        accuracy = [r.get("accuracy") for r in canary.get("evaluation") or []]
    await stack.cluster.delete_object(AGSVC, NAMESPACE, name)
    return {"phase": canary.get("phase"), "weight": canary.get("weight"), "seconds": round(seconds, 1),
            "user_tasks_at_candidate_before_verdict": user_tasks if wrong else None, "accuracy": accuracy}  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    setattr(kubelet, "START_TIMEOUT", 120.0)  # noqa: B010 (a Final of the dev package, for this bench only)
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as tmp:
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
                wrong = []
                for i in range(args.wrong_runs):
                    wrong.append(await one_run(stack, f"wrong-{i}", wrong=True, rate=args.rate))
                    print(f"wrong run {i}: {wrong[-1]}", flush=True)
                good = []
                for i in range(args.good_runs):
                    good.append(await one_run(stack, f"good-{i}", wrong=False, rate=args.rate))
                    print(f"good run {i}: {good[-1]}", flush=True)
                print(f"end: load average {load_average()}", flush=True)
        finally:
            prometheus.stop()
            redis.kill()
    stopped = sum(1 for r in wrong if r["phase"] == "RolledBack")
    reached = sum(r["user_tasks_at_candidate_before_verdict"] or 0 for r in wrong)
    passed = sum(1 for r in good if r["weight"] == 50)
    false_stops = sum(1 for r in good if r["phase"] == "RolledBack")
    print(f"wrong version: stopped by the before gate {stopped} of {len(wrong)}; user tasks that reached it: {reached}")
    if wrong:
        print(f"  edit -> RolledBack: median {statistics.median(r['seconds'] for r in wrong):.1f} s, "
              f"max {max(r['seconds'] for r in wrong):.1f} s")  # fmt: skip
    print(f"good version (runs: 3): passed the gate {passed} of {len(good)}; false rollbacks {false_stops}")
    if good:
        print(f"  edit -> first step: median {statistics.median(r['seconds'] for r in good):.1f} s, "
              f"max {max(r['seconds'] for r in good):.1f} s")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wrong-runs", type=int, default=10)
    parser.add_argument("--good-runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=8.0)
    asyncio.run(main(parser.parse_args()))

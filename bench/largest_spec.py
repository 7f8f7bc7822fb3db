"""The operator's memory with N AgentServices of the largest spec the bounds allow, and across a restart.

Issue 27: the operator must not crash-loop on big specs within the chart's memory limit. The spec
is the largest `manifests/builders.check_size` lets through (the children it can render just
within `RENDER_CEILING`): env values at their length bound, filled until the estimate reaches the
ceiling, so every service renders about 512 KiB of children, both tracks counted.

Two processes besides this driver, as `bench/operator_scale.py` runs them: the dev cluster (kmock's
emulator) and the operator (`python -m agent_operator.run`, the chart's default resync). Figures
(JSON): the spec's and its children's bytes; seconds until every service is reconciled (every
status observed, every child present); the operator's RSS and peak RSS (VmHWM) then; then the
operator is stopped and started again with all of them present (kopf resumes every one at once,
the case the issue names), and the new process's seconds until it has reconciled each once more,
its RSS and its peak, and whether it stayed up. Compare the peaks with the chart's
`resources.limits.memory`.

    .venv/bin/python bench/largest_spec.py --services 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from agent_operator.api import models
from agent_operator.manifests import builders

sys.path.insert(0, str(Path(__file__).resolve().parent))
import operator_scale as scale  # the sibling bench's helpers

NAMESPACE = "largest"


def largest_spec() -> dict[str, Any]:
    """The spec with the most bytes of env values whose children's bound stays within the ceiling."""
    spec: dict[str, Any] = {**scale.NO_PODS, "env": []}

    def bound(candidate: dict[str, Any]) -> int:
        body = scale.body("x" * 63, "n" * 63, candidate)
        return builders.rendered_size_bound(models.AgentService.model_validate(body))

    while len(spec["env"]) < 100:
        entry = {"name": f"VALUE_{len(spec['env'])}", "value": "v" * models.ENV_VALUE_MAX_LENGTH}
        if bound({**spec, "env": [*spec["env"], entry]}) > builders.RENDER_CEILING:
            low, high = 0, models.ENV_VALUE_MAX_LENGTH  # the last entry: as long as still fits
            while low < high:
                middle = (low + high + 1) // 2
                entry["value"] = "v" * middle
                fits = bound({**spec, "env": [*spec["env"], entry]}) <= builders.RENDER_CEILING
                low, high = (middle, high) if fits else (low, middle - 1)
            entry["value"] = "v" * low
            spec["env"].append(entry)
            break
        spec["env"].append(entry)
    return spec


async def reconciles(http: aiohttp.ClientSession, metrics_url: str) -> float:
    return (await scale.samples(http, metrics_url))["reconciles"]


async def populate(url: str, metrics_url: str, services: int, spec: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        tracked = scale.Services(http, url, NAMESPACE)
        with tracked:
            started = time.perf_counter()
            for chunk in range(0, services, 25):
                names = [f"big-{i}" for i in range(chunk, min(chunk + 25, services))]
                await asyncio.gather(*(scale.create(http, url, name, NAMESPACE, spec) for name in names))
            while tracked.observed() < services:
                await asyncio.sleep(scale.CHECK_INTERVAL)
            return {"reconcile_all_s": round(time.perf_counter() - started, 1)}


async def resumed(metrics_url: str, services: int, process: subprocess.Popen[bytes]) -> float:
    """Seconds until the new operator has reconciled every service once (its resume handlers)."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        while await reconciles(http, metrics_url) < services:
            if process.poll() is not None:
                raise RuntimeError(f"the operator exited with {process.returncode} while resuming")
            await asyncio.sleep(0.5)
    return round(time.perf_counter() - started, 1)


def start_operator(url: str, args: argparse.Namespace, log: Any) -> tuple[subprocess.Popen[bytes], str, str]:
    metrics_port, health_port = scale.free_port(), scale.free_port()
    command = [
        sys.executable, "-m", "agent_operator.run", "--all-namespaces", "--server", url,
        "--metrics-port", str(metrics_port), "--health-port", str(health_port),
        "--resync-interval", str(args.resync), "--log-format", "json",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    return process, f"http://127.0.0.1:{metrics_port}/metrics", f"http://127.0.0.1:{health_port}/healthz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--resync", type=float, default=60.0, help="the chart's default")
    parser.add_argument("--operator-log", default="/dev/null")
    args = parser.parse_args(argv)

    spec = largest_spec()
    svc = models.AgentService.model_validate(scale.body("x" * 63, "n" * 63, spec))
    desired = builders.desired(svc)
    figures: dict[str, Any] = {
        "machine": scale.machine(),
        "services": args.services,
        "spec_bytes": len(orjson.dumps(spec)),
        "children_bytes_both_tracks": len(orjson.dumps(desired.children + desired.canary)),
        "render_ceiling_bytes": builders.RENDER_CEILING,
    }
    cluster = subprocess.Popen(
        [sys.executable, "-m", "agentops_dev.devcluster", "--port", str(scale.free_port()), "--forget-requests"],
        stdout=subprocess.PIPE,
        text=True,
    )
    operator = None
    try:
        assert cluster.stdout is not None
        url = json.loads(cluster.stdout.readline())["url"]
        with open(args.operator_log, "w") as log:
            operator, metrics_url, health_url = start_operator(url, args, log)
            asyncio.run(scale.wait_healthy(health_url))
            figures.update(asyncio.run(populate(url, metrics_url, args.services, spec)))
            figures["held_memory_mb"] = scale.memory_mb(operator.pid)
            operator.terminate()
            operator.wait(60)
            operator, metrics_url, health_url = start_operator(url, args, log)
            asyncio.run(scale.wait_healthy(health_url))
            figures["restart_resume_all_s"] = asyncio.run(resumed(metrics_url, args.services, operator))
            figures["restart_memory_mb"] = scale.memory_mb(operator.pid)
            figures["restart_operator_alive"] = operator.poll() is None
            figures["emulator_memory_mb"] = scale.memory_mb(cluster.pid)
    finally:
        for process in (operator, cluster):
            if process is not None:
                process.terminate()
                process.wait(60)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

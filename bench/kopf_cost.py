"""What kopf itself costs per AgentService: CPU seconds and memory with handlers that do nothing.

`python bench/kopf_cost.py --services N` runs two processes, as `operator_scale.py` does: the dev
cluster, and a kopf operator with the operator's own kopf settings (`run.settings_for`: annotation
progress and diff-base storage, standalone, no logging Events) whose create/update/resume and event
handlers return at once. The driver (this process, the parent) creates N AgentServices in chunks of
50 and waits until every one carries kopf's `last-handled-configuration` annotation (kopf's own
write after a successful creation handler), then lets the operator idle for `--idle` seconds.

Printed (JSON): the operator's CPU seconds over the burst and over the idle window, per service;
its RSS before, after the burst and after the idle window (kopf's per-object memory, bodies and
workers, with nothing of ours); the machine's load averages. The difference between this and
`operator_scale.py`'s burst CPU per service is the operator's own reconcile.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import operator_scale as scale

ANNOTATION = "agentops.dev/last-handled-configuration"
CHILD = "kopf-only"  # argv[1] of the operator process


def operator_main(url: str, health_port: int) -> None:
    """The operator process: kopf with the operator's settings and no-op handlers."""
    import kopf
    from agent_operator import run
    from agent_operator.api import models

    resource = (models.GROUP, models.VERSION, models.PLURAL)
    registry = kopf.OperatorRegistry()

    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.update(*resource, registry=registry)
    async def nothing(**_: Any) -> None:
        return None

    @kopf.on.event(*resource, registry=registry)
    async def seen(**_: Any) -> None:
        return None

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, default_namespace="default")

    kopf.configure(verbose=False, log_format=kopf.LogFormat.JSON)
    settings = run.settings_for(run.Config())
    asyncio.run(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=True,
            liveness_endpoint=f"http://127.0.0.1:{health_port}/healthz",
        )
    )


async def handled(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}{scale.AGSVC}/namespaces/scale/{scale.models.PLURAL}") as response:
        if response.status != 200:
            return 0
        listed = (await response.json())["items"]
    return sum(1 for item in listed if ANNOTATION in (item["metadata"].get("annotations") or {}))


async def drive(url: str, pid: int, services: int, idle: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        memory0, cpu0, load0 = scale.memory_mb(pid), scale.cpu_s(pid), scale.machine()
        started = time.perf_counter()
        for chunk in range(0, services, 50):
            await asyncio.gather(
                *(scale.create(http, url, f"svc-{i}", "scale") for i in range(chunk, min(chunk + 50, services)))
            )
        while await handled(http, url) < services:
            await asyncio.sleep(scale.poll_interval(services))
        burst_s, cpu1, memory1 = time.perf_counter() - started, scale.cpu_s(pid), scale.memory_mb(pid)
        await asyncio.sleep(idle)
        cpu2, memory2 = scale.cpu_s(pid), scale.memory_mb(pid)
        return {
            "services": services,
            "machine": {"start": load0, "end": scale.machine()},
            "burst_s": round(burst_s, 1),
            "burst_cpu_s": round(cpu1 - cpu0, 1),
            "burst_cpu_ms_per_service": round(1000 * (cpu1 - cpu0) / services, 2),
            "idle_s": idle,
            "idle_cpu_s": round(cpu2 - cpu1, 2),
            "memory_mb": {"before": memory0, "after_burst": memory1, "after_idle": memory2},
            "rss_kb_per_service_after_idle": round(1024 * (memory2["rss"] - memory0["rss"]) / services, 1),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds the operator idles after the burst")
    args = parser.parse_args(argv)
    cluster = subprocess.Popen(
        [sys.executable, "-m", "agentops_dev.devcluster", "--port", str(scale.free_port()), "--forget-requests"],
        stdout=subprocess.PIPE,
        text=True,
    )
    operator = None
    try:
        assert cluster.stdout is not None
        url = json.loads(cluster.stdout.readline())["url"]
        health_port = scale.free_port()
        operator = subprocess.Popen(
            [sys.executable, __file__, CHILD, url, str(health_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        asyncio.run(scale.wait_healthy(f"http://127.0.0.1:{health_port}/healthz"))
        result = asyncio.run(drive(url, operator.pid, args.services, args.idle))
    finally:
        for process in (operator, cluster):
            if process is not None:
                process.terminate()
                process.wait(30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == CHILD:
        operator_main(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(main())

"""Operator scale on the dev cluster: create latency, 1,000 services, RSS, steady-state writes.

Three processes, as in production: the dev cluster (kmock's emulator, `python -m
agent_operator.devcluster`), the operator (`python -m agent_operator.run --server URL`, the same
code as `agentctl operator`), and this driver, which talks HTTP to both.

Figures printed:
- p50/p99 seconds from creating one AgentService to all of its children present (sequential);
- seconds to reconcile N AgentServices created at once (until every status has observedGeneration);
- the operator's RSS with all of them held;
- operator write calls over two resync passes at steady state (its own metrics counter).
Targets (issue 3): p50 <= 0.2 s, 1,000 reconciled <= 60 s, RSS <= 200 MB, 0 steady-state writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
from agent_operator import models

AGSVC = f"/apis/{models.GROUP}/{models.VERSION}"
SPEC: dict[str, Any] = {
    "model": {"providers": [{"name": "primary", "model": "m", "baseURL": "http://llm.local/"}]},
    "redis": {"url": "redis://redis:6379/0"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": SPEC,
    }


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def writes(http: aiohttp.ClientSession, metrics_url: str) -> float:
    async with http.get(metrics_url) as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agentservice_operator_api_writes_total{")
    )


async def create(http: aiohttp.ClientSession, url: str, name: str, namespace: str) -> None:
    async with http.post(f"{url}{AGSVC}/namespaces/{namespace}/{models.PLURAL}", json=body(name, namespace)) as r:
        assert r.status == 201, await r.text()


async def drive(url: str, metrics_url: str, *, count: int, samples: int, resync: float, pid: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        latencies = []
        for index in range(samples):
            name = f"lat-{index}"
            started = time.perf_counter()
            await create(http, url, name, "latency")
            last = f"{url}/api/v1/namespaces/latency/configmaps/{name}-dashboard"  # the last child applied
            while True:
                async with http.get(last) as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.005)
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        for chunk in range(0, count, 50):
            await asyncio.gather(
                *(create(http, url, f"svc-{i}", "scale") for i in range(chunk, min(chunk + 50, count)))
            )
        while True:
            async with http.get(f"{url}{AGSVC}/namespaces/scale/{models.PLURAL}") as response:
                items = (await response.json())["items"]
            done = sum(1 for item in items if (item.get("status") or {}).get("observedGeneration") == 1)
            if done == count:
                break
            await asyncio.sleep(0.25)
        reconcile_all = time.perf_counter() - started
        await asyncio.sleep(resync + 2)  # let a resync pass over everything settle
        before = await writes(http, metrics_url)
        await asyncio.sleep(resync * 2 + 1)
        steady = await writes(http, metrics_url) - before
        return {
            "create_to_children_p50_s": round(statistics.median(latencies), 3),
            "create_to_children_p99_s": round(statistics.quantiles(latencies, n=100)[98], 3),
            "services": count,
            "reconcile_all_s": round(reconcile_all, 1),
            "operator_rss_mb": round(rss_mb(pid), 1),
            "steady_state_writes_over_2_resyncs": steady,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--resync", type=float, default=20.0)
    args = parser.parse_args(argv)
    cluster = subprocess.Popen(
        [sys.executable, "-m", "agent_operator.devcluster", "--port", str(free_port())],
        stdout=subprocess.PIPE,
        text=True,
    )
    operator = None
    try:
        assert cluster.stdout is not None
        url = json.loads(cluster.stdout.readline())["url"]
        metrics_port, health_port = free_port(), free_port()
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent_operator.run",
                "--server",
                url,
                "--all-namespaces",
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                str(health_port),
                "--resync-interval",
                str(args.resync),
                "--log-format",
                "json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(3)  # kopf's start-up: discovery, watches
        result = asyncio.run(
            drive(
                url,
                f"http://127.0.0.1:{metrics_port}/metrics",
                count=args.services,
                samples=args.samples,
                resync=args.resync,
                pid=operator.pid,
            )
        )
        print(json.dumps(result, indent=2))
    finally:
        for process in (operator, cluster):
            if process is not None:
                process.terminate()
                process.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

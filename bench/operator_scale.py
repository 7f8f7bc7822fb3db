"""Operator scale on the dev cluster or the real control plane: create latency, 1,000 services, RSS, CPU, writes.

Three processes, as in production: the dev cluster (kmock's emulator, `python -m
agentops_dev.devcluster`), the operator (`python -m agent_operator.run --server URL`, the same
code as `agentctl operator`), and this driver, which talks HTTP to both. Separate processes keep
the figures apart: RSS and CPU seconds are read from `/proc/<pid>` of each process, so the
operator's own cost is reported beside the emulator's (which a real cluster would not charge to
the operator), and the wall-clock figures say how much of the machine each side used.

Figures printed (JSON):
- p50/p99 seconds from creating one AgentService to all of its children present (sequential);
- seconds to reconcile N AgentServices created at once: until every status has
  `observedGeneration == metadata.generation` AND every expected child exists; with the CPU
  seconds the operator and the emulator each spent over that window;
- the operator's RSS (and peak RSS) with all of them held, after the steady-state window;
- the operator's write calls at steady state, by verb and kind, counted from the moment the
  reconcile is complete (on the real control plane: and every service Ready, `ready_all_s`, since
  its controllers and the harness node keep rolling the pods out after that, and the statuses
  follow) until the operator's own `reconciles_total` has grown by `passes + 1` times N: whatever
  pass was in flight at that moment, `passes` full resync passes over every service fall inside
  the window;
- drift repair: p50/p95/max seconds from deleting a worker Deployment (one service at a time,
  `--drift-samples` of them, spread over the N) to a new Deployment of that name (a new uid),
  polled every 10 ms; and the operator's RSS after it. The child watches repair it; the resync
  (`--resync`, 20 s by default) would take up to a whole interval;
- reconciles and child events (the watches' pokes, `child_events_total`) during the burst: the
  operator's own writes come back as events, and each poked service is reconciled once more.
Targets: p50 <= 0.2 s, 1,000 reconciled <= 60 s, RSS <= 200 MB, 0 steady-state writes (issue 3);
drift repaired in <= 2 s p50 with 1,000 services held (issue 14).

`--controlplane DIR` runs the same drive against the real control plane (`scripts/controlplane.sh
start DIR`: etcd, kube-apiserver, controller manager, scheduler) instead of the emulator: the CRD
and prometheus-operator's CRDs applied, the chart installed for its ServiceAccount and RBAC, and the
operator authenticated with that ServiceAccount's token, and the harness kubelet's node reporting
the pods Ready (tests/support/kubelet.py). The steady-state writes are then also
counted from the API server's audit log (every write of the operator's user in the window), and
the CPU and RSS of kube-apiserver and etcd are reported beside the operator's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from agent_operator.api import models

AGSVC = f"/apis/{models.GROUP}/{models.VERSION}"
SPEC: dict[str, Any] = {
    "model": {"providers": [{"name": "primary", "model": "m", "baseURL": "http://llm.local/"}]},
    "redis": {"url": "redis://redis:6379/0"},
}
# `--no-pods`: the same service with no pods (no autoscaler, both Deployments at 0 replicas), for
# runs whose pods the harness node could not hold (it schedules about 380; 10,000 services want
# 20,000). Every child but the HPA is still there, the controllers still roll the Deployments out
# (observedGeneration), and the service is Ready with 0 of 0 replicas.
NO_PODS: dict[str, Any] = {
    **SPEC,
    "autoscaling": {"enabled": False},
    "api": {"replicas": 0},
    "worker": {"replicas": 0},
}
# Collections the children of SPEC live in (every kind the builders emit for it).
CHILD_COLLECTIONS = (
    "/api/v1/namespaces/{ns}/configmaps",
    "/api/v1/namespaces/{ns}/secrets",
    "/api/v1/namespaces/{ns}/services",
    "/apis/apps/v1/namespaces/{ns}/deployments",
    "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "/apis/monitoring.coreos.com/v1/namespaces/{ns}/prometheusrules",
    "/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 900.0  # seconds per 1,000 services from the burst's start until every service is Ready (real CP)
CHECK_INTERVAL = 0.5  # seconds between the driver's counts of the watched services (local, no request)
PROGRESS_INTERVAL = 60.0  # seconds between the progress lines on stderr during the burst
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body(name: str, namespace: str, spec: Mapping[str, Any] = SPEC) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def poll_interval(services: int) -> float:
    """Seconds between the driver's checks of every child once every status is observed: a check lists
    every child kind, which at 10,000 services costs the API server more than the operator's own reads."""
    return max(1.0, services / 1000)


def machine() -> dict[str, Any]:
    """What the figures were taken on: the cores, and how loaded they were (1, 5, 15 min averages)."""
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(value, 2) for value in os.getloadavg()],
        "python": sys.version.split()[0],
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def memory_mb(pid: int) -> dict[str, float]:
    """Current and peak resident set size of a process, in MiB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"rss": round(found["VmRSS"], 1), "peak": round(found["VmHWM"], 1)}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def samples(http: aiohttp.ClientSession, metrics_url: str) -> dict[str, float]:
    """The operator's counters: `reconciles`, and `writes:<verb>/<kind>` per label set."""
    async with http.get(metrics_url) as response:
        text = await response.text()
    found: dict[str, float] = {"reconciles": 0.0, "child_events": 0.0}
    for line in text.splitlines():
        if line.startswith("agentservice_operator_reconciles_total{"):
            found["reconciles"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("agentservice_operator_child_events_total{"):
            found["child_events"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("agentservice_operator_api_writes_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            name = f"writes:{labels['verb'].strip(chr(34))}/{labels['kind'].strip(chr(34))}"
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def writes_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    return {
        name.removeprefix("writes:"): int(value - before.get(name, 0.0))
        for name, value in sorted(after.items())
        if name.startswith("writes:") and value - before.get(name, 0.0) > 0
    }


async def create(
    http: aiohttp.ClientSession, url: str, name: str, namespace: str, spec: Mapping[str, Any] = SPEC
) -> None:
    async with http.post(
        f"{url}{AGSVC}/namespaces/{namespace}/{models.PLURAL}", json=body(name, namespace, spec)
    ) as response:
        assert response.status == 201, await response.text()


class NotNow(Exception):
    """The API server did not answer a check this time (a 504 under load): check again later."""


async def items(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(url) as response:
        if response.status != 200:
            raise NotNow(f"{response.status} from {url}")
        found: list[dict[str, Any]] = (await response.json())["items"]
        return found


async def count(http: aiohttp.ClientSession, url: str) -> int:
    return len(await items(http, url))


class Services:
    """The AgentServices of one namespace as the driver sees them, kept by one watch.

    The driver checks often whether every status has observed its generation (and later whether
    every service is Ready). A LIST of 10,000 services is ~110 MB for the API server to encode, and
    listing them at each check cost the server more CPU than the operator's own reads: a watch
    (one list, then the events the server sends to every watcher anyway) makes each check a count
    in this process. Only the generation, the observed generation and the phase are kept.
    """

    def __init__(self, http: aiohttp.ClientSession, url: str, namespace: str) -> None:
        self._http = http
        self._collection = f"{url}{AGSVC}/namespaces/{namespace}/{models.PLURAL}"
        self._seen: dict[str, tuple[int | None, int | None, str | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> Services:
        self._task = asyncio.ensure_future(self._follow())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def observed(self) -> int:
        self._alive()
        return sum(1 for generation, observed, _ in self._seen.values() if generation == observed)

    def ready(self) -> int:
        self._alive()
        return sum(1 for _, _, phase in self._seen.values() if phase == "Ready")

    def _alive(self) -> None:
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()  # the watch failed: raise its error here rather than wait for ever

    def _keep(self, item: Mapping[str, Any]) -> None:
        status = item.get("status") or {}
        meta = item["metadata"]
        self._seen[meta["name"]] = (meta.get("generation"), status.get("observedGeneration"), status.get("phase"))

    async def _follow(self) -> None:
        while True:
            async with self._http.get(self._collection) as response:
                if response.status != 200:  # a 504 under load: list again
                    await asyncio.sleep(1.0)
                    continue
                listed = await response.json()
            self._seen.clear()
            for item in listed["items"]:
                self._keep(item)
            version = listed["metadata"]["resourceVersion"]
            while version is not None:
                version = await self._watch(version)

    async def _watch(self, version: str) -> str | None:
        """Follow the events from `version`; the version to resume from, or None to list again (410)."""
        params = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true"}
        async with self._http.get(self._collection, params=params, timeout=aiohttp.ClientTimeout()) as response:
            if response.status != 200:
                return None
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, item = event["type"], event["object"]
                if kind == "ERROR":
                    return None  # 410 Expired: the history no longer holds our version
                if kind == "DELETED":
                    self._seen.pop(item["metadata"]["name"], None)
                elif kind != "BOOKMARK":
                    self._keep(item)
                version = item["metadata"].get("resourceVersion", version)
        return version


async def children_complete(
    http: aiohttp.ClientSession, url: str, namespace: str, services: int, children: int
) -> bool:
    """Every child of every service exists."""
    found = 0
    for collection in CHILD_COLLECTIONS:
        found += await count(http, url + collection.format(ns=namespace))
    return found >= services * children


async def checked(check: Awaitable[bool]) -> bool:
    """A check's answer; False when the API server did not answer it this time."""
    try:
        return await check
    except NotNow:
        return False


async def children_per_service(http: aiohttp.ClientSession, url: str, namespace: str) -> int:
    """How many children one service of SPEC has (read from the latency namespace, one service)."""
    total = 0
    for collection in CHILD_COLLECTIONS:
        async with http.get(
            url + collection.format(ns=namespace), params={"labelSelector": "app.kubernetes.io/instance=lat-0"}
        ) as r:
            total += len((await r.json())["items"])
    return total


async def uid_of(http: aiohttp.ClientSession, url: str) -> str | None:
    async with http.get(url) as response:
        if response.status != 200:
            return None
        return str((await response.json())["metadata"]["uid"])


async def drift_repair(http: aiohttp.ClientSession, url: str, services: int, samples: int) -> list[float]:
    """Seconds from deleting a worker Deployment to its replacement existing, one service at a time."""
    seconds = []
    for index in range(samples):
        name = f"svc-{index * services // samples}-worker"
        path = f"{url}/apis/apps/v1/namespaces/scale/deployments/{name}"
        old = await uid_of(http, path)
        assert old is not None, name
        async with http.delete(path) as response:
            assert response.status == 200, await response.text()
        started = time.perf_counter()
        while await uid_of(http, path) in (None, old):
            await asyncio.sleep(0.01)
        seconds.append(time.perf_counter() - started)
    return seconds


async def create_latencies(http: aiohttp.ClientSession, url: str, samples: int, spec: Mapping[str, Any]) -> list[float]:
    """Seconds from creating one service to its last child existing, one service at a time."""
    latencies = []
    for index in range(samples):
        name = f"lat-{index}"
        started = time.perf_counter()
        await create(http, url, name, "latency", spec)
        last = f"{url}/api/v1/namespaces/latency/configmaps/{name}-dashboard"  # the last child applied
        while True:
            async with http.get(last) as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.005)
        latencies.append(time.perf_counter() - started)
    return latencies


def drift_figures(repairs: list[float], pids: Mapping[str, int]) -> dict[str, Any]:
    if len(repairs) < 2:
        return {}
    return {
        "drift_repair_samples": len(repairs),
        "drift_repair_p50_s": round(statistics.median(repairs), 3),
        "drift_repair_p95_s": round(statistics.quantiles(repairs, n=20, method="inclusive")[18], 3),
        "drift_repair_max_s": round(max(repairs), 3),
        "memory_mb_after_drift": {name: memory_mb(pid) for name, pid in pids.items()},
    }


class Progress:
    """A line on stderr each minute of a burst (counts, CPU, RSS): a run stopped early says how far it got."""

    def __init__(self, started: float, pids: Mapping[str, int]) -> None:
        self._started = started
        self._pids = pids
        self._last = 0.0

    def __call__(self, **counts: int) -> None:
        now = time.perf_counter()
        if now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        line = {
            "elapsed_s": round(now - self._started, 1),
            **counts,
            "cpu_s": {name: round(cpu_s(pid), 1) for name, pid in self._pids.items()},
            "rss_mb": {name: memory_mb(pid)["rss"] for name, pid in self._pids.items()},
            "loadavg": [round(value, 2) for value in os.getloadavg()],
        }
        print(json.dumps(line), file=sys.stderr, flush=True)


async def drive(
    url: str,
    metrics_url: str,
    *,
    services: int,
    latency_samples: int,
    passes: int,
    drift_samples: int,
    settle_ready: bool = False,
    spec: Mapping[str, Any] = SPEC,
    pids: Mapping[str, int],
    ssl_context: ssl.SSLContext | None = None,
    audit_writes: Callable[[int], dict[str, int]] | None = None,
    audit_mark: Callable[[], int] | None = None,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context is not None else None
    async with aiohttp.ClientSession(connector=connector) as http:
        latencies = await create_latencies(http, url, latency_samples, spec)
        per_service = await children_per_service(http, url, "latency")

        poll = poll_interval(services)
        ready_timeout = READY_TIMEOUT * max(1.0, services / 1000)
        loads = {"start": machine()}
        burst0 = await samples(http, metrics_url)
        cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
        tracked = Services(http, url, "scale")
        with tracked:
            started = time.perf_counter()
            progress = Progress(started, pids)
            for chunk in range(0, services, 50):
                await asyncio.gather(
                    *(create(http, url, f"svc-{i}", "scale", spec) for i in range(chunk, min(chunk + 50, services)))
                )
            created = time.perf_counter() - started
            # every status observed its generation (counted locally), then every child exists (listed)
            while tracked.observed() < services or not await checked(
                children_complete(http, url, "scale", services, per_service)
            ):
                progress(observed=tracked.observed())
                await asyncio.sleep(CHECK_INTERVAL if tracked.observed() < services else poll)
            reconcile_all = time.perf_counter() - started
            cpu1 = {name: cpu_s(pid) for name, pid in pids.items()}
            loads["reconciled"] = machine()
            settled = {}
            # pods roll out after the children exist: steady state starts once all are Ready
            while settle_ready and tracked.ready() < services:
                if time.perf_counter() - started > ready_timeout:
                    raise TimeoutError(
                        f"not every service Ready after {ready_timeout:g} s: the harness node schedules about"
                        " 380 pods (64 CPUs); each service runs 2, the latency samples too"
                    )
                progress(ready=tracked.ready())
                await asyncio.sleep(CHECK_INTERVAL)
        if settle_ready:
            settled = {"ready_all_s": round(time.perf_counter() - started, 1)}
            cpu1 = {name: cpu_s(pid) for name, pid in pids.items()}
            loads["ready"] = machine()

        before = await samples(http, metrics_url)
        burst = {
            "reconciles": int(before["reconciles"] - burst0["reconciles"]),
            "child_events": int(before["child_events"] - burst0["child_events"]),
        }
        mark = audit_mark() if audit_mark is not None else 0
        steady_started = time.perf_counter()
        goal = before["reconciles"] + (passes + 1) * (services + latency_samples)
        while (after := await samples(http, metrics_url))["reconciles"] < goal:
            await asyncio.sleep(1.0)
        steady = time.perf_counter() - steady_started
        cpu2 = {name: cpu_s(pid) for name, pid in pids.items()}
        loads["steady"] = machine()
        audited = {"steady_state_writes_audit_log": audit_writes(mark)} if audit_writes is not None else {}
        memory = {name: memory_mb(pid) for name, pid in pids.items()}

        repairs = await drift_repair(http, url, services, drift_samples) if drift_samples else []
        loads["end"] = machine()
        drift = drift_figures(repairs, pids)
        steady_reconciles = int(after["reconciles"] - before["reconciles"])
        return {
            "machine": loads,
            "create_to_children_p50_s": round(statistics.median(latencies), 3),
            "create_to_children_p99_s": round(statistics.quantiles(latencies, n=100)[98], 3),
            "children_per_service": per_service,
            "services": services,
            "create_requests_s": round(created, 1),
            "reconcile_all_s": round(reconcile_all, 1),
            **settled,
            "reconcile_all_cpu_s": {name: round(cpu1[name] - cpu0[name], 1) for name in pids},
            "reconcile_all_cpu_ms_per_service": {
                name: round(1000 * (cpu1[name] - cpu0[name]) / services, 2) for name in pids
            },
            "burst": burst,
            "memory_mb": memory,
            "steady_window_s": round(steady, 1),
            "steady_reconciles": steady_reconciles,
            "steady_cpu_s": {name: round(cpu2[name] - cpu1[name], 1) for name in pids},
            # CPU per object per resync pass: what one reconcile that finds nothing to do costs each process.
            "steady_cpu_ms_per_reconcile": {
                name: round(1000 * (cpu2[name] - cpu1[name]) / max(steady_reconciles, 1), 2) for name in pids
            },
            "steady_state_writes": writes_between(before, after),
            **audited,
            **drift,
        }


async def wait_healthy(url: str, timeout: float = 300.0) -> None:  # a loaded machine imports slowly
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator did not become healthy at {url}")
            await asyncio.sleep(0.2)


def operator_command(metrics_port: int, health_port: int, args: argparse.Namespace) -> list[str]:
    # memray in the operator's own process (not a child): its pid is still the one measured, and
    # the capture is written when the bench stops the operator (SIGTERM, kopf's graceful exit).
    memray = ["-m", "memray", "run", "--aggregate", "--trace-python-allocators", "--force", "-o", args.memray]
    return [
        sys.executable, *(memray if args.memray else []), "-m", "agent_operator.run", "--all-namespaces",
        "--metrics-port", str(metrics_port), "--health-port", str(health_port),
        "--resync-interval", str(args.resync), "--log-format", "json", *args.operator_arg,
    ]  # fmt: skip


def run_dev_cluster(args: argparse.Namespace) -> dict[str, Any]:
    cluster = subprocess.Popen(
        [sys.executable, "-m", "agentops_dev.devcluster", "--port", str(free_port()), "--forget-requests"],
        stdout=subprocess.PIPE,
        text=True,
    )
    operator = None
    try:
        assert cluster.stdout is not None
        url = json.loads(cluster.stdout.readline())["url"]
        metrics_port, health_port = free_port(), free_port()
        with open(args.operator_log, "w") as log:
            operator = subprocess.Popen(
                [*operator_command(metrics_port, health_port, args), "--server", url],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        print(json.dumps({"operator_pid": operator.pid, "cluster_pid": cluster.pid}), file=sys.stderr, flush=True)
        asyncio.run(wait_healthy(f"http://127.0.0.1:{health_port}/healthz"))
        return asyncio.run(
            drive(
                url,
                f"http://127.0.0.1:{metrics_port}/metrics",
                services=args.services,
                latency_samples=args.samples,
                passes=args.passes,
                drift_samples=args.drift_samples,
                spec=NO_PODS if args.no_pods else SPEC,
                pids={"operator": operator.pid, "emulator": cluster.pid},
            )
        )
    finally:
        for process in (operator, cluster):
            if process is not None:
                process.terminate()
                process.wait(30)


def run_control_plane(args: argparse.Namespace) -> dict[str, Any]:
    """The same drive on the real control plane, the operator as the chart's ServiceAccount."""
    sys.path.insert(0, str(ROOT))
    from tests.cluster.harness import CHART, CRD, THIRD_PARTY_CRDS, helm
    from tests.support import controlplane
    from tests.support.kubelet import HarnessKubelet

    directory = Path(args.controlplane).resolve()
    plane = controlplane.start(directory)
    operator = None
    # A node whose pods are reported Ready: without one every Deployment passes its progress
    # deadline mid-run, and the resulting (real) Degraded transitions would count as steady writes.
    kubelet = HarnessKubelet(plane.kubeconfig).start()
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRD), "-f", str(THIRD_PARTY_CRDS))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        for namespace in ("latency", "scale"):
            plane.kubectl("create", "namespace", namespace)
        helm(plane, "install", "bench", str(CHART), "--namespace", "agent-system", "--create-namespace")
        service_account = plane.get("serviceaccounts", "-n", "agent-system", "-l", "app.kubernetes.io/instance=bench")
        account = service_account["items"][0]["metadata"]["name"]
        kubeconfig = plane.token_kubeconfig("agent-system", account, directory / "operator.kubeconfig")
        user = f"system:serviceaccount:agent-system:{account}"
        metrics_port, health_port = free_port(), free_port()
        with open(args.operator_log, "w") as log:
            operator = subprocess.Popen(
                operator_command(metrics_port, health_port, args),
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            )
        asyncio.run(wait_healthy(f"http://127.0.0.1:{health_port}/healthz"))
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        context.load_cert_chain(str(directory / "admin.crt"), str(directory / "admin.key"))

        def audit_writes(mark: int) -> dict[str, int]:
            found: dict[str, int] = {}
            # Line by line, parsing only the operator's lines: the window of a 10,000-service run
            # holds hundreds of thousands of events, most of them reads.
            needle = f'"username":"{user}"'.encode()
            with plane.audit_log.open("rb") as raw:
                raw.seek(mark)
                lines = [json.loads(line) for line in raw if needle in line]
            for event in lines:
                if event.get("user", {}).get("username") != user or event.get("verb") in ("get", "list", "watch"):
                    continue
                ref = event.get("objectRef", {})
                key = (
                    f"{event['verb']}/{ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
                )
                found[key] = found.get(key, 0) + 1
            return found

        pids = {"operator": operator.pid}
        for name in ("kube-apiserver", "etcd"):
            pids[name] = int((directory / "pids" / f"{name}.pid").read_text())
        return asyncio.run(
            drive(
                plane.server,
                f"http://127.0.0.1:{metrics_port}/metrics",
                services=args.services,
                latency_samples=args.samples,
                passes=args.passes,
                drift_samples=args.drift_samples,
                settle_ready=True,
                spec=NO_PODS if args.no_pods else SPEC,
                pids=pids,
                ssl_context=context,
                audit_writes=audit_writes,
                audit_mark=plane.audit_mark,
            )
        )
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        kubelet.stop()
        plane.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--resync", type=float, default=20.0)
    parser.add_argument("--passes", type=int, default=2, help="full resync passes inside the steady-state window")
    parser.add_argument("--drift-samples", type=int, default=50, help="worker Deployments deleted, one at a time")
    parser.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the operator, e.g. --operator-arg=--worker-limit=0 (repeatable)",
    )
    parser.add_argument("--operator-log", default=os.devnull, help="file for the operator's stderr (JSON logs)")
    parser.add_argument("--controlplane", metavar="DIR", help="run on the real control plane, its data under DIR")
    parser.add_argument("--no-pods", action="store_true", help="services without pods (no autoscaler, 0 replicas)")
    parser.add_argument(
        "--memray",
        metavar="FILE",
        help="run the operator under memray (`pip install memray`), its high-water mark by allocation site in FILE"
        " (`python -m memray summary FILE`); its RSS figures then include memray's own",
    )
    args = parser.parse_args(argv)
    if args.memray:
        import importlib.util

        if importlib.util.find_spec("memray") is None:
            parser.error("--memray needs memray: pip install memray")
    result = run_control_plane(args) if args.controlplane else run_dev_cluster(args)
    result["operator_args"] = args.operator_arg
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the autoscaling scenarios share (tests/cluster/test_hpa.py, tests/cluster/test_keda.py).

- `LocalModel`: `agent-runtime localmodel` as its own process (a reply after `latency` seconds),
  its calls and faults over HTTP;
- `Sampler`: the worker Deployment's replicas and the queue's depth, every quarter second;
- the worker pods the harness kubelet runs, and what their logs say (`task_finished`,
  `worker_draining`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from kubernetes import client

from tests.cluster.harness import AGENTCTL, free_port, wait_for
from tests.support.kubelet import HarnessKubelet, PodWorker


class LocalModel:
    """`agent-runtime localmodel` as its own process; its calls and faults over HTTP."""

    def __init__(self, directory: Path, latency: float) -> None:
        self.latency = latency
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "localmodel.log"
        runtime = shutil.which("agent-runtime", path=str(AGENTCTL.parent))
        assert runtime is not None, "agent-runtime is not installed in the virtualenv"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [runtime, "localmodel", "--port", str(self.port), "--latency", str(latency)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        wait_for(self._answers, timeout=60, what="the local model")

    def _answers(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/_local/calls", timeout=2) as response:
            return bool(response.status == 200)
        return False

    def calls(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_local/calls", timeout=30) as response:
            calls: list[dict[str, Any]] = json.loads(response.read())
            return calls

    def hold(self, on: bool, *, after: int = 0) -> None:
        """Hold the replies to every call after the first `after` (or let them all go)."""
        body = json.dumps({"latency_seconds": self.latency, "hold": on, "hold_after": after}).encode()
        request = urllib.request.Request(f"{self.url}/_local/faults", data=body, method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclasses.dataclass
class Sample:
    """One look at the scenario: when, the worker Deployment's replicas, the queue's depth."""

    at: float
    replicas: int
    depth: int


class Sampler:
    """Looks at the worker Deployment and the queue every quarter second, on a thread."""

    def __init__(
        self, apps: client.AppsV1Api, queue: redis.Redis, streams: list[str], *, deployment: str, namespace: str
    ) -> None:
        self.apps = apps
        self.queue = queue
        self.streams = streams
        self.deployment = deployment
        self.namespace = namespace
        self.samples: list[Sample] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def depth(self) -> int:
        pipe = self.queue.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xlen(stream)
        return int(sum(pipe.execute()))

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                replicas = self.apps.read_namespaced_deployment(self.deployment, self.namespace).spec.replicas or 0
                self.samples.append(Sample(time.monotonic(), replicas, self.depth()))
            except Exception as error:  # kept for the test to fail on
                self.errors.append(error)

    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def first(self, after: float, test: Callable[[Sample], bool]) -> Sample | None:
        return next((s for s in self.samples if s.at >= after and test(s)), None)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def log_events(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                yield event


def worker_pods(kubelet: HarnessKubelet, namespace: str) -> list[PodWorker]:
    return [w for w in kubelet.workers(namespace) if w.labels.get("app.kubernetes.io/component") == "worker"]


def draining_count(log: Path) -> int:
    """The tasks a worker had in flight when it was told to stop (0 when it had none), from its log."""
    return sum(int(e.get("inflight", 0)) for e in log_events(log) if e.get("event") == "worker_draining")


def finished_results(pods: Path, namespace: str, deployment: str) -> dict[str, int]:
    """Task id -> how many times a worker pod of `deployment` stored its result, from the pods' logs."""
    found: dict[str, int] = {}
    for log in pods.glob(f"{namespace}_{deployment}-*/worker.log"):
        for event in log_events(log):
            if event.get("event") == "task_finished":
                found[event["task_id"]] = found.get(event["task_id"], 0) + 1
    return found

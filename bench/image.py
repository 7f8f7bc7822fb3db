"""The bundled image: its size, and each entry point's start -> ready time as a container.

Usage (from the repository root, once `scripts/image.sh build` has run):
`PYTHONPATH=.:dev python bench/image.py [--runs N]`.

- Size: the image, its base, and what the Dockerfile adds (the venv layer), with the largest
  distributions in it and the project's own packages.
- Start -> ready: from the `podman run` call to the first 200 of the path the readiness probe
  asks, each entry point run hardened as the tests run it (tests/support/image.py, host network):
  `agent-runtime api` and `worker` against a redis-server on loopback, `agent-runtime localmodel`
  from the dev image (first 200 of GET /_local/calls), and `agentctl operator` against the real
  control plane when `scripts/controlplane.sh built` says it is there (its /healthz). Each run is a
  new container; the median and the slowest of N runs are printed.
The build times are scripts/image.sh's own (build.env in the cache folder, printed too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
from agentops_dev.localredis import free_port

from agent_runtime import constants
from tests.cluster.harness import CHART, chart_operator_args, helm, with_port
from tests.cluster.test_image_operator import NAMESPACE, RELEASE, SERVICE_ACCOUNT_DIR, service_account_dir
from tests.support import controlplane as cp
from tests.support import image as img
from tests.support.redis_server import running_redis

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def megabytes(size: float) -> str:
    return f"{size / 1e6:.0f} MB"


def sizes(runtime: str) -> None:
    (inspected,) = json.loads(img.podman("image", "inspect", runtime).stdout)
    history = json.loads(img.podman("history", "--format", "json", runtime).stdout)
    base = history[-1]["size"]  # the first layer: the base's root filesystem
    added = sum(layer["size"] for layer in history[:-1])
    total = megabytes(inspected["Size"])
    print(f"image {runtime}: {total}; base {megabytes(base)}, the Dockerfile adds {megabytes(added)}")
    listing = img.run_once(
        runtime, ["sh", "-c", "cd /opt/venv/lib/python3*/site-packages && du -sk -- * | sort -n | tail -8"]
    )
    print("largest in the venv (kB):", ", ".join(" ".join(line.split()[::-1]) for line in listing.stdout.splitlines()))
    script = "cd /opt/venv/lib/python3*/site-packages && du -skc agent_operator agent_runtime | tail -1"
    own = img.run_once(runtime, ["sh", "-c", script])
    print(f"the project's own packages: {own.stdout.split()[0]} kB")


def timed(container: img.Container, url: str) -> float:
    started = time.monotonic()
    container.start()
    try:
        status = container.wait_http(url, timeout=120)
        elapsed = time.monotonic() - started
        assert status == 200, (url, status)
        return elapsed
    finally:
        container.remove()


def process_timed(container: img.Container, url: str) -> float:
    """The same command and environment as a process of this venv, without a container: the baseline."""
    entrypoint, *args = container.command
    env = {**os.environ, **container.env}
    for source, target in container.mounts:  # the runtime config, read from where it was written
        env[constants.CONFIG_PATH_ENV] = str(source / Path(constants.CONFIG_PATH).relative_to(target))
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / entrypoint), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            assert process.poll() is None, f"{entrypoint} exited {process.returncode}"
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def report(name: str, runs: int, one: Callable[[], float]) -> None:
    seconds = [one() for _ in range(runs)]
    print(
        f"{name}: start -> ready median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s over {runs} runs"
    )


@contextlib.contextmanager
def operator_target(work: Path, runtime: str) -> Iterator[Callable[[], float] | None]:
    """A one-run function for the operator, on a started control plane with the chart installed."""
    if subprocess.run(["bash", str(ROOT / "scripts/controlplane.sh"), "built"], check=False).returncode != 0:
        print("operator: skipped, the control plane is not built (scripts/controlplane.sh build)")
        yield None
        return
    plane = cp.start(work / "controlplane")
    try:
        helm(plane, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace")
        accounts = service_account_dir(plane, work)
        server = plane.server.split("://", 1)[1]
        host, _, port = server.rpartition(":")

        def one() -> float:
            health = free_port()
            args = with_port(chart_operator_args(plane, RELEASE, NAMESPACE), "--health-port", health)
            args = with_port(args, "--metrics-port", free_port())
            container = img.Container(
                image=runtime,
                command=["agentctl", "operator", *args],
                mounts=[(accounts, SERVICE_ACCOUNT_DIR)],
                env={"POD_ID": "bench", "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
            )
            return timed(container, f"http://127.0.0.1:{health}/healthz")

        yield one
    finally:
        plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runtime, dev = img.load()
    env = img.build_env()
    print("build.env:", ", ".join(f"{k}={v}" for k, v in env.items() if k.endswith("SECONDS") or k == "IMAGE_BASE"))
    sizes(runtime)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        with running_redis(work / "redis", durable=False) as redis:
            svc = img.runtime_service("http://127.0.0.1:9/", redis.url)
            for component in ("api", "worker"):

                def one(component: str = component, local: bool = False) -> float:
                    port = free_port()
                    workdir = Path(tempfile.mkdtemp(dir=work))
                    container = img.runtime_container(
                        runtime, svc, component, port=port, tmp_path=workdir, redis_url=redis.url
                    )
                    url = f"http://127.0.0.1:{port}{constants.READY_PATH}"
                    return process_timed(container, url) if local else timed(container, url)

                report(f"agent-runtime {component}", args.runs, one)
                report(f"agent-runtime {component} as a process (baseline)", args.runs, partial(one, local=True))

        def model() -> float:
            port = free_port()
            serve = ["agent-runtime", "localmodel", "--host", "127.0.0.1", "--port", str(port)]
            return timed(img.Container(image=dev, command=serve), f"http://127.0.0.1:{port}/_local/calls")

        report("agent-runtime localmodel", args.runs, model)
        with operator_target(work, runtime) as operator:
            if operator is not None:
                report("agentctl operator", args.runs, operator)


if __name__ == "__main__":
    main()

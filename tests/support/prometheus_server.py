"""A real `prometheus` server for tests: a free loopback port, a temporary config and data directory,
a 1 s scrape and evaluation interval, stopped (and reaped) on exit.

`running_prometheus(directory, targets)` is the context manager tests use (`serving(server)` runs a
subclass the same way); `PrometheusServer` is the process itself, with `wait_ready()` and a blocking
`wait_for()` helper for "until the data is in".
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from agentops_dev import localredis
from agentops_dev.localredis import free_port

__all__ = ["PrometheusServer", "running_prometheus", "serving"]

T = TypeVar("T")
S = TypeVar("S", bound="PrometheusServer")
BINARY = "prometheus"
SCRAPE_INTERVAL = "1s"


class PrometheusServer:
    """One prometheus process scraping `targets` (host:port of /metrics endpoints) every second."""

    def __init__(self, directory: Path, targets: Sequence[str], *, host: str = "127.0.0.1") -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise RuntimeError("prometheus is not installed (scripts/setup.sh installs the Debian package)")
        self.binary = binary
        self.directory = directory
        self.host = host
        self.port = free_port(host)
        self.config_path = directory / "prometheus.yml"
        self.log_path = directory / "prometheus.log"
        self.config_path.write_text(yaml.safe_dump(self.config(targets)))
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def config(targets: Sequence[str]) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": "900ms",  # must not exceed the interval
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "scrape_configs": [{"job_name": "runtime", "static_configs": [{"targets": list(targets)}]}],
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until `/-/ready` answers 200; fail with the server's log if it exits or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.logs()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the plain HTTP API (for waiting; the code under test has its own client)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.25) -> T:
        """Poll `probe` until it returns something other than None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value is not None:
                return value
            time.sleep(interval)
        raise TimeoutError(f"condition not met after {timeout}s:\n{self.logs()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; always reaped."""
        if self.process is None:
            return
        localredis.terminate(self.process, timeout)
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """Start `server` and wait until it is ready; stopped (and reaped) on exit."""
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_prometheus(directory: Path, targets: Sequence[str]) -> Iterator[PrometheusServer]:
    """A ready prometheus scraping `targets` every second; stopped on exit."""
    with serving(PrometheusServer(directory, targets)) as server:
        yield server

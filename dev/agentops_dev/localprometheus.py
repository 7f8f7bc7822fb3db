"""A real `prometheus` server on loopback, for the demo and the tests: a free port, a config and data
directory of the caller's, a 1 s scrape and evaluation interval, stopped (and reaped) on exit.

`PrometheusServer` is the process, scraping a fixed list of targets, with `wait_ready()` and a
blocking `wait_for()` for "until the data is in"; `DiscoveringPrometheus` scrapes the targets of a
file (file_sd) that the dev kubelet (`agentops_dev.kubelet`) rewrites as pods come and go.
`running_prometheus(directory, targets)` and `serving(server)` run them as context managers.
The binary is the Debian package `prometheus`, which `scripts/setup.sh` installs; `installed()`
says whether it is there, before anything is started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from agentops_dev import localredis
from agentops_dev.localredis import free_port

__all__ = ["BINARY", "DiscoveringPrometheus", "PrometheusServer", "installed", "running_prometheus", "serving"]

T = TypeVar("T")
S = TypeVar("S", bound="PrometheusServer")
BINARY = "prometheus"
SCRAPE_INTERVAL = "1s"


def installed(binary: str = BINARY) -> bool:
    """Whether the `prometheus` command is on the PATH."""
    return shutil.which(binary) is not None


class PrometheusServer:
    """One prometheus process scraping `targets` (host:port of /metrics endpoints) every second."""

    def __init__(
        self, directory: Path, targets: Sequence[str], *, host: str = "127.0.0.1", binary_name: str = BINARY
    ) -> None:
        binary = shutil.which(binary_name)
        if binary is None:
            raise RuntimeError(f"{binary_name} is not installed (scripts/setup.sh installs the Debian package)")
        self.binary = binary
        self.directory = directory
        self.host = host
        self.port = free_port(host)
        self.config_path = directory / "prometheus.yml"
        self.log_path = directory / "prometheus.log"
        self.config_path.write_text(yaml.safe_dump(self.config(targets)))
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []  # more flags of the server (e.g. --web.config.file)

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
                    *self.extra_args,
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
            except urllib.error.HTTPError as error:
                if error.code == 401:  # serving, behind the basic auth of its web config
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


class DiscoveringPrometheus(PrometheusServer):
    """A real prometheus scraping the targets of a JSON file (file_sd), re-read as it changes."""

    def __init__(self, directory: Path, *, binary_name: str = BINARY) -> None:
        self.targets_path = directory / "targets.json"
        self.targets_path.write_text("[]")
        super().__init__(directory, [], binary_name=binary_name)

    def config(self, targets: Sequence[str]) -> dict[str, Any]:  # type: ignore[override]
        base = PrometheusServer.config(targets)
        base["scrape_configs"] = [
            {
                "job_name": "runtime",
                # as the operator's ServiceMonitor asks (honorLabels: false): the target's labels
                # (namespace, service, track: the pod's, given by whoever writes the file) win over
                # any a process exposes, which Prometheus keeps as `exported_<name>`
                "honor_labels": False,
                "file_sd_configs": [{"files": [str(self.targets_path)], "refresh_interval": SCRAPE_INTERVAL}],
            }
        ]
        return base

    def set_targets(self, targets: Mapping[str, Mapping[str, str]]) -> None:
        """`host:port` -> target labels; written atomically (prometheus watches the file)."""
        groups = [{"targets": [target], "labels": dict(labels)} for target, labels in sorted(targets.items())]
        temporary = self.targets_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(groups))
        os.replace(temporary, self.targets_path)


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

"""prom-label-proxy in front of a real Prometheus, as the chart's sidecar runs it beside the operator.

The binary is built from its Go module (`tests/prom-label-proxy/`, `scripts/prom-label-proxy.sh`);
`LabelProxy` runs it on a free loopback port with the chart's arguments (`CHART_ARGS`: label
`namespace`, `--error-on-replace`), so a test's operator sends its queries where the chart's would.
`require()` skips a test when the binary is missing and Go is not installed, and fails it when
Go is there (or under `CI=true`): then the set-up was not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

import pytest
from agentops_dev import localredis
from agentops_dev.localredis import free_port

__all__ = ["CHART_ARGS", "LabelProxy", "binary", "built", "require"]

ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = ROOT / "scripts" / "prom-label-proxy.sh"
# The sidecar's arguments in charts/agentservice-operator/templates/deployment.yaml (a test checks
# that the chart renders these).
CHART_ARGS: Final = ("--label=namespace", "--error-on-replace")


def built() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True, check=False).returncode == 0


def binary() -> Path:
    """The built binary (`scripts/prom-label-proxy.sh dir`; builds it when missing)."""
    result = subprocess.run(["bash", str(SCRIPT), "dir"], capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/prom-label-proxy.sh dir failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1]) / "prom-label-proxy"


def require() -> Path:
    """The binary, or a skip (no Go, not CI) or a failure (the set-up was not run)."""
    if not built():
        if shutil.which("go") is None and os.environ.get("CI") != "true":
            pytest.skip("Go is not installed: prom-label-proxy is built from its Go module (Go 1.25+)")
        pytest.fail("prom-label-proxy is not built: run `make setup-test` or `scripts/prom-label-proxy.sh build`")
    return binary()


class LabelProxy:
    """One prom-label-proxy process on loopback, forwarding to `upstream`; stopped on exit."""

    def __init__(
        self, upstream: str, log_path: Path, *, host: str = "127.0.0.1", chart_args: Sequence[str] | None = None
    ) -> None:
        """`chart_args`: the sidecar's arguments as a rendered chart has them (its listen address
        is moved to a free port here; `upstream` is then unused)."""
        self.upstream = upstream
        self.chart_args = list(chart_args) if chart_args is not None else None
        self.log_path = log_path
        self.host = host
        self.port = free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LabelProxy:
        listen = f"--insecure-listen-address={self.host}:{self.port}"
        if self.chart_args is None:
            args = [f"--upstream={self.upstream}", *CHART_ARGS]
        else:
            args = [a for a in self.chart_args if not a.startswith("--insecure-listen-address=")]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(require()), listen, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        # Without the namespace parameter the proxy answers 400 itself: it listens.
        deadline = time.monotonic() + timeout
        probe = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": "vector(1)"})
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"prom-label-proxy exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(probe, timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise TimeoutError(f"prom-label-proxy not listening after {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.process is not None:
            localredis.terminate(self.process, 10.0)
            self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LabelProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

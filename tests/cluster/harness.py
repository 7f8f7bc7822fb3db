"""Helpers of the `cluster` tests: helm, the chart's operator as a process, `kubectl agentservice`,
waiting for an event."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support import controlplane as cp

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "agentservices.agentops.dev.yaml"
CHART = ROOT / "charts" / "agentservice-operator"
EXAMPLES_DIR = ROOT / "examples"
THIRD_PARTY_CRDS = Path(__file__).resolve().parent / "crds"
AGENTCTL = Path(sys.executable).parent / "agentctl"
RELEASE = "agentops"
OPERATOR_NAMESPACE = "agent-system"


def example_in(name: str, namespace: str) -> str:
    """An example manifest moved into `namespace` (the examples name their own), as YAML for stdin."""
    body = yaml.safe_load((EXAMPLES_DIR / name).read_text())
    body["metadata"]["namespace"] = namespace
    return yaml.safe_dump(body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Any, timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll `check()` until truthy; fail naming `what` and the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


def helm(plane: cp.ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    helm_bin = shutil.which("helm", path=f"{cp.TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert helm_bin is not None, "helm not found: run `make setup`"
    result = subprocess.run(
        [helm_bin, "--kubeconfig", str(plane.kubeconfig), *args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def chart_operator_args(plane: cp.ControlPlane, release: str, namespace: str) -> list[str]:
    """The operator container's arguments exactly as the installed chart rendered them."""
    deployments = plane.get("deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    (deployment,) = deployments["items"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "operator"]
    args: list[str] = list(container["args"])
    assert args[0] == "operator", args
    return args[1:]


def with_port(args: Sequence[str], flag: str, port: int) -> list[str]:
    """The chart's arguments with `flag`'s port moved to a free one (pods have their own ports)."""
    return [f"{flag}={port}" if arg.startswith(f"{flag}=") else arg for arg in args]


@dataclasses.dataclass
class OperatorProcess:
    """`agentctl operator` as a separate process, logged to a file."""

    args: list[str]
    kubeconfig: Path
    log_path: Path
    health_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(AGENTCTL), "operator", *self.args], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        wait_for(self.healthy, timeout=60, what="operator /healthz")
        return self

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.health_port), 1) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return b" 200 " in sock.recv(64)
        return False

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def forbidden_lines(self) -> list[str]:
        """Log lines about a refused request: a 403 status (not the digits inside a timestamp or a uid).

        Not RBAC's: the 403 the apiserver gives a create in a namespace being deleted ("because it is
        being terminated"), which a test's teardown provokes while the operator still reconciles.
        """
        refused = re.compile(r'(?:status=|"code": ?|\s)403(?!\d)|Forbidden')
        terminating = "because it is being terminated"
        return [line for line in self.logs().splitlines() if refused.search(line) and terminating not in line]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def run_operator_as_chart(
    plane: cp.ControlPlane,
    workdir: Path,
    *,
    release: str,
    namespace: str,
    overrides: dict[str, str] | None = None,
) -> OperatorProcess:
    """Start the operator with the installed chart's arguments, as the chart's ServiceAccount."""
    deployments = plane.get("deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")
    service_account = deployments["items"][0]["spec"]["template"]["spec"]["serviceAccountName"]
    health, metrics = free_port(), free_port()
    args = with_port(
        with_port(chart_operator_args(plane, release, namespace), "--health-port", health), "--metrics-port", metrics
    )
    for flag, value in (overrides or {}).items():
        args = [a for a in args if not a.startswith(f"{flag}=")] + [f"{flag}={value}"]
    kubeconfig = plane.token_kubeconfig(namespace, service_account, workdir / f"{release}-sa.kubeconfig")
    return OperatorProcess(
        args=args, kubeconfig=kubeconfig, log_path=workdir / f"{release}-operator.log", health_port=health
    ).start()


def plugin_command(
    plane: cp.ControlPlane, *args: str, kubeconfig: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `kubectl agentservice ARGS` (as cluster-admin unless another
    kubeconfig is given, in $KUBECONFIG).

    kubectl itself finds `kubectl-agentservice` on the PATH (the venv's console script) and runs it;
    colour is off (`NO_COLOR`), as the output is compared as text.
    """
    path = f"{AGENTCTL.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "KUBECONFIG": str(kubeconfig or plane.kubeconfig), "NO_COLOR": "1"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return [cp.kubectl_path(), "agentservice", *args], env


def kubectl_plugin(
    plane: cp.ControlPlane, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `kubectl agentservice ARGS` to its end (see `plugin_command`)."""
    argv, env = plugin_command(plane, *args, kubeconfig=kubeconfig)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)

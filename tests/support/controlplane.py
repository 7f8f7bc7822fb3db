"""The real Kubernetes control plane (`scripts/controlplane.sh`) as a test fixture's collaborator.

`start(directory)` runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from
their Go modules; the returned `ControlPlane` runs kubectl against it, reads its audit log, and
mints ServiceAccount tokens through the TokenRequest API (`kubectl create token`).

Where the binaries cannot be had: with `CI=true` a missing Go or a failed build is an error (the
test fails); elsewhere, without Go, the caller skips with the reason `unavailable()` gives.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "controlplane.sh"
TOOLS_BIN = ROOT / ".tools" / "bin"

__all__ = ["ControlPlane", "ControlPlaneError", "kubectl_path", "start", "unavailable"]


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started (the message carries the script's output)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def built() -> bool:
    """Whether the binaries are in the cache (`scripts/controlplane.sh built`)."""
    return subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True, check=False).returncode == 0


def unavailable() -> str | None:
    """Why the control plane cannot be had on this machine (None: it can, or CI demands it)."""
    if in_ci() or shutil.which("go") is not None or built():
        return None
    return "Go is not installed: the cluster tests build kube-apiserver and etcd from their Go modules (Go 1.25+)"


def kubectl_path() -> str:
    found = shutil.which("kubectl", path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise ControlPlaneError("kubectl not found: run `make setup` (it unpacks kubectl into .tools/bin)")
    return found


@dataclasses.dataclass
class ControlPlane:
    """A running control plane: its folder, API server URL and admin kubeconfig."""

    directory: Path
    server: str
    kubeconfig: Path
    binaries: Path

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (admin unless another kubeconfig is given); raise with stderr on failure."""
        result = subprocess.run(
            [kubectl_path(), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def get(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig).stdout)

    def exists(self, *args: str) -> bool:
        result = self.kubectl("get", *args, "-o", "name", "--ignore-not-found", check=False)
        return result.returncode == 0 and bool(result.stdout.strip())

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """Every event of the audit log so far (one JSON object a line; a torn last line is skipped)."""
        with self.audit_log.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def audit_mark(self) -> int:
        """A position in the audit log; `audit_since(mark)` reads what came after it."""
        return self.audit_log.stat().st_size

    def audit_since(self, mark: int) -> list[dict[str, Any]]:
        with self.audit_log.open("rb") as raw:
            raw.seek(mark)
            data = raw.read().decode("utf-8", errors="replace")
        events = []
        for line in data.splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path, duration: str = "2h") -> Path:
        """A kubeconfig holding a token for a ServiceAccount, minted by the TokenRequest API."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {"server": self.server, "certificate-authority": str(self.directory / "ca.crt")},
                        }
                    ],
                    "users": [{"name": service_account, "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "local",
                            "context": {"cluster": "local", "user": service_account, "namespace": namespace},
                        }
                    ],
                    "current-context": "local",
                }
            )
        )
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.directory)], check=False, timeout=60)


def _read_env(directory: Path) -> dict[str, str]:
    values = {}
    for line in (directory / "env").read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    return values


def start(directory: Path, extra_args: Sequence[str] = ()) -> ControlPlane:
    """Build (once, cached under .tools/) and start a control plane with its data under `directory`."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "start", str(directory), *extra_args],
        capture_output=True, text=True, check=False, timeout=3600,
    )  # fmt: skip
    if result.returncode != 0:
        raise ControlPlaneError(f"scripts/controlplane.sh start failed ({result.returncode}):\n{result.stderr[-4000:]}")
    env = _read_env(directory)
    return ControlPlane(
        directory=directory,
        server=env["CONTROLPLANE_SERVER"],
        kubeconfig=Path(env["KUBECONFIG"]),
        binaries=Path(env["CONTROLPLANE_BIN"]),
    )

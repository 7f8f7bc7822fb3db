"""The Prometheus Operator built from its Go module (scripts/prometheus-operator.sh), run against a control plane.

It reads the cluster through `$KUBECONFIG` (the control plane's admin kubeconfig) and is scoped to
one namespace for its Prometheus objects and what they select. The tests give it a Prometheus
with no replicas: the harness kubelet runs only the runtime's pods, and what is proven is the
configuration the operator writes (the Secret `prometheus-<name>`, the rule ConfigMaps), which a
real `prometheus` process then loads.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agentops_dev.localredis import free_port

__all__ = ["PrometheusOperator", "built", "directory", "free_port"]

from tests.support import controlplane as cp

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prometheus-operator.sh"


def built() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "built"], check=False).returncode == 0


def directory() -> Path:
    """The folder of the binary and its CRD (the script builds them when missing)."""
    out = subprocess.run(["bash", str(SCRIPT), "dir"], capture_output=True, text=True, check=True, timeout=3600)
    return Path(out.stdout.strip())


class PrometheusOperator:
    """One `prometheus-operator` process watching `namespace`."""

    def __init__(self, plane: cp.ControlPlane, namespace: str, workdir: Path) -> None:
        self.plane = plane
        self.namespace = namespace
        self.log_path = workdir / "prometheus-operator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusOperator:
        folder = directory()
        self.plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder / "crds"))
        self.plane.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/prometheuses.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/probes.monitoring.coreos.com",
            "crd/scrapeconfigs.monitoring.coreos.com",
        )
        env = {**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(folder / "prometheus-operator"),
                    f"--namespaces={self.namespace}",
                    f"--prometheus-instance-namespaces={self.namespace}",
                    f"--web.listen-address=127.0.0.1:{free_port()}",
                    "--kubelet-endpoints=false",
                    "--log-level=info",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

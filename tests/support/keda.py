"""KEDA on the real control plane: its operator and its metrics server, as processes.

The binaries are built from their Go module by `scripts/keda.sh` (github.com/kedacore/keda/v2,
pinned, cached under .tools/). `Keda.start()` deploys them the way KEDA's own manifests do:
- KEDA's CRDs (tests/cluster/crds/, from its module) are the caller's (`third_party_crds`);
- KEDA's own ServiceAccount, ClusterRoles and bindings, copied unchanged from its module into
  tests/keda/config/; both processes talk to the API with a TokenRequest token of `keda-operator`;
- one certificate signed by the cluster CA, in the layout KEDA reads from its `--cert-dir`
  (`ca.crt`, `tls.crt`, `tls.key`): the operator's gRPC metrics service and the metrics server's
  client of it authenticate each other with it (mutual TLS), and the metrics server serves the
  aggregated API with it (its name is `keda-metrics-apiserver.keda.svc`, which the aggregator
  verifies). Certificate rotation (`--enable-cert-rotation`) is off: it would write a Secret and
  patch the APIService with a CA of its own;
- the operator: `--leader-elect=false`, its health, metrics and gRPC ports on free loopback ports
  (several helpers may share a machine); its readiness from `/readyz`;
- the metrics server: a Service without selector and an EndpointSlice naming the address it
  listens on, a non-loopback one (EndpointSlices refuse loopback; the aggregator routes to
  endpoints), and the APIService `v1beta1.external.metrics.k8s.io` (CA bundle: the cluster CA),
  waited for until Available.
Webhooks (a separate binary) are not run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support import controlplane as cp
from tests.support.adapter import host_address
from tests.support.redis_server import free_port

__all__ = ["Keda", "KedaError", "binaries", "built", "scaled_object_conditions"]

ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = ROOT / "scripts" / "keda.sh"
CONFIG: Final = ROOT / "tests" / "keda" / "config"
NAMESPACE: Final = "keda"
ACCOUNT: Final = "keda-operator"
METRICS_SERVICE: Final = "keda-metrics-apiserver"
OPERATOR_SERVICE: Final = "keda-operator"
SERVICE_PORT: Final = 443
API_SERVICE: Final = "v1beta1.external.metrics.k8s.io"


class KedaError(RuntimeError):
    """KEDA could not be had or started (the message says why)."""


def built() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True, check=False).returncode == 0


def binaries() -> Path:
    """The folder of the built `keda-operator` and `keda-adapter` (`scripts/keda.sh dir`; builds when missing)."""
    result = subprocess.run(["bash", str(SCRIPT), "dir"], capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise KedaError(f"scripts/keda.sh dir failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class Keda:
    """KEDA's operator and metrics server against one control plane (see the module doc)."""

    def __init__(self, plane: cp.ControlPlane, directory: Path) -> None:
        self.plane = plane
        self.directory = directory
        self.host = host_address()
        self.metrics_port = free_port(self.host)
        self.grpc_port = free_port()
        self.health_port = free_port()
        self.operator_log = directory / "keda-operator.log"
        self.adapter_log = directory / "keda-adapter.log"
        self.operator: subprocess.Popen[bytes] | None = None
        self.adapter: subprocess.Popen[bytes] | None = None

    @property
    def account(self) -> str:
        """The user both processes act as, in the audit log."""
        return f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"

    def _apply(self, *objects: dict[str, Any]) -> None:
        self.plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                                                  "items": list(objects)}))  # fmt: skip

    def _rbac(self) -> None:
        self._apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        for path in sorted(CONFIG.glob("*.yaml")):
            self.plane.kubectl("apply", "--server-side", "-f", str(path))

    def _certificates(self) -> Path:
        """`ca.crt`, `tls.crt` and `tls.key` in a folder: KEDA's `--cert-dir` layout, signed by the cluster CA."""
        certs = self.directory / "certs"
        certs.mkdir(exist_ok=True)
        key, csr, crt, ext = (certs / "tls.key", certs / "tls.csr", certs / "tls.crt", certs / "tls.ext")
        ca = self.plane.directory
        names = [
            f"DNS:{METRICS_SERVICE}.{NAMESPACE}.svc",
            f"DNS:{OPERATOR_SERVICE}.{NAMESPACE}.svc.cluster.local",
            "IP:127.0.0.1",
            f"IP:{self.host}",
        ]
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={','.join(names)}\n"
        )
        for command in (
            ["openssl", "genrsa", "-out", str(key), "2048"],
            ["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={METRICS_SERVICE}.{NAMESPACE}.svc",
             "-out", str(csr)],
            ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"),
             "-CAcreateserial", "-CAserial", str(certs / "ca.srl"), "-days", "2", "-sha256",
             "-extfile", str(ext), "-out", str(crt)],
        ):  # fmt: skip
            subprocess.run(command, capture_output=True, check=True, timeout=60)
        shutil.copyfile(ca / "ca.crt", certs / "ca.crt")
        return certs

    def _registration(self) -> None:
        ca_bundle = base64.b64encode((self.plane.directory / "ca.crt").read_bytes()).decode()
        self._apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "https", "port": SERVICE_PORT, "targetPort": self.metrics_port}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": METRICS_SERVICE,
                    "namespace": NAMESPACE,
                    "labels": {
                        "kubernetes.io/service-name": METRICS_SERVICE,
                        "endpointslice.kubernetes.io/managed-by": "harness.agentops.dev",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.host], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": self.metrics_port, "protocol": "TCP"}],
            },
            {
                # As KEDA's config/metrics-server/api_service.yaml, with a CA bundle instead of
                # insecureSkipTLSVerify (which KEDA's cert rotation would fill in).
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": {"name": API_SERVICE},
                "spec": {
                    "group": "external.metrics.k8s.io",
                    "version": "v1beta1",
                    "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": SERVICE_PORT},
                    "caBundle": ca_bundle,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 100,
                },
            },
        )

    def _spawn(self, args: list[str], log_path: Path, kubeconfig: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "POD_NAMESPACE": NAMESPACE,  # where KEDA keeps its own objects
            # Where ClusterTriggerAuthentications' Secrets live; in a pod, its ServiceAccount's namespace file.
            "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
            "WATCH_NAMESPACE": "",  # every namespace
        }
        with log_path.open("ab") as log:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)

    def _operator_ready(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response,
        ):
            return bool(response.status == 200)
        return False

    def start(self, timeout: float = 180.0) -> Keda:
        """Deploy and run both processes; return once the operator is ready and the APIService Available."""
        folder = binaries()
        self._rbac()
        kubeconfig = self.plane.token_kubeconfig(NAMESPACE, ACCOUNT, self.directory / "keda.kubeconfig")
        certs = self._certificates()
        ca_dir = self.directory / "custom-ca"  # extra CAs for scalers' TLS: none
        ca_dir.mkdir(exist_ok=True)
        self.operator = self._spawn(
            [
                str(folder / "keda-operator"),
                "--leader-elect=false",
                "--enable-cert-rotation=false",
                f"--cert-dir={certs}",
                f"--ca-dir={ca_dir}",
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{self.health_port}",
                f"--metrics-service-bind-address=127.0.0.1:{self.grpc_port}",
                "--zap-log-level=info",
                "--zap-encoder=json",
            ],
            self.operator_log,
            kubeconfig,
        )
        self.adapter = self._spawn(
            [
                str(folder / "keda-adapter"),
                f"--bind-address={self.host}",
                f"--secure-port={self.metrics_port}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--cert-dir={certs}",
                f"--metrics-service-address=127.0.0.1:{self.grpc_port}",
                f"--port={free_port()}",  # its own /metrics
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--zap-log-level=info",
                "--zap-encoder=json",
            ],
            self.adapter_log,
            kubeconfig,
        )
        self._registration()
        deadline = time.monotonic() + timeout
        while True:
            for name, process, log in (("operator", self.operator, self.operator_log),
                                       ("metrics server", self.adapter, self.adapter_log)):  # fmt: skip
                if process.poll() is not None:
                    raise KedaError(f"KEDA's {name} exited with {process.returncode}:\n{_tail(log)}")
            waited = self.plane.kubectl(
                "wait",
                "--for=condition=Available",
                "--timeout=5s",
                f"apiservice/{API_SERVICE}",
                check=False,
                timeout=30,
            )
            if waited.returncode == 0 and self._operator_ready():
                return self
            if time.monotonic() > deadline:
                raise KedaError(
                    f"KEDA not ready after {timeout}s (APIService: {waited.stderr.strip() or 'Available'}, "
                    f"operator ready: {self._operator_ready()})\noperator:\n{_tail(self.operator_log)}\n"
                    f"metrics server:\n{_tail(self.adapter_log)}"
                )
            time.sleep(1)

    def logs(self) -> str:
        return f"operator:\n{_tail(self.operator_log)}\nmetrics server:\n{_tail(self.adapter_log)}"

    def stop(self) -> None:
        """Unregister the APIService (so discovery does not stall on it) and stop both processes."""
        self.plane.kubectl("delete", "--ignore-not-found", "--wait=false", f"apiservice/{API_SERVICE}", check=False)
        for process in (self.adapter, self.operator):
            if process is not None and process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                if process.poll() is None:
                    process.kill()
                    process.wait()


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


def scaled_object_conditions(plane: cp.ControlPlane, namespace: str, name: str) -> dict[str, str]:
    """A ScaledObject's status conditions, type -> status ('' while it has none)."""
    result = plane.kubectl("get", "scaledobject", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        return {}
    body = yaml.safe_load(result.stdout)
    return {c["type"]: c["status"] for c in body.get("status", {}).get("conditions", [])}

"""prometheus-adapter on the real control plane: the custom and resource metrics APIs the HPA controller reads.

The binary is built from its Go module by `scripts/prometheus-adapter.sh` (pinned, cached under
.tools/). `PrometheusAdapter.start()` deploys it the way its own manifests do, as a process:
- a ServiceAccount `prometheus-adapter` in `custom-metrics`, bound to `system:auth-delegator`
  (delegated authentication and authorization), to `extension-apiserver-authentication-reader`
  in kube-system (the requestheader CA of the aggregation layer), and to a ClusterRole reading
  pods, nodes, namespaces and services (its listers); it talks to the API with a TokenRequest token
  of that account;
- a serving certificate signed by the cluster CA for `prometheus-adapter.custom-metrics.svc`, the
  name the aggregator verifies;
- a Service without selector and an EndpointSlice naming the address the adapter listens on.
  The aggregator is told to route to endpoints (`--enable-aggregator-routing`, there is no
  kube-proxy here), and EndpointSlices refuse loopback addresses, so the adapter listens on a
  non-loopback address of this host (`host_address()`);
- the APIServices `v1beta1` and `v1beta2.custom.metrics.k8s.io` and `v1beta1.metrics.k8s.io`
  (CA bundle: the cluster CA), waited for until Available.

The custom rules are **the rules docs/autoscaling.md gives users** (`documented_rules()` reads its
fenced YAML block, Helm values of the prometheus-adapter chart, whose `rules.custom` the chart
writes as the config file's `rules`, as done here). The resource rules (`RESOURCE_RULES`) stand in
for metrics-server: every HPA of the operator also has a CPU metric, and an HPA does not scale down
while one of its metrics cannot be read. They read the harness kubelet's resource metrics.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import json
import re
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support import controlplane as cp
from tests.support.redis_server import free_port

__all__ = ["PrometheusAdapter", "binary", "built", "documented_rules", "host_address"]

ROOT: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = ROOT / "scripts" / "prometheus-adapter.sh"
DOCS: Final = ROOT / "docs" / "autoscaling.md"
NAMESPACE: Final = "custom-metrics"
NAME: Final = "prometheus-adapter"
SERVICE_PORT: Final = 443
# How often the adapter re-lists the series in Prometheus (default 10 min): a series that appears
# later (the first pods of a service) is served within this time.
RELIST: Final = "5s"
WINDOW: Final = "15s"
SIOCGIFADDR: Final = 0x8915

_RESOURCE_LABELS: Final = {
    "overrides": {"node": {"resource": "node"}, "namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
}
_CONTAINER: Final = '<<.LabelMatchers>>,container!=""'
RESOURCE_RULES: Final[dict[str, Any]] = {
    "cpu": {
        "containerQuery": f"sum by (<<.GroupBy>>) (rate(container_cpu_usage_seconds_total{{{_CONTAINER}}}[{WINDOW}]))",
        "nodeQuery": f"sum by (<<.GroupBy>>) (rate(node_cpu_usage_seconds_total{{<<.LabelMatchers>>}}[{WINDOW}]))",
        "resources": _RESOURCE_LABELS,
        "containerLabel": "container",
    },
    "memory": {
        "containerQuery": f"sum by (<<.GroupBy>>) (container_memory_working_set_bytes{{{_CONTAINER}}})",
        "nodeQuery": "sum by (<<.GroupBy>>) (node_memory_working_set_bytes{<<.LabelMatchers>>})",
        "resources": _RESOURCE_LABELS,
        "containerLabel": "container",
    },
    "window": WINDOW,
}

API_SERVICES: Final = [
    # (group, version, versionPriority), as the adapter's own manifests register them
    ("custom.metrics.k8s.io", "v1beta1", 100),
    ("custom.metrics.k8s.io", "v1beta2", 200),
    ("metrics.k8s.io", "v1beta1", 100),
]


class AdapterError(RuntimeError):
    """prometheus-adapter could not be had or started (the message says why)."""


def built() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True, check=False).returncode == 0


def binary() -> Path:
    """The built binary (`scripts/prometheus-adapter.sh bin`; builds it when missing)."""
    result = subprocess.run(["bash", str(SCRIPT), "bin"], capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        raise AdapterError(f"scripts/prometheus-adapter.sh bin failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def documented_rules() -> list[dict[str, Any]]:
    """The custom-metrics rules of docs/autoscaling.md: its fenced YAML block's `rules.custom`."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    values = [yaml.safe_load(block) for block in blocks]
    found = [v["rules"]["custom"] for v in values if isinstance(v, dict) and "custom" in (v.get("rules") or {})]
    if len(found) != 1:
        raise AdapterError(f"{DOCS.name}: expected one YAML block with rules.custom, found {len(found)}")
    rules: list[dict[str, Any]] = found[0]
    return rules


def host_address() -> str:
    """A non-loopback, non-link-local IPv4 address of this host (EndpointSlices refuse loopback)."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on this interface
                continue
        address = ipaddress.ip_address(socket.inet_ntoa(packed[20:24]))
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return str(address)
    raise AdapterError(
        "this host has no non-loopback IPv4 address: the aggregation layer routes to an EndpointSlice "
        "address, and EndpointSlices refuse loopback ones"
    )


class PrometheusAdapter:
    """One prometheus-adapter process serving the custom and resource metrics APIs (see the module doc)."""

    def __init__(
        self,
        plane: cp.ControlPlane,
        directory: Path,
        *,
        prometheus_url: str,
        rules: list[dict[str, Any]],
    ) -> None:
        self.plane = plane
        self.directory = directory
        self.prometheus_url = prometheus_url
        self.config = {"rules": rules, "resourceRules": RESOURCE_RULES}
        self.host = host_address()
        self.port = free_port(self.host)
        self.log_path = directory / "adapter.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _apply(self, *objects: dict[str, Any]) -> None:
        self.plane.kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                                                  "items": list(objects)}))  # fmt: skip

    def _rbac(self) -> None:
        account = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
        self._apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": NAMESPACE}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": f"{NAME}-resource-reader"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["namespaces", "pods", "nodes", "services"],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
            *(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"{NAME}:{role}"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [account],
                }
                for role in ("system:auth-delegator", f"{NAME}-resource-reader")
            ),
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{NAME}-auth-reader", "namespace": "kube-system"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "extension-apiserver-authentication-reader",
                },
                "subjects": [account],
            },
        )

    def _serving_certificate(self) -> tuple[Path, Path]:
        """A key and a certificate for the Service's DNS name, signed by the cluster CA."""
        key, csr, crt, ext = (self.directory / f"serving.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        ca = self.plane.directory
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{NAME}.{NAMESPACE}.svc,IP:{self.host}\n"
        )
        for command in (
            ["openssl", "genrsa", "-out", str(key), "2048"],
            ["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={NAME}.{NAMESPACE}.svc", "-out", str(csr)],
            ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca / "ca.crt"), "-CAkey", str(ca / "ca.key"),
             "-CAcreateserial", "-CAserial", str(self.directory / "ca.srl"), "-days", "2", "-sha256",
             "-extfile", str(ext), "-out", str(crt)],
        ):  # fmt: skip
            subprocess.run(command, capture_output=True, check=True, timeout=60)
        return key, crt

    def _registration(self) -> None:
        ca_bundle = base64.b64encode((self.plane.directory / "ca.crt").read_bytes()).decode()
        self._apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "https", "port": SERVICE_PORT, "targetPort": self.port}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": NAME,
                    "namespace": NAMESPACE,
                    "labels": {
                        "kubernetes.io/service-name": NAME,
                        "endpointslice.kubernetes.io/managed-by": "harness.agentops.dev",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.host], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}],
            },
            *(
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": f"{version}.{group}"},
                    "spec": {
                        "group": group,
                        "version": version,
                        "service": {"name": NAME, "namespace": NAMESPACE, "port": SERVICE_PORT},
                        "caBundle": ca_bundle,
                        "groupPriorityMinimum": 100,
                        "versionPriority": priority,
                    },
                }
                for group, version, priority in API_SERVICES
            ),
        )

    def start(self, timeout: float = 120.0) -> PrometheusAdapter:
        """Deploy and run the adapter; return once every APIService it serves is Available."""
        self._rbac()
        kubeconfig = self.plane.token_kubeconfig(NAMESPACE, NAME, self.directory / "adapter.kubeconfig")
        key, crt = self._serving_certificate()
        config_path = self.directory / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(binary()),
                    f"--bind-address={self.host}",
                    f"--secure-port={self.port}",
                    f"--tls-cert-file={crt}",
                    f"--tls-private-key-file={key}",
                    f"--lister-kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    f"--prometheus-url={self.prometheus_url}",
                    f"--config={config_path}",
                    f"--metrics-relist-interval={RELIST}",
                    "--v=2",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._registration()
        deadline = time.monotonic() + timeout
        names = [f"apiservice/{version}.{group}" for group, version, _ in API_SERVICES]
        while True:
            if self.process.poll() is not None:
                raise AdapterError(f"prometheus-adapter exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            waited = self.plane.kubectl(
                "wait", "--for=condition=Available", "--timeout=5s", *names, check=False, timeout=30
            )
            if waited.returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise AdapterError(
                    f"the adapter's APIServices are not Available after {timeout}s: {waited.stderr.strip()}\n"
                    f"{self.logs()[-3000:]}"
                )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Unregister the APIServices (so discovery does not stall on them) and stop the process."""
        names = [f"apiservice/{version}.{group}" for group, version, _ in API_SERVICES]
        self.plane.kubectl("delete", "--ignore-not-found", "--wait=false", *names, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

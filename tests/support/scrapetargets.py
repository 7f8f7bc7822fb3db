"""What the Prometheus Operator would have Prometheus scrape, for the pods the harness kubelet runs.

`ServiceMonitorTargets` reads the ServiceMonitors of a namespace from the real API and follows them
the way the Prometheus Operator's generated scrape config does: the Services their `selector`
matches, each endpoint's Service `port` by name, the pods that Service selects, the container port
its `targetPort` names. Each target is the address where the harness kubelet runs that port,
labelled as kubernetes_sd and the operator's relabelling would label it (`namespace`, `service`,
`pod`, `container`, `endpoint`, `job`; then the ServiceMonitor's `podTargetLabels` from the pod's
labels, then each endpoint's `relabelings`, of which the `replace` action from the `__meta_*`
labels of the pod and the Service is followed, any other is an error here), and goes into a file_sd
file of a real Prometheus (`DiscoveringPrometheus`, which scrapes with `honor_labels: false`, so a
ServiceMonitor endpoint asking for `honorLabels: true` is an error here: a label a process exposes
never wins over these). The kubelet's own resource-metrics endpoint is a target too.

Scrapes happen every second (the test Prometheus's interval), not at the ServiceMonitor's
`interval`: the tests wait for series, and a 30 s interval would only slow them down.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Final, Protocol

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.kubelet import HarnessKubelet

__all__ = ["ServiceMonitorTargets"]

PERIOD: Final = 1.0


def sanitized(label: str) -> str:
    """A Kubernetes label key as Prometheus spells it in meta and target labels."""
    return re.sub(r"[^A-Za-z0-9_]", "_", label)


def relabelled(
    labels: Mapping[str, str], meta: Mapping[str, str], monitor: Mapping[str, Any], endpoint: Mapping[str, Any]
) -> dict[str, str]:
    """The target labels after `podTargetLabels` and the endpoint's `relabelings` (as the Prometheus
    Operator's generated config applies them, in that order); an empty value removes a label."""
    out = dict(labels)
    for key in monitor["spec"].get("podTargetLabels") or []:
        value = meta.get("__meta_kubernetes_pod_label_" + sanitized(key), "")
        out[sanitized(key)] = value
    for rule in endpoint.get("relabelings") or []:
        action = rule.get("action", "replace").lower()
        if action != "replace" or rule.get("regex", "(.*)") != "(.*)" or "replacement" in rule:
            raise AssertionError(f"relabeling {rule} is not emulated here")
        source = [meta.get(name, out.get(name, "")) for name in rule["sourceLabels"]]
        out[rule["targetLabel"]] = rule.get("separator", ";").join(source)
    return {key: value for key, value in out.items() if value}


class TargetsFile(Protocol):
    def set_targets(self, targets: Mapping[str, Mapping[str, str]]) -> None: ...


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches `labels`."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and (not present or labels[key] not in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


class ServiceMonitorTargets:
    """Keeps a file_sd file in step with the ServiceMonitors of `namespace` (see the module doc)."""

    def __init__(
        self, api: client.ApiClient, kubelet: HarnessKubelet, targets_file: TargetsFile, namespace: str
    ) -> None:
        self.kubelet = kubelet
        self.targets_file = targets_file
        self.namespace = namespace
        # Its own client (the Prometheus Operator's identity, not the kubelet's: a Node may not list
        # Services or ServiceMonitors).
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.errors: list[BaseException] = []
        self.published: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="servicemonitor-targets", daemon=True)

    def targets(self) -> dict[str, dict[str, str]]:
        """`host:port` -> target labels, as of now."""
        out = {self.kubelet.metrics_address: {"job": "kubelet", "node": self.kubelet.name}}
        try:
            monitors = self.custom.list_namespaced_custom_object(
                "monitoring.coreos.com", "v1", self.namespace, "servicemonitors"
            )["items"]
        except ApiException as error:
            if error.status == 404:  # no CRD or none yet
                return out
            raise
        services = self.core.list_namespaced_service(self.namespace).items
        for monitor in monitors:
            for service in services:
                if _selects(monitor["spec"].get("selector"), service.metadata.labels or {}):
                    for endpoint in monitor["spec"].get("endpoints") or []:
                        if endpoint.get("honorLabels"):
                            name = monitor["metadata"]["name"]
                            raise AssertionError(f"{name}: this Prometheus scrapes with honor_labels: false")
                        out.update(self._endpoint(service, monitor, endpoint))
        return out

    def _endpoint(
        self, service: Any, monitor: Mapping[str, Any], endpoint: Mapping[str, Any]
    ) -> dict[str, dict[str, str]]:
        """The targets of one ServiceMonitor endpoint on one Service: its pods' ports that the Service port names."""
        port_name = str(endpoint["port"])
        out = {}
        for port in service.spec.ports or []:
            if port.name != port_name:
                continue
            for worker in self.kubelet.workers(self.namespace):
                if not worker.started or not _selects({"matchLabels": service.spec.selector}, worker.labels):
                    continue
                for container in worker.pod["spec"]["containers"]:
                    declared = {str(p.get("name")) for p in container.get("ports") or []}
                    declared |= {str(p["containerPort"]) for p in container.get("ports") or []}
                    if str(port.target_port) in declared:
                        labels = {
                            "job": service.metadata.name,
                            "namespace": self.namespace,
                            "service": service.metadata.name,
                            "pod": worker.process.name,
                            "container": container["name"],
                            "endpoint": port_name,
                        }
                        meta = {
                            "__meta_kubernetes_namespace": self.namespace,
                            "__meta_kubernetes_service_name": service.metadata.name,
                            "__meta_kubernetes_pod_name": worker.process.name,
                        }
                        meta |= {f"__meta_kubernetes_pod_label_{sanitized(k)}": v for k, v in worker.labels.items()}
                        out[worker.process.address(port.target_port)] = relabelled(labels, meta, monitor, endpoint)
        return out

    def _loop(self) -> None:
        while not self._stop.wait(PERIOD):
            try:
                targets = self.targets()
                if targets != self.published:
                    self.targets_file.set_targets(targets)
                    self.published = targets
            except Exception as error:  # kept for the test to fail on; the next round tries again
                self.errors.append(error)

    def start(self) -> ServiceMonitorTargets:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

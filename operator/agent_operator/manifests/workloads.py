"""The runtime workloads of one AgentService: Deployments, Services, PodDisruptionBudgets, NetworkPolicy.

Pure: spec in, plain manifests out, no ownerReferences (the operator adopts children at apply
time). Every name comes from `naming.py`, every port, path and env var name from
`agent_runtime.constants`.

Tracks: the same builder renders the stable and the canary Deployment of a component. Their
selectors include the `track` label, so the two never select each other's pods, while the API
Service selects `component=api` of both tracks (the canary takes traffic by replica ratio).

The pod-template hash is a fingerprint of the template *as the stable track would run it*: the
canary Deployment of a revision carries the same hash as the stable Deployment that later takes
that revision over, so "stable hash == desired hash" means "nothing to roll out".
"""

from __future__ import annotations

import ipaddress
import posixpath
import urllib.parse
from typing import Any, Final

from agent_operator.api import models
from agent_operator.manifests import naming, redisconfig, runtimeconfig, templatehash

from agent_runtime import constants

DEFAULT_IMAGE_REPOSITORY: Final = "agentops/agent-runtime"
ENTRYPOINT: Final = "agent-runtime"
# The runtime image runs as this user (see the Dockerfile); set explicitly so that
# `runAsNonRoot` can be verified by the kubelet even for images that name their user.
RUNTIME_UID: Final = 10001
API_PORT_NAME: Final = "http"
WORKER_METRICS_PORT_NAME: Final = "metrics"
SERVICE_PORT: Final = 80
API_TERMINATION_GRACE_SECONDS: Final = 30
CONFIG_VOLUME: Final = "config"
TMP_VOLUME: Final = "tmp"
TMP_SIZE_LIMIT: Final = "64Mi"
REVISION_HISTORY_LIMIT: Final = 5
LABEL_VALUE_MAX: Final = 63


def image(svc: models.AgentService, operator_version: str) -> str:
    """`spec.image`, or the bundled runtime image of this operator version."""
    return svc.spec.image or f"{DEFAULT_IMAGE_REPOSITORY}:{operator_version}"


def app_version(svc: models.AgentService, operator_version: str) -> str:
    """The `app.kubernetes.io/version` label: the runtime version the pods run.

    The operator's version for the bundled image, otherwise the tag of `spec.image` (`latest`
    without a tag, `digest` for a digest reference), trimmed to a valid label value. Deriving it
    from the image keeps an operator upgrade from changing the pod template of a custom image.
    """
    if svc.spec.image is None:
        raw = operator_version
    elif "@" in svc.spec.image:
        raw = "digest"
    else:
        last = svc.spec.image.rsplit("/", 1)[-1]
        raw = last.rsplit(":", 1)[1] if ":" in last else "latest"
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)[:LABEL_VALUE_MAX]
    return cleaned.strip("-_.") or "unknown"


def pod_labels(service: str, component: naming.Component, track: naming.Track, app_version: str) -> dict[str, str]:
    """Labels of a pod: the standard ones plus `track` (a superset of the selector labels)."""
    return {**naming.standard_labels(service, component.value, app_version), naming.TRACK_LABEL: track.value}


def resources(spec: models.Resources) -> dict[str, Any]:
    """Container resources without unset quantities."""
    out: dict[str, Any] = {}
    for section, quantities in (("requests", spec.requests), ("limits", spec.limits)):
        values = {k: v for k, v in (("cpu", quantities.cpu), ("memory", quantities.memory)) if v is not None}
        if values:
            out[section] = values
    return out


def _secret_env(name: str, ref: models.SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def env(svc: models.AgentService, track: naming.Track) -> list[dict[str, Any]]:
    """The container environment: identity, config path, secrets by reference, then `spec.env`.

    Provider keys only ever appear as `secretKeyRef`s. A `spec.env` entry whose name the operator
    already sets is dropped (the operator's value wins: a duplicate name would make server-side
    apply reject the Deployment); among `spec.env` entries of one name, the last one wins.
    """
    spec = svc.spec
    out: list[dict[str, Any]] = [
        {"name": constants.SERVICE_ENV, "value": svc.metadata.name},
        {"name": constants.TRACK_ENV, "value": track.value},
        {"name": constants.POD_NAME_ENV, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": constants.CONFIG_PATH_ENV, "value": constants.CONFIG_PATH},
        _secret_env(
            constants.AUTH_TOKEN_ENV,
            models.SecretKeyRef(name=naming.auth_secret_name(svc.metadata.name), key=runtimeconfig.AUTH_TOKEN_KEY),
        ),
    ]
    if spec.redis.url_secret_ref is not None:
        out.append(_secret_env(constants.REDIS_URL_ENV, spec.redis.url_secret_ref))
    else:
        out.append({"name": constants.REDIS_URL_ENV, "value": spec.redis.url})
    out.extend(redisconfig.env(spec.redis))
    for provider in spec.model.providers:
        if provider.api_key_secret_ref is not None:
            out.append(_secret_env(constants.provider_key_env(provider.name), provider.api_key_secret_ref))
    for server in spec.tools.mcp_servers:
        for i, header in enumerate(server.headers):
            out.append(_secret_env(constants.mcp_header_env(server.name, i), header.secret_key_ref))
    reserved = {e["name"] for e in out}
    extra: dict[str, dict[str, Any]] = {}
    for var in spec.env:
        if var.name in reserved:
            continue
        if var.secret_key_ref is not None:
            extra[var.name] = _secret_env(var.name, var.secret_key_ref)
        else:
            extra[var.name] = {"name": var.name, "value": var.value or ""}
    out.extend(extra.values())
    return out


def _probe(path: str, port: str, *, period: int, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failure_threshold,
    }


def container(
    svc: models.AgentService, component: naming.Component, track: naming.Track, operator_version: str
) -> dict[str, Any]:
    """The runtime container of one component."""
    spec_resources: models.Resources
    if component == naming.Component.API:
        port_name, port, spec_resources = API_PORT_NAME, constants.API_PORT, svc.spec.api.resources
    else:
        port_name, port, spec_resources = (
            WORKER_METRICS_PORT_NAME,
            constants.WORKER_METRICS_PORT,
            svc.spec.worker.resources,
        )
    return {
        "name": component.value,
        "image": image(svc, operator_version),
        "imagePullPolicy": svc.spec.image_pull_policy,
        "command": [ENTRYPOINT],
        "args": [component.value],
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
        "env": env(svc, track),
        "resources": resources(spec_resources),
        "startupProbe": _probe(constants.HEALTH_PATH, port_name, period=2, failure_threshold=30),
        "livenessProbe": _probe(constants.HEALTH_PATH, port_name, period=10, failure_threshold=3),
        "readinessProbe": _probe(constants.READY_PATH, port_name, period=5, failure_threshold=3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": posixpath.dirname(constants.CONFIG_PATH), "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *redisconfig.volume_mounts(svc.spec.redis),
        ],
    }


def pod_template(
    svc: models.AgentService,
    component: naming.Component,
    track: naming.Track,
    *,
    operator_version: str,
    config_digest: str,
) -> dict[str, Any]:
    """The pod template of one component and track, without the template-hash annotation."""
    name = svc.metadata.name
    annotations = {**svc.spec.pod_annotations, runtimeconfig.CONFIG_HASH_ANNOTATION: config_digest}
    pod_spec: dict[str, Any] = {
        "containers": [container(svc, component, track, operator_version)],
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": (
            API_TERMINATION_GRACE_SECONDS
            if component == naming.Component.API
            else svc.spec.worker.termination_grace_period_seconds
        ),
        "volumes": [
            {
                "name": CONFIG_VOLUME,
                "configMap": {
                    "name": naming.config_map_name(name, track),
                    "items": [{"key": runtimeconfig.CONFIG_KEY, "path": posixpath.basename(constants.CONFIG_PATH)}],
                },
            },
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
            *redisconfig.volumes(svc.spec.redis),
        ],
    }
    if svc.spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": ref.name} for ref in svc.spec.image_pull_secrets]
    if svc.spec.service_account_name is not None:
        pod_spec["serviceAccountName"] = svc.spec.service_account_name
    # Explicit either way: naming a ServiceAccount (for image pull secrets, workload identity) does
    # not by itself hand the pods an API token.
    pod_spec["automountServiceAccountToken"] = svc.spec.automount_service_account_token
    return {
        "metadata": {
            "labels": pod_labels(name, component, track, app_version(svc, operator_version)),
            "annotations": dict(sorted(annotations.items())),
        },
        "spec": pod_spec,
    }


def desired_replicas(svc: models.AgentService, component: naming.Component) -> int | None:
    """Replicas from the spec, or None when an autoscaler owns the count."""
    if svc.spec.autoscaling.enabled:
        return None
    return svc.spec.api.replicas if component == naming.Component.API else svc.spec.worker.replicas


def pod_template_hash(
    svc: models.AgentService, component: naming.Component, *, operator_version: str, config_digest: str | None = None
) -> str:
    """The template hash of a component's desired revision (track-independent, see module doc)."""
    digest = config_digest or runtimeconfig.config_hash(runtimeconfig.config_data(svc))
    stable = pod_template(svc, component, naming.Track.STABLE, operator_version=operator_version, config_digest=digest)
    return templatehash.template_hash(stable)


def build_deployment(
    svc: models.AgentService,
    component: naming.Component,
    *,
    operator_version: str,
    track: naming.Track = naming.Track.STABLE,
    replicas: int | None = None,
    config_digest: str | None = None,
) -> dict[str, Any]:
    """The Deployment of one component and track.

    `replicas=None` takes the count from the spec, or omits `spec.replicas` when autoscaling is
    enabled (the autoscaler owns it); an explicit count (canary rollouts) is always written.
    """
    name = svc.metadata.name
    digest = config_digest or runtimeconfig.config_hash(runtimeconfig.config_data(svc))
    template = pod_template(svc, component, track, operator_version=operator_version, config_digest=digest)
    if track == naming.Track.STABLE:
        template_hash = templatehash.template_hash(template)
    else:
        template_hash = pod_template_hash(svc, component, operator_version=operator_version, config_digest=digest)
    template["metadata"]["annotations"][naming.TEMPLATE_HASH_ANNOTATION] = template_hash
    spec: dict[str, Any] = {}
    count = desired_replicas(svc, component) if replicas is None else replicas
    if count is not None:
        spec["replicas"] = count
    spec.update(
        {
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "selector": {"matchLabels": naming.selector_labels(name, component, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": template,
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": naming.deployment_name(name, component, track),
            "namespace": svc.metadata.namespace,
            "labels": pod_labels(name, component, track, app_version(svc, operator_version)),
            "annotations": {naming.TEMPLATE_HASH_ANNOTATION: template_hash},
        },
        "spec": spec,
    }


def build_api_service(svc: models.AgentService, *, operator_version: str) -> dict[str, Any]:
    """The ClusterIP Service of the task API; it selects API pods of both tracks."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.api_service_name(name),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(name, naming.Component.API.value, app_version(svc, operator_version)),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(name, naming.Component.API),
            "ports": [{"name": API_PORT_NAME, "port": SERVICE_PORT, "targetPort": API_PORT_NAME, "protocol": "TCP"}],
        },
    }


def build_worker_metrics_service(svc: models.AgentService, *, operator_version: str) -> dict[str, Any]:
    """A headless Service over the worker pods of both tracks, so the ServiceMonitor can scrape them."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.deployment_name(name, naming.Component.WORKER),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(name, naming.Component.WORKER.value, app_version(svc, operator_version)),
        },
        "spec": {
            "clusterIP": "None",
            "selector": naming.selector_labels(name, naming.Component.WORKER),
            "ports": [
                {
                    "name": WORKER_METRICS_PORT_NAME,
                    "port": constants.WORKER_METRICS_PORT,
                    "targetPort": WORKER_METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_pod_disruption_budget(
    svc: models.AgentService, component: naming.Component, *, operator_version: str
) -> dict[str, Any]:
    """A PodDisruptionBudget over a component's pods of both tracks."""
    name = svc.metadata.name
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": naming.deployment_name(name, component),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(name, component.value, app_version(svc, operator_version)),
        },
        "spec": {
            "maxUnavailable": svc.spec.pod_disruption_budget.max_unavailable,
            "selector": {"matchLabels": naming.selector_labels(name, component)},
        },
    }


# Everywhere but link-local: IPv4 169.254.0.0/16 and IPv6 fe80::/10 hold the node's and the cloud's
# metadata services, which no rule of a tenant's spec may reach.
ANYWHERE: Final = (
    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}},
    {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10"]}},
)
REDIS_PORTS: Final = (6379, 26379)  # a Redis URL kept in a Secret: the standard and the Sentinel port
IN_CLUSTER_SUFFIXES: Final = (".svc", ".svc.cluster.local")


def _port_of(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return port or (443 if parts.scheme in ("https", "rediss") else 80)


def _tcp(ports: list[int]) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in sorted(set(ports))]


def _mcp_peer(svc: models.AgentService, url: str) -> dict[str, Any]:
    """Where one MCP server's URL leads: a namespace (a Service name), an address, or anywhere.

    A Service's port is not the port a policy sees (that is the pod's targetPort, after the
    Service's address translation), so a Service host opens its namespace on every port.
    """
    host = (urllib.parse.urlsplit(url).hostname or "").rstrip(".").lower()
    port = _port_of(url)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        bits = 32 if address.version == 4 else 128
        return {"to": [{"ipBlock": {"cidr": f"{address}/{bits}"}}], "ports": _tcp([port])}
    labels = host.split(".")
    namespace = None
    if "." not in host:
        namespace = svc.metadata.namespace  # a bare Service name: the service's own namespace
    elif any(host.endswith(suffix) for suffix in IN_CLUSTER_SUFFIXES) and len(labels) >= 3:
        namespace = labels[1]
    if namespace is not None:
        return {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]}
    return {"to": list(ANYWHERE), "ports": _tcp([port])}


def _redis_ports(url: str) -> list[int]:
    """The port of each host of a Redis URL (`h1:p1,h2:p2`, `[v6]:p`; 6379 when absent)."""
    ports = []
    for host in urllib.parse.urlsplit(url).netloc.rsplit("@", 1)[-1].split(","):
        tail = host.rsplit("]", 1)[-1]
        port = tail.rsplit(":", 1)[1] if ":" in tail else ""
        ports.append(int(port) if port.isdigit() else 6379)
    return ports


def egress_rules(svc: models.AgentService) -> list[dict[str, Any]]:
    """The egress a service needs when `networkPolicy.restrictEgress` is on. Pure."""
    spec = svc.spec
    dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    redis_ports = _redis_ports(spec.redis.url) if spec.redis.url is not None else list(REDIS_PORTS)
    provider_ports = [443] + [_port_of(p.base_url) for p in spec.model.providers if p.base_url]
    rules = [
        dns,
        {"to": list(ANYWHERE), "ports": _tcp(redis_ports)},
        {"to": list(ANYWHERE), "ports": _tcp(provider_ports)},
    ]
    rules += [_mcp_peer(svc, server.url) for server in spec.tools.mcp_servers if server.url is not None]
    return rules


def build_network_policy(svc: models.AgentService, *, operator_version: str) -> dict[str, Any]:
    """Ingress to the service's pods: the task API from its own namespace and the allowed ones,
    the metrics ports from the monitoring namespace. Egress stays open (LLM APIs, Redis, MCP
    servers) unless `restrictEgress`: then only what the spec names (`egress_rules`)."""
    name = svc.metadata.name
    policy = svc.spec.network_policy
    api_peers: list[dict[str, Any]] = [{"podSelector": {}}]
    if policy.allow_from_namespaces:
        api_peers.append(
            {
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": sorted(set(policy.allow_from_namespaces)),
                        }
                    ]
                }
            }
        )
    monitoring_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": policy.monitoring_namespace}}
    }
    egress: dict[str, Any] = {}
    if policy.restrict_egress:
        egress = {"egress": egress_rules(svc)}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": naming.network_policy_name(name),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(name, "network", app_version(svc, operator_version)),
        },
        "spec": {
            "podSelector": {"matchLabels": naming.instance_labels(name)},
            "policyTypes": ["Ingress", "Egress"] if policy.restrict_egress else ["Ingress"],
            "ingress": [
                {
                    "from": api_peers,
                    "ports": [{"protocol": "TCP", "port": constants.API_PORT}],
                },
                {
                    "from": [monitoring_peer],
                    "ports": [
                        {"protocol": "TCP", "port": constants.API_PORT},
                        {"protocol": "TCP", "port": constants.WORKER_METRICS_PORT},
                    ],
                },
            ],
            **egress,
        },
    }

"""Deterministic child names and the standard labels every child carries.

Names derive from the AgentService name only (never random), so a re-render finds the same
objects. An AgentService name is a DNS-1035 label of at most 63 characters (it names Services);
a child's name is `<service>-<suffix>` when that fits its kind's limit, and otherwise `fit`
shortens it with a hash of the whole name: `<service cut short>-<10 hex>-<suffix>`. The suffix
stays readable, the hash keeps two long names that share a prefix apart, and the same input
always gives the same name (an `agentctl render` and every reconcile agree).

The limits, by what Kubernetes does with the name:
- Service: a DNS-1035 label, at most 63 characters (kube-apiserver's `ValidateServiceName`).
- Deployment: the API accepts a DNS subdomain (253), but its pods are named
  `<deployment>-<pod-template-hash>-<5 random>`: the Deployment controller names the ReplicaSet
  `<deployment>-<hash>` (the hash is a uint32 in up to 10 characters) and the API server cuts a
  `generateName` base to 58 characters before the 5 random ones (names.SimpleNameGenerator), so
  that a pod name, which is also its hostname, stays within 63. At 46 characters or fewer
  (46 + 1 + 10 + 1 + 5 = 63) no pod name loses its ReplicaSet's hash to that cut, so
  `kubectl get pods` still tells the revisions apart. The HPA, the ScaledObject, the
  PodDisruptionBudget and the worker metrics Service of a component share its Deployment's name.
- Everything else (ConfigMaps, the auth Secret, NetworkPolicy, PrometheusRule, ServiceMonitor):
  the API accepts a DNS subdomain (253), but they are kept to a DNS label too, so that every
  child name also fits where tools copy a name into a label value (KEDA labels the HPA it makes
  with `scaledobject.keda.sh/name`) or a hostname.
Label values that carry a name carry the AgentService's own (`app.kubernetes.io/instance`),
which is at most 63 characters, the label value limit: selectors and pruning find every child by
it, whatever its shortened name.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Final

from agent_runtime import config

MANAGED_BY: Final = "agentservice-operator"
FIELD_MANAGER: Final = "agentservice-operator"
APP_NAME: Final = "agent-runtime"
TRACK_LABEL: Final = "track"
TEMPLATE_HASH_ANNOTATION: Final = "agentops.dev/template-hash"
PROMOTE_ANNOTATION: Final = "agentops.dev/promote"
ABORT_ANNOTATION: Final = "agentops.dev/abort"
RETRY_ANNOTATION: Final = "agentops.dev/retry"  # start a rolled-back revision's rollout again

DNS_LABEL_MAX: Final = 63
DEPLOYMENT_NAME_MAX: Final = 46  # pod names keep their ReplicaSet's hash (module doc)
GRAFANA_UID_MAX: Final = 40  # Grafana refuses a longer dashboard uid
HASH_LENGTH: Final = 10  # hex digits of sha256: 40 bits, so two names collide about once in 10^12


Track = config.Track  # the runtime's own enum: what the pods read from AGENT_TRACK


class Component(StrEnum):
    API = "api"
    WORKER = "worker"


def fit(base: str, suffix: str = "", *, limit: int = DNS_LABEL_MAX) -> str:
    """`<base>-<suffix>` (`<base>` without a suffix) if it has at most `limit` characters; otherwise
    `<base cut short>-<hash>-<suffix>`, the hash being the first 10 hex digits of the sha256 of the
    whole name.

    The one rule that shortens a name: every child name and the dashboard's uid go through it.
    Deterministic, and distinct for distinct names (up to a collision of 40 bits of sha256). The
    cut part loses a trailing '-', so the name stays as valid as `base` and `suffix` are.
    """
    whole = f"{base}-{suffix}" if suffix else base
    if len(whole) <= limit:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:HASH_LENGTH]
    tail = f"-{digest}-{suffix}" if suffix else f"-{digest}"
    head = base[: limit - len(tail)].rstrip("-")
    if not head:
        raise ValueError(f"no room in {limit} characters for a part of {base!r} and {tail!r}")
    return head + tail


def deployment_name(service: str, component: Component, track: Track = Track.STABLE) -> str:
    """`<svc>-api`, `<svc>-worker`, and `-canary` suffixed for the canary track (at most 46 characters)."""
    suffix = component.value if track == Track.STABLE else f"{component.value}-canary"
    return fit(service, suffix, limit=DEPLOYMENT_NAME_MAX)


def api_service_name(service: str) -> str:
    """`<svc>-api`: the task API's Service (a DNS-1035 label)."""
    return fit(service, "api")


def config_map_name(service: str, track: Track = Track.STABLE) -> str:
    """`<svc>-config` for the stable track; the canary track reads its own `<svc>-config-canary`.

    During a rollout the canary runs the new configuration while stable keeps the old one, so the
    two tracks cannot share one ConfigMap.
    """
    return fit(service, "config" if track == Track.STABLE else "config-canary")


def auth_secret_name(service: str) -> str:
    return fit(service, "auth")


def dashboard_name(service: str) -> str:
    return fit(service, "dashboard")


def dashboard_uid(namespace: str, service: str) -> str:
    """The Grafana dashboard's uid, unique per AgentService: `agsvc-<namespace>_<svc>`, fitted to 40.

    `_` (which Grafana allows in a uid) appears in neither a namespace nor an AgentService name, so
    no two (namespace, name) pairs give the same string: with `-`, `team-a/x` and `team/a-x` did, and
    one tenant's dashboard replaced the other's.
    """
    return fit(f"agsvc-{namespace}_{service}", limit=GRAFANA_UID_MAX)


def prometheus_rule_name(service: str) -> str:
    return fit(service, "alerts")


def service_monitor_name(service: str) -> str:
    return fit(service, "runtime")


def network_policy_name(service: str) -> str:
    return fit(service, "ingress")


def instance_labels(service: str) -> dict[str, str]:
    """Labels that select everything belonging to one AgentService."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": service,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def standard_labels(service: str, component: str, app_version: str) -> dict[str, str]:
    """The `app.kubernetes.io/*` labels of one child (`app_version`: the runtime version the pods run)."""
    return {
        **instance_labels(service),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/version": app_version[:63],
    }


def selector_labels(service: str, component: Component, track: Track | None = None) -> dict[str, str]:
    """Immutable selector of a workload; without a track it matches both stable and canary pods."""
    labels = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": service,
        "app.kubernetes.io/component": component.value,
    }
    if track is not None:
        labels[TRACK_LABEL] = track.value
    return labels

"""Deterministic child names and the standard labels every child carries.

Names derive from the AgentService name only (never random), so a re-render finds the same
objects. The CRD caps AgentService names at 40 characters, which keeps every child name,
suffix included, within the 63-character label limit.
"""

from __future__ import annotations

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


Track = config.Track  # the runtime's own enum: what the pods read from AGENT_TRACK


class Component(StrEnum):
    API = "api"
    WORKER = "worker"


def deployment_name(service: str, component: Component, track: Track = Track.STABLE) -> str:
    """`<svc>-api`, `<svc>-worker`, and `-canary` suffixed for the canary track."""
    suffix = "" if track == Track.STABLE else "-canary"
    return f"{service}-{component.value}{suffix}"


def api_service_name(service: str) -> str:
    return f"{service}-api"


def config_map_name(service: str, track: Track = Track.STABLE) -> str:
    """`<svc>-config` for the stable track; the canary track reads its own `<svc>-config-canary`.

    During a rollout the canary runs the new configuration while stable keeps the old one, so the
    two tracks cannot share one ConfigMap.
    """
    return f"{service}-config" if track == Track.STABLE else f"{service}-config-canary"


def auth_secret_name(service: str) -> str:
    return f"{service}-auth"


def dashboard_name(service: str) -> str:
    return f"{service}-dashboard"


def prometheus_rule_name(service: str) -> str:
    return f"{service}-alerts"


def service_monitor_name(service: str) -> str:
    return f"{service}-runtime"


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

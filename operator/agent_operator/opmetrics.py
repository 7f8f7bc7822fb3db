"""The operator's own Prometheus metrics: reconciles, their duration, errors, API writes, canaries, budgets.

Every metric lives on an injected registry (tests build a fresh one and assert exact values);
labels are bounded (a result, an error class, a verb and a kind — never an object name).
"""

from __future__ import annotations

import dataclasses
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX: Final = "agentservice_operator"
CANARY_PREFIX: Final = "agentservice_canary"  # the Grafana dashboard reads `agentservice_canary_weight`
RESULTS: Final = ("ready", "progressing", "degraded", "invalid", "error")


@dataclasses.dataclass(frozen=True)
class Metrics:
    """The operator's metrics on one registry."""

    registry: CollectorRegistry
    reconciles: Counter
    reconcile_duration: Histogram
    errors: Counter
    writes: Counter
    services: Gauge
    canary_weight: Gauge
    promotions: Counter
    rollbacks: Counter
    analyses: Counter
    analysis_duration: Histogram
    budget_refreshes: Counter
    child_events: Counter
    repairs_pending: Gauge
    evaluation_accuracy: Gauge
    evaluations: Counter

    def exposition(self) -> bytes:
        """The text exposition format of the registry (the `/metrics` body)."""
        return generate_latest(self.registry)


def create(registry: CollectorRegistry | None = None) -> Metrics:
    """Register the operator's metrics on `registry` (a fresh one by default)."""
    registry = registry if registry is not None else CollectorRegistry()
    return Metrics(
        registry=registry,
        reconciles=Counter(
            f"{PREFIX}_reconciles_total",
            "Reconciles of AgentServices, by outcome.",
            ["result"],
            registry=registry,
        ),
        reconcile_duration=Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Wall-clock time of one reconcile.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        ),
        errors=Counter(
            f"{PREFIX}_errors_total",
            "Reconcile errors, by class (transient API fault, invalid spec, unexpected).",
            ["kind"],
            registry=registry,
        ),
        writes=Counter(
            f"{PREFIX}_api_writes_total",
            "Write calls made to the Kubernetes API, by verb and object kind.",
            ["verb", "kind"],
            registry=registry,
        ),
        services=Gauge(
            f"{PREFIX}_agentservices",
            "AgentServices the operator currently holds.",
            registry=registry,
        ),
        # One series per AgentService (the dashboard's canary panel); removed when it is deleted.
        canary_weight=Gauge(
            f"{CANARY_PREFIX}_weight",
            "Desired canary weight in percent (0 when no rollout is active).",
            ["service", "namespace"],
            registry=registry,
        ),
        promotions=Counter(
            f"{CANARY_PREFIX}_promotions_total",
            "Canary revisions promoted to stable, by reason (AnalysisPassed, PromotedByAnnotation, ...).",
            ["reason"],
            registry=registry,
        ),
        rollbacks=Counter(
            f"{CANARY_PREFIX}_rollbacks_total",
            "Canary rollouts rolled back or cancelled, by reason (FailureLimitReached, Aborted, Reverted).",
            ["reason"],
            registry=registry,
        ),
        analyses=Counter(
            f"{CANARY_PREFIX}_analyses_total",
            "Canary analyses run, by verdict (success, failure, inconclusive, error).",
            ["verdict"],
            registry=registry,
        ),
        analysis_duration=Histogram(
            f"{CANARY_PREFIX}_analysis_duration_seconds",
            "Wall-clock time of one canary analysis (every Prometheus query of it).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        ),
        budget_refreshes=Counter(
            f"{PREFIX}_budget_refreshes_total",
            "Refreshes of status.budget, by outcome (measured, no_data, error, not_configured).",
            ["result"],
            registry=registry,
        ),
        child_events=Counter(
            f"{PREFIX}_child_events_total",
            "Changes of owned children seen by the watches that asked for their AgentService's reconcile, by kind.",
            ["kind"],
            registry=registry,
        ),
        repairs_pending=Gauge(
            f"{PREFIX}_repairs_pending",
            "AgentServices whose reconcile a child change asked for and that is not done yet (the repair backlog).",
            registry=registry,
        ),
        # Suite names come from the spec, bounded by spec.evaluation.suites (at most 20 per service).
        evaluation_accuracy=Gauge(
            "agentservice_evaluation_accuracy",
            "Weighted accuracy of the latest finished evaluation of a suite against a candidate.",
            ["service", "namespace", "suite"],
            registry=registry,
        ),
        evaluations=Counter(
            "agentservice_evaluations_total",
            "Evaluation Jobs finished, by verdict (pass, fail, inconclusive).",
            ["verdict"],
            registry=registry,
        ),
    )

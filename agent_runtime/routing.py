"""Model routing: which provider a model call goes to first, chosen per call. Pure.

`spec.model.routing` (docs/costs.md), as `config.RoutingConfig`:

1. **Budget fallback** first: while the day's remaining budget is under `fallback_below_usd`,
   every new call goes to `fallback_provider` (route `fallback`), whatever the task.
2. **Rules**, first match: a rule matches when each field it sets equals the task's — its
   `complexity` (`metadata.complexity`, or the classifier's label) and `metadata.intent`. Route:
   the rule's name.
3. **Default**: the `default` provider (route `default`); unset, the strategy's order as without
   routing.

The chosen provider is tried first; the call's failover then goes on to the others in the
strategy's order (`ProviderSet.complete(prefer=…)`), so a dead routed provider does not fail the
task. A task without a complexity, when `classifier` is set, is labelled once by one call to
that provider (`CLASSIFIER_SYSTEM`): the label is kept in the checkpoint, the call charged to the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent_runtime.config import RoutingConfig

__all__ = [
    "CLASSIFIER_ROUTE",
    "CLASSIFIER_SYSTEM",
    "COMPLEXITIES",
    "DEFAULT_ROUTE",
    "FALLBACK_ROUTE",
    "Route",
    "choose",
    "complexity_of",
    "label_of",
]

COMPLEXITIES: Final = ("simple", "medium", "complex")
DEFAULT_ROUTE: Final = "default"
FALLBACK_ROUTE: Final = "fallback"
CLASSIFIER_ROUTE: Final = "classifier"
CLASSIFIER_MAX_TOKENS: Final = 8
# The classifier's whole instruction: the task comes as the user message, the answer is one word.
CLASSIFIER_SYSTEM: Final = (
    "Classify the complexity of the user's task for routing. Answer with exactly one word: simple, medium or complex."
)


@dataclass(frozen=True)
class Route:
    """A call's route: its name (the metric label) and the provider tried first (None: the strategy's order)."""

    name: str
    provider: str | None


def complexity_of(metadata: Mapping[str, Any]) -> str | None:
    """The task's own `metadata.complexity`, if it is one of `COMPLEXITIES`. Pure."""
    value = metadata.get("complexity")
    return value if isinstance(value, str) and value in COMPLEXITIES else None


def label_of(reply_text: str) -> str:
    """The classifier's answer as a complexity: its first known word, else `medium`. Pure."""
    for word in reply_text.lower().replace(".", " ").replace(",", " ").split():
        if word in COMPLEXITIES:
            return word
    return "medium"


def choose(
    routing: RoutingConfig | None, *, complexity: str | None, intent: object, remaining_usd: float | None
) -> Route:
    """The route of the next call. Pure.

    `remaining_usd`: what the day's budget has left (None without a daily budget).
    """
    if routing is None:
        return Route(DEFAULT_ROUTE, None)
    if (
        routing.fallback_provider is not None
        and routing.fallback_below_usd is not None
        and remaining_usd is not None
        and remaining_usd < routing.fallback_below_usd
    ):
        return Route(FALLBACK_ROUTE, routing.fallback_provider)
    for rule in routing.rules:
        if rule.complexity is not None and rule.complexity != complexity:
            continue
        if rule.intent is not None and rule.intent != intent:
            continue
        return Route(rule.name, rule.provider)
    return Route(DEFAULT_ROUTE, routing.default)

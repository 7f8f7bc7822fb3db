"""Graceful degradation: the service level the providers' circuit states allow. Pure.

- `full` (0): every circuit closed. All tools, every provider.
- `reduced_tools` (1): some circuit not closed, the primary's closed. Only
  `RuntimeConfig.degraded_tools` are offered: fewer tool round trips, so fewer model calls per task
  while capacity is short.
- `fallback_only` (2): the primary's circuit open. Reduced tools, and only the fallback providers
  are called (open circuits are skipped).
- `static` (3): no circuit can take a call. No model call at all: the task fails at once with
  `all providers unavailable` and an honest static message as its result.

The primary is the first provider in the configured order (the order of preference). The level is
exported as `agent_degradation_level` and each task records the worst level it ran at.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from agent_runtime.breaker import BreakerState

__all__ = ["STATIC_MESSAGE", "Level", "level_of"]

STATIC_MESSAGE = (
    "This service cannot reach any of its language-model providers right now, so your task was not "
    "attempted and nothing was charged. Please submit it again in a few minutes."
)


class Level(IntEnum):
    FULL = 0
    REDUCED_TOOLS = 1
    FALLBACK_ONLY = 2
    STATIC = 3

    @property
    def label(self) -> str:
        return self.name.lower()


def level_of(states: Sequence[BreakerState]) -> Level:
    """The level for the providers' observed circuit states, primary first."""
    if not states or all(state == BreakerState.OPEN for state in states):
        return Level.STATIC
    if states[0] == BreakerState.OPEN:
        return Level.FALLBACK_ONLY
    if any(state != BreakerState.CLOSED for state in states):
        return Level.REDUCED_TOOLS
    return Level.FULL

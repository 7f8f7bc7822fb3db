"""Circuit breakers, one per provider: a pure state machine driven by call outcomes and a clock value.

closed ──(`failure_threshold` consecutive failures)──► open ──(`cooldown_seconds`)──► half-open
half-open lets exactly one probe call through: its success closes the circuit, its failure opens it
again for another cool-down. A probe that never reports back (its caller was cancelled) is given up
after `probe_timeout_seconds`, so a lost probe cannot wedge the circuit half-open.

State is per process, on purpose. Each replica sees the failures of its own calls within a few
calls under load, so the fleet converges quickly without a Redis round trip on every model call,
and a Redis outage cannot take the breakers down with it. The cost: after a cool-down each
replica sends its own probe (one per replica, not one per fleet). What must be shared — the
provider's own `retry-after` — is shared, by `ratelimit.py`'s backoff key.

Only `ProviderUnavailable` failures other than 429 count (5xx, timeouts, connection errors): a 429
is the provider's rate limit, handled by the shared backoff, and a malformed or rejected request
says nothing about the provider's health. No I/O here: callers pass `now` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Breaker", "BreakerState"]


class BreakerState(IntEnum):
    """Exported as the metric value of `llm_circuit_state`."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class Breaker:
    """One provider's circuit."""

    failure_threshold: int = 5
    cooldown_seconds: float = 30.0
    probe_timeout_seconds: float = 120.0  # a probe silent this long is given up (the provider call timeout)
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive failures while closed
    opened_at: float = 0.0
    probe_started: float | None = None  # when the half-open probe went out, if one is in flight

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.cooldown_seconds < 0:
            raise ValueError("cooldown_seconds must not be negative")

    def available(self, now: float) -> bool:
        """Whether a call could go through now (without taking the probe)."""
        if self.state == BreakerState.CLOSED:
            return True
        if self.state == BreakerState.OPEN:
            return now - self.opened_at >= self.cooldown_seconds
        return self._probe_lost(now)

    def allow(self, now: float) -> bool:
        """Ask to make a call now; in half-open, only the first asker (the probe) gets a yes."""
        if self.state == BreakerState.CLOSED:
            return True
        if not self.available(now):
            return False
        self.state = BreakerState.HALF_OPEN
        self.probe_started = now
        return True

    def record_success(self, now: float) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.probe_started = None

    def record_failure(self, now: float) -> None:
        if self.state == BreakerState.HALF_OPEN:
            self._open(now)
            return
        if self.state == BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._open(now)

    def observed_state(self, now: float) -> BreakerState:
        """The state as a dashboard should show it: an open circuit past its cool-down reads half-open."""
        if self.state == BreakerState.OPEN and self.available(now):
            return BreakerState.HALF_OPEN
        return self.state

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.failures = 0
        self.probe_started = None

    def _probe_lost(self, now: float) -> bool:
        return self.probe_started is None or now - self.probe_started >= self.probe_timeout_seconds

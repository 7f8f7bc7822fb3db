"""Circuit breakers, one per provider: the pure decision, driven by call outcomes and a clock value.

closed ──(`failure_threshold` consecutive failures)──► open ──(`cooldown_seconds`)──► half-open
half-open lets exactly one probe call through: its success closes the circuit, its failure opens it
again for another cool-down. A probe that never reports back (its caller was cancelled, its process
killed) is given up after `probe_timeout_seconds`, so a lost probe cannot wedge the circuit half-open.

The state is a value (`Circuit`) and every step a function of it: `decide` (may I call? allow, deny
or probe) and `record` (a call's outcome: success, failure, or release when the call says nothing
about the provider's health). `circuits.py` keeps that value in Redis for every replica of a
service, in one Lua script that mirrors these functions (the two are tested against each other on
the same sequences), and in each process as the fallback while Redis cannot be reached (`Breaker`).

Who reports matters only in half-open: each asker passes a token, the probe's token is kept, and
only the probe's own failure (or release) acts on the half-open circuit. A failure reported by a
call admitted before the circuit opened is old news — the circuit already opened on such failures —
so it neither re-opens a half-open circuit nor extends an open one. A success from any call closes
the circuit: the provider has just answered.

Only `ProviderUnavailable` failures other than 429 count (5xx, timeouts, connection errors): a 429
is the provider's rate limit, handled by the shared backoff, and a malformed or rejected request
says nothing about the provider's health. No I/O here: callers pass `now` (seconds of their clock).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum

__all__ = ["Breaker", "BreakerState", "Circuit", "Decision", "Outcome", "Policy", "View", "decide", "record", "view"]


class BreakerState(IntEnum):
    """Exported as the metric value of `llm_circuit_state` (and stored as such in Redis)."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Decision(StrEnum):
    """The answer to "may I call this provider now?"."""

    ALLOW = "allow"  # closed: go
    DENY = "deny"  # open and cooling down, or half-open with someone else's probe in flight
    PROBE = "probe"  # go, as the one probe of a half-open circuit (report back with the same token)


class Outcome(StrEnum):
    """What a call that went out says about the provider."""

    SUCCESS = "success"  # it answered
    FAILURE = "failure"  # 5xx, timeout, connection error
    RELEASE = "release"  # no verdict (429, malformed reply, cancelled): a probe hands its turn back


@dataclass(frozen=True)
class Policy:
    """A circuit's settings."""

    failure_threshold: int = 5
    cooldown_seconds: float = 30.0
    probe_timeout_seconds: float = 120.0  # a probe silent this long is given up (the provider call timeout)

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.cooldown_seconds < 0:
            raise ValueError("cooldown_seconds must not be negative")
        if self.probe_timeout_seconds <= 0:
            raise ValueError("probe_timeout_seconds must be positive")


@dataclass(frozen=True)
class Circuit:
    """One provider's circuit; the initial value is closed with no failures (also: no key in Redis)."""

    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive failures while closed
    opened_at: float = 0.0
    probe: str = ""  # token of the half-open probe in flight ("" when none)
    probe_started: float = 0.0


@dataclass(frozen=True)
class View:
    """What a caller knows of a circuit: its state and from when a call could go again (its clock)."""

    state: BreakerState = BreakerState.CLOSED
    ready_at: float = -math.inf  # open: end of the cool-down; half-open with a probe out: its timeout

    def available(self, now: float) -> bool:
        """Whether a call could go through now (closed, cool-down over, or no live probe)."""
        return self.state == BreakerState.CLOSED or now >= self.ready_at

    def observed(self, now: float) -> BreakerState:
        """The state as a dashboard should show it: an open circuit past its cool-down reads half-open."""
        if self.state == BreakerState.OPEN and now >= self.ready_at:
            return BreakerState.HALF_OPEN
        return self.state

    def wait(self, now: float) -> float:
        """Seconds until a call could go (0 when one could now)."""
        return 0.0 if self.available(now) else self.ready_at - now


def decide(policy: Policy, circuit: Circuit, now: float, token: str) -> tuple[Decision, Circuit]:
    """May a call go now? In half-open only one asker at a time gets `PROBE` (its token is kept)."""
    if not token:
        raise ValueError("token must not be empty: an empty probe token means no probe in flight")
    if circuit.state == BreakerState.CLOSED:
        return Decision.ALLOW, circuit
    if circuit.state == BreakerState.OPEN and now - circuit.opened_at < policy.cooldown_seconds:
        return Decision.DENY, circuit
    if (
        circuit.state == BreakerState.HALF_OPEN
        and circuit.probe
        and now - circuit.probe_started < policy.probe_timeout_seconds
    ):
        return Decision.DENY, circuit
    return Decision.PROBE, replace(circuit, state=BreakerState.HALF_OPEN, probe=token, probe_started=now)


def record(policy: Policy, circuit: Circuit, outcome: Outcome, now: float, token: str) -> Circuit:
    """The circuit after a call (asked for with `token`) ended with `outcome`."""
    if outcome == Outcome.SUCCESS:
        return Circuit()
    mine = circuit.state == BreakerState.HALF_OPEN and circuit.probe == token
    if outcome == Outcome.RELEASE:
        return replace(circuit, probe="", probe_started=0.0) if mine else circuit
    if circuit.state == BreakerState.CLOSED:
        if circuit.failures + 1 >= policy.failure_threshold:
            return Circuit(state=BreakerState.OPEN, opened_at=now)
        return replace(circuit, failures=circuit.failures + 1)
    if mine:
        return Circuit(state=BreakerState.OPEN, opened_at=now)
    return circuit  # a late failure of a call sent before the circuit opened


def view(policy: Policy, circuit: Circuit, now: float) -> View:
    """The circuit as callers see it (`View`); `now` is when it was read."""
    if circuit.state == BreakerState.OPEN:
        return View(BreakerState.OPEN, circuit.opened_at + policy.cooldown_seconds)
    if circuit.state == BreakerState.HALF_OPEN:
        ready = circuit.probe_started + policy.probe_timeout_seconds if circuit.probe else now
        return View(BreakerState.HALF_OPEN, ready)
    return View()


@dataclass
class Breaker:
    """One provider's circuit held in this process (the per-process breaker; `circuits.py` uses it too)."""

    policy: Policy = Policy()
    circuit: Circuit = Circuit()

    def ask(self, now: float, token: str) -> Decision:
        decision, self.circuit = decide(self.policy, self.circuit, now, token)
        return decision

    def record(self, outcome: Outcome, now: float, token: str) -> None:
        self.circuit = record(self.policy, self.circuit, outcome, now, token)

    def view(self, now: float) -> View:
        return view(self.policy, self.circuit, now)

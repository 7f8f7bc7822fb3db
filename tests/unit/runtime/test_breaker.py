"""The circuit breaker state machine (pure; the clock is a number passed in).

Covers: closed until `failure_threshold` consecutive failures (a success resets the count); open
refuses calls until the cool-down has passed; half-open lets exactly one probe through; the probe's
success closes, its failure re-opens for a fresh cool-down; a lost probe is given up after the probe
timeout; the observed state reads half-open once an open circuit's cool-down is over; bad settings
are refused; a hypothesis property: whatever the sequence of events, at most one probe is in flight.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_runtime.breaker import Breaker, BreakerState


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = Breaker(failure_threshold=3, cooldown_seconds=10)
    breaker.record_failure(0)
    breaker.record_failure(1)
    breaker.record_success(2)  # resets the streak
    breaker.record_failure(3)
    breaker.record_failure(4)
    assert state(breaker) == BreakerState.CLOSED and breaker.allow(4)
    breaker.record_failure(5)
    assert state(breaker) == BreakerState.OPEN
    assert not breaker.allow(5) and not breaker.allow(14.9)
    assert breaker.observed_state(14.9) == BreakerState.OPEN


def test_half_open_single_probe_then_close() -> None:
    breaker = Breaker(failure_threshold=1, cooldown_seconds=10)
    breaker.record_failure(0)
    assert breaker.observed_state(10) == BreakerState.HALF_OPEN  # cool-down over: a probe may go
    assert breaker.available(10)
    assert breaker.allow(10)  # the probe
    assert state(breaker) == BreakerState.HALF_OPEN
    assert not breaker.allow(10.1) and not breaker.available(10.1)  # only one probe
    breaker.record_success(11)
    assert state(breaker) == BreakerState.CLOSED and breaker.allow(11) and breaker.allow(11)


def test_failed_probe_reopens_for_a_fresh_cooldown() -> None:
    breaker = Breaker(failure_threshold=2, cooldown_seconds=5)
    breaker.record_failure(0)
    breaker.record_failure(0)
    assert breaker.allow(5)
    breaker.record_failure(6)
    assert state(breaker) == BreakerState.OPEN and breaker.opened_at == 6
    assert not breaker.allow(10.9)
    assert breaker.allow(11)


def test_lost_probe_is_given_up_after_probe_timeout() -> None:
    breaker = Breaker(failure_threshold=1, cooldown_seconds=1, probe_timeout_seconds=20)
    breaker.record_failure(0)
    assert breaker.allow(1)  # the probe's caller is then cancelled and never reports
    assert not breaker.allow(20.9)
    assert breaker.allow(21)  # a new probe


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        Breaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown_seconds"):
        Breaker(cooldown_seconds=-1)


def state(breaker: Breaker) -> BreakerState:
    """The current state, read through a call (keeps mypy from narrowing it between transitions)."""
    return breaker.state


_EVENT = st.sampled_from(["allow", "success", "failure", "tick"])


@given(st.lists(_EVENT, max_size=60), st.integers(min_value=1, max_value=4))
def test_at_most_one_probe_in_flight(events: list[str], threshold: int) -> None:
    breaker = Breaker(failure_threshold=threshold, cooldown_seconds=3, probe_timeout_seconds=100)
    now = 0.0
    probes = 0  # probes granted and not yet reported
    for event in events:
        if event == "tick":
            now += 1
        elif event == "allow":
            was_half_open = state(breaker) != BreakerState.CLOSED
            if breaker.allow(now) and was_half_open:
                probes += 1
        elif event == "success":
            breaker.record_success(now)
            probes = 0
        else:
            breaker.record_failure(now)
            if state(breaker) == BreakerState.OPEN:
                probes = 0
        assert probes <= 1
        assert state(breaker) in BreakerState

"""The circuit breaker's pure decision (`decide`, `record`, `view`; the clock is a number passed in).

Covers: closed until `failure_threshold` consecutive failures (a success resets the count); open
denies until the cool-down has passed; half-open gives exactly one asker the probe; the probe's
success closes, its failure re-opens for a fresh cool-down; a late failure of a call sent before
the circuit opened neither re-opens a half-open circuit nor extends an open one; a success from
any call closes; a probe hands its turn back with `release` (nobody else's release counts); a lost
probe is given up after the probe timeout; the view reads half-open once an open circuit's
cool-down is over, with the wait until a call could go; bad settings and an empty token are
refused; the per-process `Breaker` holds the value; a hypothesis property: whatever the sequence
of asks and reports, at most one probe is live at a time.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_runtime.breaker import (
    Breaker,
    BreakerState,
    Circuit,
    Decision,
    Outcome,
    Policy,
    View,
    decide,
    record,
    view,
)

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
ALLOW, DENY, PROBE = Decision.ALLOW, Decision.DENY, Decision.PROBE
SUCCESS, FAILURE, RELEASE = Outcome.SUCCESS, Outcome.FAILURE, Outcome.RELEASE


def test_opens_after_threshold_consecutive_failures() -> None:
    policy = Policy(failure_threshold=3, cooldown_seconds=10)
    circuit = Circuit()
    for now, outcome in ((0, FAILURE), (1, FAILURE), (2, SUCCESS), (3, FAILURE), (4, FAILURE)):
        circuit = record(policy, circuit, outcome, now, "t")
    assert circuit == Circuit(failures=2)  # the success reset the streak
    assert decide(policy, circuit, 4, "t") == (ALLOW, circuit)
    circuit = record(policy, circuit, FAILURE, 5, "t")
    assert circuit == Circuit(state=OPEN, opened_at=5)
    assert decide(policy, circuit, 5, "a")[0] == DENY
    assert decide(policy, circuit, 14.9, "a") == (DENY, circuit)
    assert view(policy, circuit, 14.9) == View(OPEN, 15)
    assert view(policy, circuit, 14.9).observed(14.9) == OPEN


def test_half_open_gives_one_probe_then_closes() -> None:
    policy = Policy(failure_threshold=1, cooldown_seconds=10)
    circuit = record(policy, Circuit(), FAILURE, 0, "t")
    seen = view(policy, circuit, 10)
    assert seen.observed(10) == HALF_OPEN and seen.available(10) and seen.wait(10) == 0  # a probe may go
    decision, circuit = decide(policy, circuit, 10, "probe")
    assert decision == PROBE and circuit == Circuit(state=HALF_OPEN, opened_at=0, probe="probe", probe_started=10)
    assert decide(policy, circuit, 10.1, "other") == (DENY, circuit)  # only one probe
    assert not view(policy, circuit, 10.1).available(10.1)
    circuit = record(policy, circuit, SUCCESS, 11, "probe")
    assert circuit == Circuit() and decide(policy, circuit, 11, "x")[0] == ALLOW


def test_failed_probe_reopens_for_a_fresh_cooldown() -> None:
    policy = Policy(failure_threshold=2, cooldown_seconds=5)
    circuit = record(policy, record(policy, Circuit(), FAILURE, 0, "a"), FAILURE, 0, "b")
    decision, circuit = decide(policy, circuit, 5, "probe")
    assert decision == PROBE
    circuit = record(policy, circuit, FAILURE, 6, "probe")
    assert circuit == Circuit(state=OPEN, opened_at=6)
    assert decide(policy, circuit, 10.9, "x")[0] == DENY
    assert decide(policy, circuit, 11, "x")[0] == PROBE


def test_late_failures_of_calls_sent_before_the_opening_are_old_news() -> None:
    policy = Policy(failure_threshold=1, cooldown_seconds=5)
    opened = record(policy, Circuit(), FAILURE, 0, "first")
    assert record(policy, opened, FAILURE, 3, "late") == opened  # the cool-down is not extended
    _, probing = decide(policy, opened, 5, "probe")
    assert record(policy, probing, FAILURE, 6, "late") == probing  # not the probe: it stays half-open
    assert record(policy, probing, SUCCESS, 6, "late") == Circuit()  # any success: the provider answered


def test_only_the_probe_hands_its_turn_back() -> None:
    policy = Policy(failure_threshold=1, cooldown_seconds=1)
    _, probing = decide(policy, record(policy, Circuit(), FAILURE, 0, "a"), 1, "probe")
    assert record(policy, probing, RELEASE, 2, "other") == probing
    released = record(policy, probing, RELEASE, 2, "probe")
    assert released == Circuit(state=HALF_OPEN, opened_at=0)
    assert view(policy, released, 2) == View(HALF_OPEN, 2)
    assert decide(policy, released, 2, "next")[0] == PROBE
    assert record(policy, Circuit(failures=1), RELEASE, 2, "x") == Circuit(failures=1)  # closed: nothing


def test_lost_probe_is_given_up_after_probe_timeout() -> None:
    policy = Policy(failure_threshold=1, cooldown_seconds=1, probe_timeout_seconds=20)
    _, circuit = decide(policy, record(policy, Circuit(), FAILURE, 0, "a"), 1, "lost")  # its caller never reports
    assert decide(policy, circuit, 20.9, "b")[0] == DENY
    assert view(policy, circuit, 20.9).wait(20.9) == pytest.approx(0.1)
    decision, circuit = decide(policy, circuit, 21, "c")
    assert decision == PROBE and circuit.probe == "c"
    assert record(policy, circuit, FAILURE, 22, "lost") == circuit  # the lost one reports at last: ignored


def test_rejects_bad_settings_and_an_empty_token() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        Policy(failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown_seconds"):
        Policy(cooldown_seconds=-1)
    with pytest.raises(ValueError, match="probe_timeout_seconds"):
        Policy(probe_timeout_seconds=0)
    with pytest.raises(ValueError, match="token"):
        decide(Policy(), Circuit(state=OPEN), 100, "")


def test_breaker_holds_the_value() -> None:
    breaker = Breaker(Policy(failure_threshold=1, cooldown_seconds=2))
    assert breaker.ask(0, "a") == ALLOW
    breaker.record(FAILURE, 0, "a")
    assert breaker.circuit == Circuit(state=OPEN, opened_at=0)
    assert breaker.ask(1, "b") == DENY and breaker.view(1).observed(1) == OPEN
    assert breaker.ask(2, "c") == PROBE and breaker.ask(2, "d") == DENY
    breaker.record(SUCCESS, 3, "c")
    assert breaker.circuit == Circuit() and breaker.view(3) == View()


_STEP = st.tuples(
    st.sampled_from(["ask", "success", "failure", "release", "tick"]),
    st.integers(min_value=0, max_value=3),  # which caller: a token among a few
)


@given(st.lists(_STEP, max_size=80), st.integers(min_value=1, max_value=4))
def test_at_most_one_probe_is_live(steps: list[tuple[str, int]], threshold: int) -> None:
    policy = Policy(failure_threshold=threshold, cooldown_seconds=3, probe_timeout_seconds=5)
    circuit = Circuit()
    now = 0
    live: dict[str, int] = {}  # probes granted and not reported, by token → when granted
    serial = 0
    for step, caller in steps:
        if step == "tick":
            now += 1
            continue
        if step == "ask":
            serial += 1
            token = f"{caller}-{serial}"
            decision, circuit = decide(policy, circuit, now, token)
            if decision == PROBE:
                live[token] = now
        else:
            tokens = [t for t in live if t.startswith(f"{caller}-")] or [f"{caller}-stale"]
            circuit = record(policy, circuit, Outcome(step), now, tokens[0])
            live.pop(tokens[0], None)
        within_timeout = [t for t, granted in live.items() if now - granted < policy.probe_timeout_seconds]
        assert len(within_timeout) <= 1
        assert circuit.state in BreakerState
        assert (circuit.state == HALF_OPEN) or not circuit.probe  # a probe token only while half-open
        assert circuit.failures < threshold

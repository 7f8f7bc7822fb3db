"""A provider's circuit as the call path uses it: shared by every replica of the service through Redis, or per process.

`SharedCircuit` keeps one provider's `breaker.Circuit` in a Redis hash (`ServiceKeys.breaker`,
`agent:{<namespace>/<service>}:breaker:<provider>`), changed only by `_SCRIPT`: one atomic Lua
script per question or report (`ask` → allow / deny / probe; `success`, `failure`, `release`;
`peek` reads). The script mirrors `breaker.decide` and `breaker.record` line for line and runs on
Redis's own clock (`TIME`), so replicas need no synchronised clocks and agree on every transition:
the fleet opens a dead provider's circuit after `failure_threshold` failures *in all*, not per
replica, and sends one probe per cool-down in all. Without sharing, each of N replicas pays its
own threshold and sends its own probes (bench/RESULTS.md, "Circuit breakers").

What a dead provider costs the fleet: every call is admitted while the circuit is closed, so calls
already in flight when the threshold is reached still go out (they were sent before anyone knew).
At most `failure_threshold - 1 + C` calls fail before it opens, C being the calls the whole fleet
has in flight at once (worker replicas times concurrency), then one probe per cool-down. A closed
circuit does not cap concurrency: that would throttle a healthy provider.

Each call costs one round trip to ask and one to report a success or failure (`bench/breakers.py`);
a success must be reported even on a closed circuit, since it resets the fleet's failure count.

**Redis unavailable.** When a script call fails with `StoreUnavailable` the circuit falls back to
this process's own breaker (`breaker.Breaker`, fed every outcome all along, so it starts from what
this process saw) and logs it once; Redis is tried again after `retry_seconds`, and its return is
logged once too. During the outage the guarantees are the per-process ones. A probe whose report
could not reach Redis is given up by the fleet after `probe_timeout_seconds`.

The state last read from Redis (every script call answers with it) is what `view()` returns, for
the degradation level and the `llm_circuit_state` gauge; `refresh()` (the worker's periodic
refresh and each scrape) re-reads it, so a replica that sends nothing still shows the fleet's state.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

from agent_runtime import errors
from agent_runtime.breaker import Breaker, BreakerState, Decision, Outcome, Policy, View
from agent_runtime.logging import get_logger
from agent_runtime.scripts import run_script

__all__ = ["LocalCircuit", "Permit", "ProviderCircuit", "Reply", "SharedCircuit", "circuit_script", "run_op"]

log = get_logger(__name__)

_MICROS = 1_000_000
_DAY_MS = 86_400_000

# KEYS: the provider's breaker hash (fields: state, failures, opened_at, probe, probe_started; times in µs)
# ARGV: op (ask|success|failure|release|peek), token, failure threshold, cool-down µs, probe timeout µs,
#       key TTL ms, now µs ('' = Redis TIME; tests pass a fixed clock to replay the pure functions)
# Returns {decision ('' unless op is ask), state (0 closed, 1 half-open, 2 open), failures, µs until a call could go}
# A closed circuit with no failures is no key at all: a success deletes it.
_SCRIPT = """
local now
if ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local op, token = ARGV[1], ARGV[2]
local threshold, cooldown, probe_timeout = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'opened_at', 'probe', 'probe_started')
local state, failures = tonumber(h[1] or 0), tonumber(h[2] or 0)
local opened, probe, started = tonumber(h[3] or 0), h[4] or '', tonumber(h[5] or 0)
local decision, changed = '', false
if op == 'ask' then
  if state == 0 then
    decision = 'allow'
  elseif state == 2 and now - opened < cooldown then
    decision = 'deny'
  elseif state == 1 and probe ~= '' and now - started < probe_timeout then
    decision = 'deny'
  else
    state, probe, started, decision, changed = 1, token, now, 'probe', true
  end
elseif op == 'success' then
  state, failures, opened, probe, started, changed = 0, 0, 0, '', 0, h[1] ~= false
elseif op ~= 'peek' then
  local mine = state == 1 and probe == token
  if op == 'release' then
    if mine then probe, started, changed = '', 0, true end
  elseif state == 0 then
    if failures + 1 >= threshold then
      state, failures, opened, probe, started = 2, 0, now, '', 0
    else
      failures = failures + 1
    end
    changed = true
  elseif mine then
    state, failures, opened, probe, started, changed = 2, 0, now, '', 0, true
  end
end
if changed then
  if state == 0 and failures == 0 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('HSET', KEYS[1], 'state', state, 'failures', failures, 'opened_at', string.format('%.0f', opened),
      'probe', probe, 'probe_started', string.format('%.0f', started))
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
  end
end
local left = 0
if state == 2 then
  left = math.max(opened + cooldown - now, 0)
elseif state == 1 and probe ~= '' then
  left = math.max(started + probe_timeout - now, 0)
end
return {decision, state, failures, string.format('%.0f', left)}
"""


@dataclass(frozen=True)
class Permit:
    """The answer to one `ask`: the decision, the token to report with, and who decided (Redis or this process)."""

    decision: Decision
    token: str
    shared: bool


@dataclass(frozen=True)
class Reply:
    """What the script answered: its decision (for `ask`), and the circuit after it."""

    decision: Decision | None
    state: BreakerState
    failures: int
    wait_seconds: float  # until a call could go (0 when one could now)


class ProviderCircuit(Protocol):
    """One provider's circuit, as `providers.ProviderSet` uses it (the same clock as the caller's)."""

    async def ask(self) -> Permit: ...

    async def record(self, permit: Permit, outcome: Outcome) -> None: ...

    async def refresh(self) -> None: ...

    def view(self) -> View: ...


class LocalCircuit:
    """The per-process breaker (`breaker.Breaker`) behind the `ProviderCircuit` interface."""

    def __init__(self, policy: Policy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.breaker = Breaker(policy)
        self._clock = clock
        self._tokens = itertools.count(1)

    @property
    def policy(self) -> Policy:
        return self.breaker.policy

    async def ask(self) -> Permit:
        token = f"local-{next(self._tokens)}"
        return Permit(self.breaker.ask(self._clock(), token), token, shared=False)

    async def record(self, permit: Permit, outcome: Outcome) -> None:
        self.breaker.record(outcome, self._clock(), permit.token)

    async def refresh(self) -> None:
        return None

    def view(self) -> View:
        return self.breaker.view(self._clock())


def circuit_script(redis_client: redis.asyncio.Redis) -> AsyncScript:
    """Register the circuit script on a client."""
    return redis_client.register_script(_SCRIPT)


async def run_op(
    script: AsyncScript,
    key: str,
    op: str,
    *,
    policy: Policy,
    token: str = "",
    now_us: int | None = None,
) -> Reply:
    """Run one circuit operation in Redis (`now_us` None: Redis's clock); `StoreUnavailable` if Redis cannot."""
    args: list[str | int] = [
        op,
        token,
        policy.failure_threshold,
        round(policy.cooldown_seconds * _MICROS),
        round(policy.probe_timeout_seconds * _MICROS),
        _ttl_ms(policy),
        "" if now_us is None else now_us,
    ]
    try:
        decision, state, failures, left = await run_script(script, [key], args)
    except redis.exceptions.RedisError as exc:
        raise errors.from_redis(exc) from exc
    return Reply(
        decision=Decision(decision) if decision else None,
        state=BreakerState(int(state)),
        failures=int(failures),
        wait_seconds=int(left) / _MICROS,
    )


def _ttl_ms(policy: Policy) -> int:
    """How long an untouched circuit is kept: a day, or twice a cool-down and a probe if that is longer.

    Only a circuit that nobody asked about for that long expires (back to closed); its state is
    worthless by then, and a deleted service leaves nothing behind for ever.
    """
    return max(_DAY_MS, round(2 * (policy.cooldown_seconds + policy.probe_timeout_seconds) * 1000))


class SharedCircuit:
    """One provider's circuit in Redis for the whole service; this process's own breaker while Redis is away."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis,
        *,
        key: str,
        provider: str,
        policy: Policy,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = 1.0,
    ) -> None:
        self.key = key
        self.provider = provider
        self.policy = policy
        self.fallback = LocalCircuit(policy, clock=clock)
        self.retry_seconds = retry_seconds
        self._script = circuit_script(redis_client)
        self._clock = clock
        self._view = View()
        self._shared = True  # False from a failed script call until one succeeds again
        self._retry_at = 0.0

    @property
    def shared(self) -> bool:
        """Whether the last word came from Redis (False: this process decides on its own for now)."""
        return self._shared

    async def ask(self) -> Permit:
        token = uuid.uuid4().hex
        if self._redis_worth_trying():
            reply = await self._run("ask", token)
            if reply is not None and reply.decision is not None:
                return Permit(reply.decision, token, shared=True)
        return Permit(self.fallback.breaker.ask(self._clock(), token), token, shared=False)

    async def record(self, permit: Permit, outcome: Outcome) -> None:
        # The process's own breaker hears every outcome, so a fallback starts from what this process saw.
        self.fallback.breaker.record(outcome, self._clock(), permit.token)
        if outcome == Outcome.RELEASE and not (permit.shared and permit.decision == Decision.PROBE):
            return  # releasing is only the shared probe handing its turn back: nothing to tell
        if self._redis_worth_trying():
            await self._run(outcome.value, permit.token)

    async def refresh(self) -> None:
        if self._redis_worth_trying():
            await self._run("peek", "")

    def view(self) -> View:
        return self._view if self._shared else self.fallback.view()

    def _redis_worth_trying(self) -> bool:
        return self._shared or self._clock() >= self._retry_at

    async def _run(self, op: str, token: str) -> Reply | None:
        try:
            reply = await run_op(self._script, self.key, op, policy=self.policy, token=token)
        except errors.StoreUnavailable as exc:
            if self._shared:
                log.warning(
                    "circuit_shared_state_unavailable",
                    provider=self.provider,
                    error=str(exc),
                    fallback="per-process breaker",
                    retry_seconds=self.retry_seconds,
                )
            self._shared = False
            self._retry_at = self._clock() + self.retry_seconds
            return None
        now = self._clock()
        if not self._shared:
            log.info("circuit_shared_state_back", provider=self.provider)
            self._shared = True
        self._view = View(reply.state, now + reply.wait_seconds)
        return reply

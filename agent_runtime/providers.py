"""LLM providers, and how one model call finds its way through them.

A provider is one endpoint of either dialect: `anthropic` (the official SDK, `AnthropicProvider`)
or `openai-compatible` (httpx, `openai_compat.OpenAICompatProvider`). Replies become plain
`ModelReply` data here, so nothing above this module sees SDK types; a reply that is not a valid
answer becomes `ProviderResponseError` (final: retrying elsewhere will not make it valid).

`ProviderSet.complete` makes one call:

1. the strategy orders the providers (`failover`: as configured; `round_robin`; `weighted`);
   providers whose circuit is open are skipped (`breaker.py`: the decision; `circuits.py`: its
   state, shared by the service's replicas in Redis, per process while Redis is away);
2. the response cache is asked first (`cache.py`); a hit makes no provider call;
3. the shared rate limiter reserves a slot (`ratelimit.py`); a provider whose slot is more than
   `rate_limit_max_wait_seconds` away is passed over for the next one (the last one waits);
4. the provider's circuit is asked (allow, deny, or the half-open probe) right before the request,
   and told how it went; on a 5xx, timeout, connection error or 429 the call moves on to the next
   provider at once; a 429's `retry-after` becomes the shared backoff. A call served by any
   provider but the strategy's first choice (which just failed, or whose circuit is open) counts
   in `agent_provider_fallbacks_total`;
5. when every candidate failed, the next round starts after an exponential backoff with full
   jitter, up to `provider_max_retries` more rounds. The SDK's own retries are off
   (`max_retries=0`; the `anthropic` client would otherwise resend a 5xx, 429, 408 or a connection
   error twice by default, unseen by us): each HTTP request goes through the limiter and the
   breaker, so a dead provider's circuit counts every request it received;
6. when no circuit can take a call, it fails at once with `AllProvidersUnavailable`
   ("all providers unavailable"): a fast failure, not a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import anthropic
import httpx2
import redis.asyncio
from anthropic.types import Message

from agent_runtime import constants, errors
from agent_runtime.breaker import BreakerState, Decision, Outcome, Policy
from agent_runtime.cache import ResponseCache, request_digest
from agent_runtime.circuits import LocalCircuit, Permit, ProviderCircuit, SharedCircuit
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.degradation import Level, level_of
from agent_runtime.logging import get_logger
from agent_runtime.metrics import Metrics
from agent_runtime.openai_compat import OpenAICompatProvider
from agent_runtime.ratelimit import Limit, RateLimited, RateLimiter, estimate_tokens
from agent_runtime.replies import ModelReply

__all__ = ["AnthropicProvider", "ModelReply", "Provider", "ProviderSet", "build_provider", "build_providers"]

_NO_KEY = "none"  # local Anthropic-compatible servers accept any key; the SDK insists on one
_DEFAULT_RETRY_AFTER = 1.0  # a 429 without retry-after still backs every replica off this long
log = get_logger(__name__)


class Provider(Protocol):
    """One endpoint: a name, a model, a weight, and a call."""

    name: str
    model: str
    weight: int

    async def complete(
        self,
        *,
        system: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int,
        task_id: str,
    ) -> ModelReply: ...

    async def aclose(self) -> None: ...


def provider_error(provider: str, exc: Exception) -> errors.ProviderError:
    """Map an error raised by an `anthropic` client call (SDK errors, and JSON errors on malformed bodies)."""
    if isinstance(exc, anthropic.APIStatusError):
        return errors.from_http_status(provider, exc.status_code, _api_message(exc), exc.response.headers)
    if isinstance(exc, anthropic.APIConnectionError):  # includes APITimeoutError
        return errors.provider_unreachable(provider, exc)
    if isinstance(exc, anthropic.APIResponseValidationError | json.JSONDecodeError | ValueError | TypeError):
        return errors.provider_malformed_reply(provider, exc)
    return errors.provider_call_failed(provider, exc)


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc.message)


class AnthropicProvider:
    """An Anthropic Messages API endpoint, through the official SDK."""

    kind = "anthropic"

    def __init__(self, name: str, model: str, client: anthropic.AsyncAnthropic, weight: int = 1) -> None:
        self.name = name
        self.model = model
        self.client = client
        self.weight = weight

    async def complete(
        self,
        *,
        system: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int,
        task_id: str,
    ) -> ModelReply:
        """Make one Messages API call; raise a `ProviderError` on any failure."""
        try:
            message = await self.client.messages.create(
                model=self.model,
                max_tokens=max_tokens,
                system=system,
                messages=list(messages),  # type: ignore[arg-type]
                tools=list(tools),  # type: ignore[arg-type]
                extra_headers={constants.TASK_ID_HEADER: task_id},
            )
        except Exception as exc:
            raise provider_error(self.name, exc) from exc
        return self._reply(message)

    async def aclose(self) -> None:
        await self.client.close()

    def _reply(self, message: Any) -> ModelReply:
        if not isinstance(message, Message) or message.usage is None or message.content is None:
            raise errors.ProviderResponseError(
                f"provider {self.name!r} sent a malformed reply: not a Messages API message ({str(message)[:120]!r})"
            )
        content: list[dict[str, Any]] = []
        for block in message.content:
            if block.type == "text":
                content.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                if not isinstance(block.input, dict):
                    raise errors.ProviderResponseError(
                        f"provider {self.name!r} sent tool_use input that is not an object"
                    )
                content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
        return ModelReply(
            provider=self.name,
            model=message.model or self.model,
            content=content,
            stop_reason=message.stop_reason or "end_turn",
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
        )


class ProviderSet:
    """The configured providers, their circuits, the strategy, and the call policy described above."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        strategy: str,
        metrics: Metrics,
        limiter: RateLimiter | None = None,
        cache: ResponseCache | None = None,
        circuits: Mapping[str, ProviderCircuit] | None = None,
        max_retries: int = 0,
        retry_base_seconds: float = 0.5,
        retry_max_seconds: float = 8.0,
        max_wait_seconds: float = 5.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not providers:
            raise errors.ConfigError("providers: configure at least one model provider")
        if strategy not in {"failover", "round_robin", "weighted"}:
            raise errors.ConfigError(f"strategy: {strategy!r} is not one of failover, round_robin, weighted")
        self.providers = list(providers)
        self.strategy = strategy
        self.metrics = metrics
        self.limiter = limiter
        self.cache = cache
        # The circuits read the same clock (monotonic by default): their views are compared with it.
        self.circuits: dict[str, ProviderCircuit] = {
            p.name: (circuits or {}).get(p.name) or LocalCircuit(Policy(), clock=clock) for p in self.providers
        }
        self.max_retries = max_retries
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.max_wait_seconds = max_wait_seconds
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._turn = itertools.count()
        for provider in self.providers:
            metrics.provider_healthy(provider.name, True)
        self.refresh_metrics()
        metrics.on_scrape(self._refresh_on_scrape)

    def _refresh_on_scrape(self) -> None:
        self.refresh_metrics()

    def order(self) -> list[Provider]:
        """The providers in the order the next call tries them (circuits not considered)."""
        if self.strategy == "round_robin":
            start = next(self._turn) % len(self.providers)
            return self.providers[start:] + self.providers[:start]
        if self.strategy == "weighted":
            remaining = list(self.providers)
            ordered: list[Provider] = []
            while remaining:
                pick = self._rng.choices(remaining, weights=[max(p.weight, 0) or 1 for p in remaining])[0]
                ordered.append(pick)
                remaining.remove(pick)
            return ordered
        return list(self.providers)

    def level(self) -> Level:
        """The degradation level the circuits allow now (`degradation.py`)."""
        now = self._clock()
        views = [self.circuits[p.name].view() for p in self.providers]
        return level_of([BreakerState.OPEN if not v.available(now) else v.observed(now) for v in views])

    def refresh_metrics(self) -> Level:
        """Export every circuit's state (as last read) and the degradation level; return the level."""
        now = self._clock()
        for name, circuit in self.circuits.items():
            self.metrics.circuit_state(name, int(circuit.view().observed(now)))
        level = self.level()
        self.metrics.degradation_level(int(level))
        return level

    async def refresh(self) -> None:
        """Read every circuit's state again (shared ones from Redis) and export it."""
        for circuit in self.circuits.values():
            await circuit.refresh()
        self.refresh_metrics()

    async def complete(
        self,
        *,
        system: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int,
        task_id: str,
    ) -> ModelReply:
        """One model call through cache, circuits, limiter, failover and retries (see the module docstring)."""
        failures: list[str] = []
        request = {"system": system, "messages": messages, "tools": tools, "max_tokens": max_tokens, "task_id": task_id}
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self._rng.uniform(0, min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempt - 1)))
                await self._sleep(delay)
            now = self._clock()
            candidates = [
                (rank, p) for rank, p in enumerate(self.order()) if self.circuits[p.name].view().available(now)
            ]
            if not candidates:
                break
            for index, (rank, provider) in enumerate(candidates):
                if rank:  # not the strategy's first choice: it failed just now, or its circuit is open
                    self.metrics.provider_fallback(provider.name)
                last = index == len(candidates) - 1
                try:
                    reply = await self._attempt(provider, request, max_wait=None if last else self.max_wait_seconds)
                except (errors.ProviderUnavailable, RateLimited) as exc:
                    failures.append(str(exc))
                    continue
                if reply is not None:
                    return reply
        self.refresh_metrics()
        if not any(c.view().available(self._clock()) for c in self.circuits.values()):
            raise errors.AllProvidersUnavailable(self._all_down_message(failures))
        if not failures:
            raise errors.ProviderUnavailable("no provider could take the call: their circuits are being probed")
        if len(failures) == 1:
            raise errors.ProviderUnavailable(failures[0])
        raise errors.ProviderUnavailable("no provider answered: " + "; ".join(failures[-len(self.providers) :]))

    async def _attempt(
        self, provider: Provider, request: dict[str, Any], *, max_wait: float | None
    ) -> ModelReply | None:
        """Call one provider; None when its circuit refused (someone else holds the half-open probe)."""
        digest = None
        if self.cache is not None:
            digest = request_digest(
                model=provider.model,
                system=request["system"],
                messages=request["messages"],
                tools=request["tools"],
                parameters={"max_tokens": request["max_tokens"]},
            )
            hit = await self.cache.get(digest)
            if hit is not None:
                return hit
        estimate = estimate_tokens([request["system"], request["messages"], request["tools"]])
        if self.limiter is not None and provider.name in self.limiter.limits:
            wait = float("inf") if max_wait is None else max_wait
            grant = await self.limiter.acquire(provider.name, estimate, max_wait=wait)
            self.metrics.waited_for_slot(provider.name, grant.waited)
        circuit = self.circuits[provider.name]
        permit = await circuit.ask()
        if permit.decision == Decision.DENY:
            return None
        try:
            reply = await provider.complete(**request)
        except errors.ProviderUnavailable as exc:
            await self._failed(provider, circuit, permit, exc)
            raise
        except BaseException as exc:  # malformed reply, cancellation: says nothing about the provider's health
            if permit.decision == Decision.PROBE:
                await circuit.record(permit, Outcome.RELEASE)  # let the next caller probe
            if isinstance(exc, errors.ProviderError):
                self.metrics.provider_call(provider.name, "error")
            raise
        await circuit.record(permit, Outcome.SUCCESS)
        self.metrics.provider_call(provider.name, "ok")
        self.metrics.provider_healthy(provider.name, True)
        self.refresh_metrics()
        if self.limiter is not None and provider.name in self.limiter.limits:
            await self.limiter.settle(provider.name, reply.input_tokens + reply.output_tokens - estimate)
        if self.cache is not None and digest is not None:
            await self.cache.put(digest, reply)
        return reply

    async def _failed(
        self, provider: Provider, circuit: ProviderCircuit, permit: Permit, exc: errors.ProviderUnavailable
    ) -> None:
        self.metrics.provider_healthy(provider.name, False)
        if exc.rate_limited:
            self.metrics.provider_call(provider.name, "rate_limited")
            if permit.decision == Decision.PROBE:
                await circuit.record(permit, Outcome.RELEASE)
            if self.limiter is not None and provider.name in self.limiter.limits:
                seconds = exc.retry_after if exc.retry_after is not None else _DEFAULT_RETRY_AFTER
                await self.limiter.backoff(provider.name, seconds)
                log.info("provider_backoff", provider=provider.name, seconds=seconds)
        else:
            self.metrics.provider_call(provider.name, "unavailable")
            await circuit.record(permit, Outcome.FAILURE)
        self.refresh_metrics()

    def _all_down_message(self, failures: Sequence[str]) -> str:
        now = self._clock()
        waits = [f"{name} (next probe in {c.view().wait(now):.0f} s)" for name, c in self.circuits.items()]
        message = "all providers unavailable: circuit open for " + ", ".join(waits)
        if failures:
            message += f"; last error: {failures[-1]}"
        return message

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.aclose()


def _api_key(provider: ProviderConfig, environ: Mapping[str, str]) -> str | None:
    env_name = provider.api_key_env or constants.provider_key_env(provider.name)
    key = environ.get(env_name)
    if not key and provider.base_url is None:
        raise errors.ConfigError(
            f"providers[{provider.name}]: no API key; set the environment variable {env_name} (from apiKeySecretRef)"
        )
    return key


def build_provider(
    provider: ProviderConfig, config: RuntimeConfig, environ: Mapping[str, str] | None = None, *, connections: int = 4
) -> Provider:
    """One provider alone, outside the set (no limiter, breaker or cache): the evaluation's judge calls it."""
    return _build_one(provider, config, os.environ if environ is None else environ, connections=connections)


def _build_one(
    provider: ProviderConfig, config: RuntimeConfig, environ: Mapping[str, str], *, connections: int
) -> Provider:
    key = _api_key(provider, environ)
    if provider.kind == "anthropic":
        # One client, so one connection pool, per provider, shared by every task of the process. Its
        # transport is aiohttp's (the SDK's own `DefaultAioHttpClient`), not httpcore's: httpcore's
        # pool walks every connection on each request and each response (`has_expired`, a socket
        # poll per idle one), which at 500 concurrent calls cost more CPU than the rest of a task
        # (bench/RESULTS.md, "Runtime throughput"). The pool holds as many connections as the worker
        # runs tasks, so a call never waits for one and a connection is kept for the next call.
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        client = anthropic.AsyncAnthropic(
            api_key=key or _NO_KEY,
            base_url=provider.base_url,
            max_retries=0,  # retries are ours: each attempt goes through the limiter and the breaker
            timeout=config.provider_timeout_seconds,
            http_client=anthropic.DefaultAioHttpClient(timeout=config.provider_timeout_seconds, limits=limits),
            _strict_response_validation=True,
        )
        return AnthropicProvider(provider.name, provider.model, client, provider.weight)
    if provider.kind == "openai-compatible":
        if provider.base_url is None:
            raise errors.ConfigError(f"providers[{provider.name}].baseURL: an openai-compatible provider needs one")
        return OpenAICompatProvider(
            provider.name,
            provider.model,
            base_url=provider.base_url,
            api_key=key,
            timeout=config.provider_timeout_seconds,
            weight=provider.weight,
            connections=connections,
        )
    raise errors.ConfigError(
        f"providers[{provider.name}].kind: {provider.kind!r} is not one of anthropic, openai-compatible"
    )


def limits_of(config: RuntimeConfig) -> dict[str, Limit]:
    """Each provider's shared limits (its own, else the service's)."""
    return {
        p.name: Limit(
            requests_per_minute=p.requests_per_minute or config.requests_per_minute,
            tokens_per_minute=p.tokens_per_minute or config.tokens_per_minute,
            burst_fraction=config.rate_limit_burst_fraction,
            headroom=config.rate_limit_headroom,
        )
        for p in config.providers
    }


def build_providers(
    config: RuntimeConfig,
    *,
    metrics: Metrics,
    environ: Mapping[str, str] | None = None,
    redis_client: redis.asyncio.Redis | None = None,
    concurrency: int | None = None,
) -> ProviderSet:
    """Build every configured provider (API keys from `provider_key_env(name)`).

    Each provider's connection pool holds `concurrency` connections (default `worker_concurrency`):
    as many as the worker has calls in flight.

    With a Redis client the rate limits are enforced, the circuits are shared by every replica
    (unless `breaker_scope` is `process`) and, when enabled, the response cache is used; without one
    (unit tests of the agent loop) none of that, and each circuit is this process's own.
    """
    env = os.environ if environ is None else environ
    connections = concurrency or config.worker_concurrency
    built = [_build_one(p, config, env, connections=connections) for p in config.providers]
    metrics.providers_configured(p.name for p in config.providers)
    limiter = cache = None
    if redis_client is not None:
        limiter = RateLimiter(redis_client, keys=config.keys(), limits=limits_of(config))
        if config.cache_enabled:
            cache = ResponseCache(
                redis_client, keys=config.keys(), ttl_seconds=config.cache_ttl_seconds, metrics=metrics
            )
    policy = Policy(
        failure_threshold=config.breaker_failure_threshold,
        cooldown_seconds=config.breaker_cooldown_seconds,
        probe_timeout_seconds=config.provider_timeout_seconds,
    )
    circuits: dict[str, ProviderCircuit] = {}
    for p in config.providers:
        if redis_client is not None and config.breaker_scope == "service":
            key = config.keys().breaker(p.name)
            circuits[p.name] = SharedCircuit(redis_client, key=key, provider=p.name, policy=policy)
        else:
            circuits[p.name] = LocalCircuit(policy)
    return ProviderSet(
        built,
        strategy=config.strategy,
        metrics=metrics,
        limiter=limiter,
        cache=cache,
        circuits=circuits,
        max_retries=config.provider_max_retries,
        retry_base_seconds=config.retry_base_seconds,
        retry_max_seconds=config.retry_max_seconds,
        max_wait_seconds=config.rate_limit_max_wait_seconds,
    )

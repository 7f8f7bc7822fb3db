"""LLM providers: one `AsyncAnthropic` client per configured endpoint, and the order they are tried in.

The SDK does the per-call retries (exponential backoff, honouring `retry-after`); what is still
failing after them moves to the next provider (`failover`, or the next in a `round_robin` /
`weighted` order), counted in `agent_provider_fallbacks_total`, and marks the provider unhealthy in
`llm_provider_healthy`. Replies are turned into plain dicts here, so nothing above this module sees
SDK types, and a reply that is not a valid Messages API answer becomes `ProviderResponseError`.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anthropic
from anthropic.types import Message

from agent_runtime import constants, errors
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.metrics import Metrics

__all__ = ["ModelReply", "Provider", "ProviderSet", "build_providers"]

_NO_KEY = "none"  # local Anthropic-compatible servers accept any key; the SDK insists on one


@dataclass(frozen=True)
class ModelReply:
    """One model turn, as plain data."""

    provider: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    input_tokens: int
    output_tokens: int

    def tool_uses(self) -> list[dict[str, Any]]:
        return [block for block in self.content if block["type"] == "tool_use"]

    def text(self) -> str:
        return "".join(block["text"] for block in self.content if block["type"] == "text")


class Provider:
    """One endpoint: a name, a model and its client."""

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
            raise errors.from_provider(self.name, exc) from exc
        return self._reply(message)

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
    """The configured providers and the strategy choosing the order to try them in."""

    def __init__(
        self, providers: Sequence[Provider], *, strategy: str, metrics: Metrics, rng: random.Random | None = None
    ) -> None:
        if not providers:
            raise errors.ConfigError("providers: configure at least one model provider")
        if strategy not in {"failover", "round_robin", "weighted"}:
            raise errors.ConfigError(f"strategy: {strategy!r} is not one of failover, round_robin, weighted")
        self.providers = list(providers)
        self.strategy = strategy
        self.metrics = metrics
        self._rng = rng or random.Random()
        self._turn = itertools.count()
        for provider in self.providers:
            metrics.provider_healthy(provider.name, True)

    def order(self) -> list[Provider]:
        """The providers in the order the next call tries them."""
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

    async def complete(
        self,
        *,
        system: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int,
        task_id: str,
    ) -> ModelReply:
        """Call the providers in order until one answers; malformed replies are not retried elsewhere."""
        failures: list[str] = []
        for index, provider in enumerate(self.order()):
            if index:
                self.metrics.provider_fallback(provider.name)
            try:
                reply = await provider.complete(
                    system=system, messages=messages, tools=tools, max_tokens=max_tokens, task_id=task_id
                )
            except errors.ProviderUnavailable as exc:
                self.metrics.provider_healthy(provider.name, False)
                failures.append(str(exc))
                continue
            self.metrics.provider_healthy(provider.name, True)
            return reply
        if len(failures) == 1:
            raise errors.ProviderUnavailable(failures[0])
        raise errors.ProviderUnavailable("all providers unavailable: " + "; ".join(failures))

    async def aclose(self) -> None:
        for provider in self.providers:
            await provider.client.close()


def _client(provider: ProviderConfig, config: RuntimeConfig, environ: Mapping[str, str]) -> anthropic.AsyncAnthropic:
    env_name = provider.api_key_env or constants.provider_key_env(provider.name)
    key = environ.get(env_name)
    if not key and provider.base_url is None:
        raise errors.ConfigError(
            f"providers[{provider.name}]: no API key; set the environment variable {env_name} (from apiKeySecretRef)"
        )
    return anthropic.AsyncAnthropic(
        api_key=key or _NO_KEY,
        base_url=provider.base_url,
        max_retries=config.provider_max_retries,
        timeout=config.provider_timeout_seconds,
        _strict_response_validation=True,
    )


def build_providers(
    config: RuntimeConfig, *, metrics: Metrics, environ: Mapping[str, str] | None = None
) -> ProviderSet:
    """Build the clients of every configured provider (API keys from `provider_key_env(name)`)."""
    env = os.environ if environ is None else environ
    built = []
    for provider in config.providers:
        if provider.kind != "anthropic":
            raise errors.ConfigError(
                f"providers[{provider.name}].kind: {provider.kind!r} is not supported yet (use anthropic)"
            )
        built.append(Provider(provider.name, provider.model, _client(provider, config, env), provider.weight))
    return ProviderSet(built, strategy=config.strategy, metrics=metrics)

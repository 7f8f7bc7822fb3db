"""The `openai-compatible` provider kind: the OpenAI chat-completions API over httpx.

The agent loop speaks the Messages API's shapes (content blocks, `tool_use`, `tool_result`); this
module translates a request into `POST {base_url}/chat/completions` and the answer back, so nothing
above `providers.py` knows which dialect served a step. The translation is pure (`to_chat_request`,
`from_chat_reply`); `OpenAICompatProvider` adds the HTTP call and maps its errors through
`errors.from_http_status` / `provider_error`.

OpenAI tool messages have no error flag, so a `tool_result` with `is_error` is sent with its text
prefixed by `TOOL_ERROR_PREFIX`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from agent_runtime import constants, errors
from agent_runtime.replies import ModelReply

__all__ = ["TOOL_ERROR_PREFIX", "OpenAICompatProvider", "from_chat_reply", "to_chat_request"]

TOOL_ERROR_PREFIX = "error: "
_STOP_REASONS = {"tool_calls": "tool_use", "function_call": "tool_use", "length": "max_tokens", "stop": "end_turn"}


def to_chat_request(
    *,
    model: str,
    system: str,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]],
    max_tokens: int,
) -> dict[str, Any]:
    """The chat-completions body for a Messages-API-shaped request. Pure."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        blocks = list(content or [])
        if message["role"] == "assistant":
            text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            calls = [
                {
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})},
                }
                for b in blocks
                if b.get("type") == "tool_use"
            ]
            turn: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
            continue
        for block in blocks:
            if block.get("type") == "tool_result":
                text = _result_text(block.get("content"))
                if block.get("is_error"):
                    text = TOOL_ERROR_PREFIX + text
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
        if text:
            out.append({"role": "user", "content": text})
    body: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in tools
        ]
    return body


def from_chat_reply(provider: str, model: str, body: Any) -> ModelReply:
    """The reply of a chat-completions answer; `ProviderResponseError` if it is not one. Pure."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
        usage = body["usage"]
        content: list[dict[str, Any]] = []
        if message.get("content"):
            content.append({"type": "text", "text": str(message["content"])})
        for call in message.get("tool_calls") or []:
            arguments = json.loads(call["function"]["arguments"] or "{}")
            if not isinstance(arguments, dict):
                raise TypeError("tool call arguments are not a JSON object")
            content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments})
        return ModelReply(
            provider=provider,
            model=str(body.get("model") or model),
            content=content,
            stop_reason=_STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
            input_tokens=int(usage["prompt_tokens"]),
            output_tokens=int(usage["completion_tokens"]),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise errors.ProviderResponseError(
            f"provider {provider!r} sent a malformed reply: not a chat completion ({type(exc).__name__}: {exc})"
        ) from exc


def provider_error(provider: str, exc: Exception) -> errors.ProviderError:
    """Map an error raised while calling an OpenAI-compatible endpoint with httpx."""
    if isinstance(exc, httpx.TransportError):  # connect, read, write and pool errors and timeouts
        return errors.provider_unreachable(provider, exc)
    if isinstance(exc, json.JSONDecodeError | ValueError | TypeError | KeyError):
        return errors.provider_malformed_reply(provider, exc)
    return errors.provider_call_failed(provider, exc)


class OpenAICompatProvider:
    """One OpenAI-compatible endpoint (`base_url` ends before `/chat/completions`, e.g. `.../v1`)."""

    kind = "openai-compatible"

    def __init__(
        self,
        name: str,
        model: str,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        weight: int = 1,
        connections: int = 100,
    ) -> None:
        self.name = name
        self.model = model
        self.weight = weight
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # As many pooled connections as the worker has calls in flight (httpx's default keeps 20).
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, limits=limits)

    async def complete(
        self,
        *,
        system: str,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int,
        task_id: str,
    ) -> ModelReply:
        """Make one chat-completions call; raise a `ProviderError` on any failure."""
        body = to_chat_request(model=self.model, system=system, messages=messages, tools=tools, max_tokens=max_tokens)
        try:
            response = await self.client.post(
                "/chat/completions", json=body, headers={constants.TASK_ID_HEADER: task_id}
            )
            if response.status_code >= 400:
                raise errors.from_http_status(
                    self.name, response.status_code, _error_message(response), response.headers
                )
            payload = response.json()
        except errors.ProviderError:
            raise
        except Exception as exc:
            raise provider_error(self.name, exc) from exc
        return from_chat_reply(self.name, self.model, payload)

    async def aclose(self) -> None:
        await self.client.aclose()


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return "" if content is None else str(content)


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text[:200]
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return response.text[:200]

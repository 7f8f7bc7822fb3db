"""A local Anthropic-compatible model server: the offline model of the demo, and the LLM of the tests.

`POST /v1/messages` answers like the Messages API (non-streaming), deterministically: when the
first user message contains arithmetic and the request offers the `calculator` tool, it asks for one
calculation per turn (a `tool_use` turn), then answers with the results; otherwise it answers with
text. `usage` is counted from the request and reply sizes (about four characters per token).

Fault injection is per server instance (`Faults`): an error ratio with status 429 (with
`retry-after`), 500 or 529, malformed bodies, added latency, and a script of forced outcomes for the
next requests. Every call is recorded (`calls`), with the task id header and the step (assistant
turns already in the transcript), so tests can prove which steps were re-sent. `GET /_local/calls`
and `PUT /_local/faults` expose the same when the server runs as a separate process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from agent_runtime import constants

__all__ = ["CallRecord", "Faults", "LocalModelServer", "respond"]

MODEL = "claude-sonnet-5-5"
_EXPRESSION = re.compile(r"\d+(?:\.\d+)?(?:\s*(?:\*\*|//|[-+*/%])\s*\d+(?:\.\d+)?)+")
_ERROR_TYPES = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error", 503: "api_error"}


@dataclass
class Faults:
    """What the server does wrong; mutable while it runs."""

    error_ratio: float = 0.0  # share of requests answered with `error_status`
    error_status: int = 500  # 429, 500, 503 or 529
    retry_after: float | None = 1.0  # seconds, sent with 429 and 529
    malformed_ratio: float = 0.0  # share answered 200 with a truncated JSON body
    latency_seconds: float = 0.0  # added before every reply
    script: list[str] = field(
        default_factory=list
    )  # forced outcomes, consumed in order: "429" | "500" | "529" | "malformed" | "ok"
    seed: int = 0


@dataclass
class CallRecord:
    """One request as the server saw it."""

    task_id: str | None
    step: int
    started: float
    outcome: str = "pending"  # then "ok", "malformed", "bad_request" or the HTTP error status
    finished: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "user" and isinstance(message.get("content"), list):
            out += [b for b in message["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    return out


def respond(body: dict[str, Any], *, message_id: str) -> dict[str, Any]:
    """The deterministic reply to a Messages API request body. Pure."""
    messages: list[dict[str, Any]] = body["messages"]
    prompt = _text_of(messages[0].get("content"))
    offered = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    expressions = _EXPRESSION.findall(prompt)
    results = _tool_results(messages)
    content: list[dict[str, Any]]
    if "calculator" in offered and len(results) < len(expressions):
        expression = expressions[len(results)]
        digest = hashlib.sha256(f"{prompt}\x00{len(results)}".encode()).hexdigest()[:24]
        content = [
            {"type": "text", "text": f"Let me compute {expression}."},
            {"type": "tool_use", "id": f"toolu_{digest}", "name": "calculator", "input": {"expression": expression}},
        ]
        stop_reason = "tool_use"
    else:
        if expressions and results:
            parts = []
            for expression, result in zip(expressions, results, strict=False):
                value = (
                    _text_of(result.get("content")) if not isinstance(result.get("content"), str) else result["content"]
                )
                parts.append(
                    f"could not compute {expression} ({value})" if result.get("is_error") else f"{expression} = {value}"
                )
            text = "The answer: " + "; ".join(parts) + "."
        else:
            text = "You asked: " + " ".join(prompt.split())[:200]
        content = [{"type": "text", "text": text}]
        stop_reason = "end_turn"
    request_size = json.dumps([body.get("system"), messages, body.get("tools")], separators=(",", ":"))
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": _tokens(request_size),
            "output_tokens": _tokens(json.dumps(content)) + 8,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "invalid_request_error"), "message": message}}


class LocalModelServer:
    """The server on a loopback port (0: pick a free one); `start()` then `url`, `stop()` at the end."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, faults: Faults | None = None) -> None:
        self.host = host
        self.port = port
        self.faults = faults or Faults()
        self.calls: list[CallRecord] = []
        self._rng = random.Random(self.faults.seed)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def inflight(self) -> list[CallRecord]:
        return [c for c in self.calls if c.outcome == "pending"]

    def completed(self) -> list[CallRecord]:
        return [c for c in self.calls if c.outcome == "ok"]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/_local/calls", self._list_calls)
        app.router.add_put("/_local/faults", self._set_faults)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _outcome(self) -> str:
        faults = self.faults
        if faults.script:
            return faults.script.pop(0)
        if faults.error_ratio and self._rng.random() < faults.error_ratio:
            return str(faults.error_status)
        if faults.malformed_ratio and self._rng.random() < faults.malformed_ratio:
            return "malformed"
        return "ok"

    async def _messages(self, request: web.Request) -> web.Response:
        record = CallRecord(task_id=request.headers.get(constants.TASK_ID_HEADER), step=0, started=time.time())
        self.calls.append(record)
        try:
            return await self._answer(request, record)
        except asyncio.CancelledError:
            record.outcome = "aborted"  # the client went away mid-reply
            raise
        finally:
            record.finished = time.time()

    async def _answer(self, request: web.Request, record: CallRecord) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            record.outcome = "bad_request"
            return web.json_response(_error_body(400, "request body is not valid JSON"), status=400)
        problem = _validate(body)
        if problem:
            record.outcome = "bad_request"
            return web.json_response(_error_body(400, problem), status=400)
        record.step = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        if self.faults.latency_seconds:
            await asyncio.sleep(self.faults.latency_seconds)
        outcome = self._outcome()
        record.outcome = outcome
        if outcome == "malformed":
            return web.Response(
                text='{"id": "msg_broken", "type": "message", "content": [{"type": "te', content_type="application/json"
            )
        if outcome != "ok":
            status = int(outcome)
            headers = {}
            if status in (429, 529) and self.faults.retry_after is not None:
                headers["retry-after"] = f"{self.faults.retry_after:g}"
            return web.json_response(
                _error_body(status, f"injected fault: HTTP {status}"), status=status, headers=headers
            )
        reply = respond(body, message_id=f"msg_local_{len(self.calls):06d}")
        record.input_tokens = reply["usage"]["input_tokens"]
        record.output_tokens = reply["usage"]["output_tokens"]
        return web.json_response(reply, headers={"request-id": f"req_local_{len(self.calls):06d}"})

    async def _list_calls(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(c) for c in self.calls])

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults = Faults(**await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response(_error_body(400, f"bad faults: {exc}"), status=400)
        self._rng = random.Random(self.faults.seed)
        return web.json_response(asdict(self.faults))


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str):
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages: a non-empty list of messages is required"
    if messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    return None

"""A local model server speaking both provider dialects: the offline model of the demo, the LLM of the tests.

`POST /v1/messages` answers like the Messages API (non-streaming) and `POST /v1/chat/completions`
like the OpenAI chat-completions API (the `openai-compatible` kind: the request is read into the
Messages form, answered by the same `respond`, and written back), deterministically: when the
first user message contains arithmetic and the request offers the `calculator` tool, it asks for one
calculation per turn (a `tool_use` turn), then answers with the results; when it names tools to call
(`call <tool> {json input}`, any number of times), it calls each one that the request offers, in
order, one per turn, then answers with what each returned (and names those not offered); otherwise
it answers with text. `usage` is counted from the request and reply sizes (about four characters per token).

Fault injection is per server instance (`Faults`): an error ratio with status 429 (with
`retry-after`), 500 or 529, malformed bodies, added latency, a hold (replies wait until it is
lifted; optionally only those after the first N calls), and a script of forced outcomes for the
next requests (`fault_script(k)`: exactly k final errors in every 10 calls, a model version that
fails k tasks in 10) and wrong answers with no error (`wrong_per_ten`: exactly k of every 10 final
answers are wrong, each result off by one: a model version that answers 30 % of cases wrongly at
the same latency and cost). A request whose system prompt is the evaluation judge's
(`agent_runtime.evaluation.judge.JUDGE_SYSTEM`) is judged: the score is the share of the rubric's
required terms (its quoted strings and its numbers) found in the answer shown.
Every call is recorded (`calls`), with the task id header, the step
(assistant turns already in the transcript), so tests can prove which steps were re-sent, and the
client's end of the connection it came on (`connection`), so they can count the connections used.
`GET /_local/calls` and `PUT /_local/faults` expose the same when the server runs as a separate
process.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
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
from agent_runtime.evaluation.judge import JUDGE_SYSTEM
from agent_runtime.openai_compat import TOOL_ERROR_PREFIX

__all__ = [
    "FAULT_STATUS",
    "CallRecord",
    "Faults",
    "LocalModelServer",
    "chat_to_messages",
    "fault_script",
    "is_judge_request",
    "messages_to_chat",
    "respond",
]

MODEL = "claude-sonnet-5-5"
# A final model error: the runtime does not retry a 400, so each one fails its task. A 5xx would
# not do for a "bad model version": the runtime retries it (the task is redelivered), so it shows
# as latency rather than as failed tasks.
FAULT_STATUS = 400
_EXPRESSION = re.compile(r"\d+(?:\.\d+)?(?:\s*(?:\*\*|//|[-+*/%])\s*\d+(?:\.\d+)?)+")
_CALL = re.compile(r"\bcall ([A-Za-z0-9_-]{1,128}) (?=\{)")
_ERROR_TYPES = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error", 503: "api_error"}


@dataclass
class Faults:
    """What the server does wrong; mutable while it runs."""

    error_ratio: float = 0.0  # share of requests answered with `error_status`
    error_status: int = 500  # 429, 500, 503, 529, or FAULT_STATUS (a final error)
    retry_after: float | None = 1.0  # seconds, sent with 429 and 529
    malformed_ratio: float = 0.0  # share answered 200 with a truncated JSON body
    latency_seconds: float = 0.0  # added before every reply
    hold: bool = False  # replies wait while set: a model that stalls until the test lets it go
    hold_after: int = 0  # with `hold`: the first `hold_after` calls are answered, the later ones wait
    wrong_per_ten: int = 0  # final answers in every 10 that are wrong (no error: the answer is off by one)
    script: list[str] = field(
        default_factory=list
    )  # forced outcomes, consumed in order: an HTTP status ("429", "400", ...) | "malformed" | "ok"
    seed: int = 0


def fault_script(errors_per_ten: int, length: int = 6000, status: int = FAULT_STATUS) -> list[str]:
    """A `Faults.script` with exactly `errors_per_ten` errors (`status`) in every 10 calls, spread out."""
    block = ["ok"] * 10
    for i in range(errors_per_ten):
        block[(i * 10) // max(errors_per_ten, 1)] = str(status)
    return list(itertools.islice(itertools.cycle(block), length))


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
    dialect: str = "anthropic"  # or "openai" (POST /v1/chat/completions)
    tools: list[str] = field(default_factory=list)  # names of the tools the request offered
    number: int = 0  # 1 for the first call the server received, and so on
    connection: str = ""  # the client's address and port: one per TCP connection
    max_tokens: int = 0  # the request's max_tokens (what the runtime let the call produce)


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


def tool_requests(prompt: str) -> list[tuple[str, dict[str, Any]]]:
    """The `call <tool> {json}` directives of a prompt, in order (malformed ones skipped). Pure."""
    found: list[tuple[str, dict[str, Any]]] = []
    decoder = json.JSONDecoder()
    for match in _CALL.finditer(prompt):
        try:
            value, _ = decoder.raw_decode(prompt, match.end())
        except ValueError:
            continue
        if isinstance(value, dict):
            found.append((match.group(1), value))
    return found


def _named_tools(
    messages: list[dict[str, Any]], prompt: str, offered: set[Any], results: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str] | None:
    """The reply to a prompt naming tools to call: the next call to make, or the final answer.

    Requests are taken in order: one already called (a tool_use in the transcript) pairs with its
    result; the next one not called yet is called now if offered, else noted as not offered.
    """
    requests = tool_requests(prompt)
    if not requests:
        return None
    issued = [
        (b.get("name"), b.get("input"))
        for m in messages
        if m.get("role") == "assistant" and isinstance(m.get("content"), list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "tool_use"
    ]
    parts = []
    done = 0
    for name, data in requests:
        if done < len(issued) and issued[done] == (name, data):
            result = results[done] if done < len(results) else {"content": "no result", "is_error": True}
            done += 1
            value = result["content"] if isinstance(result.get("content"), str) else _text_of(result.get("content"))
            parts.append(f"{name} failed: {value}" if result.get("is_error") else f"{name} returned {value}")
        elif done == len(issued) and name in offered:
            digest = hashlib.sha256(f"{prompt}\x00{len(results)}".encode()).hexdigest()[:24]
            return [
                {"type": "text", "text": f"Let me call {name}."},
                {"type": "tool_use", "id": f"toolu_{digest}", "name": name, "input": data},
            ], "tool_use"
        else:
            parts.append(f"{name} was not offered")
    return [{"type": "text", "text": "The answer: " + "; ".join(parts) + "."}], "end_turn"


_QUOTED = re.compile(r'"([^"]+)"')
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_JUDGE_FIRST_LINE = JUDGE_SYSTEM.splitlines()[0]


def is_judge_request(body: dict[str, Any]) -> bool:
    return _text_of(body.get("system") or "").startswith(_JUDGE_FIRST_LINE)


def _judge(prompt: str) -> str:
    """A judge's reply: the share of the rubric's required terms (quoted strings, numbers) in the answer."""
    rubric, _, rest = prompt.partition("\n\nTask given to the agent:\n")
    rubric = rubric.removeprefix("Rubric:\n")
    answer = rest.partition("\n\nThe agent's answer:\n")[2]
    terms = list(dict.fromkeys(_QUOTED.findall(rubric) + _NUMBER.findall(_QUOTED.sub("", rubric))))
    found = [t for t in terms if t in answer]
    score = len(found) / len(terms) if terms else 1.0
    missing = [t for t in terms if t not in answer]
    reason = f"{len(found)} of {len(terms)} required terms" + (f"; missing {', '.join(missing)}" if missing else "")
    return json.dumps({"score": round(score, 4), "reason": reason})


def _off_by_one(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value + " (approximately)"
    return f"{number + 1:g}"


def respond(body: dict[str, Any], *, message_id: str, wrong: bool = False) -> dict[str, Any]:
    """The deterministic reply to a Messages API request body (`wrong`: a final answer off by one). Pure."""
    messages: list[dict[str, Any]] = body["messages"]
    prompt = _text_of(messages[0].get("content"))
    if is_judge_request(body):
        return _reply(body, messages, message_id, [{"type": "text", "text": _judge(prompt)}], "end_turn")
    offered = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    expressions = _EXPRESSION.findall(prompt)
    results = _tool_results(messages)
    content: list[dict[str, Any]]
    named = _named_tools(messages, prompt, offered, results)
    if named is not None:
        content, stop_reason = named
    elif "calculator" in offered and len(results) < len(expressions):
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
                if wrong and not result.get("is_error"):
                    value = _off_by_one(value)
                parts.append(
                    f"could not compute {expression} ({value})" if result.get("is_error") else f"{expression} = {value}"
                )
            text = "The answer: " + "; ".join(parts) + "."
        elif wrong:
            text = "You asked something else."
        else:
            text = "You asked: " + " ".join(prompt.split())[:200]
        content = [{"type": "text", "text": text}]
        stop_reason = "end_turn"
    return _reply(body, messages, message_id, content, stop_reason)


def _reply(
    body: dict[str, Any], messages: list[dict[str, Any]], message_id: str, content: list[dict[str, Any]], stop: str
) -> dict[str, Any]:
    stop_reason = stop
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
        self._finals = 0  # final answers given (for `wrong_per_ten`)
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
        app.router.add_post("/v1/chat/completions", self._chat)
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
        # A listen backlog of 1,024, not aiohttp's 128: a worker opening 500 connections at once (the
        # 500-call bench) otherwise loses SYNs past the 128th and waits out the kernel's 1 s
        # retransmission, which a provider's front end does not make it do (bench/RESULTS.md).
        await web.SockSite(self._runner, sock, backlog=1024).start()

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
        return await self._serve(request, "anthropic")

    async def _chat(self, request: web.Request) -> web.Response:
        return await self._serve(request, "openai")

    async def _serve(self, request: web.Request, dialect: str) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        record = CallRecord(
            task_id=request.headers.get(constants.TASK_ID_HEADER),
            step=0,
            started=time.time(),
            dialect=dialect,
            connection=f"{peer[0]}:{peer[1]}" if peer else "",
        )
        self.calls.append(record)
        record.number = len(self.calls)
        try:
            return await self._answer(request, record)
        except asyncio.CancelledError:
            record.outcome = "aborted"  # the client went away mid-reply
            raise
        finally:
            record.finished = time.time()

    async def _answer(self, request: web.Request, record: CallRecord) -> web.Response:
        openai = record.dialect == "openai"
        error_body = _chat_error_body if openai else _error_body
        try:
            raw = await request.json()
            body = chat_to_messages(raw) if openai else raw
        except (ValueError, TypeError, KeyError) as exc:
            record.outcome = "bad_request"
            return web.json_response(error_body(400, f"request body is not a valid request: {exc}"), status=400)
        problem = _validate(body)
        if problem:
            record.outcome = "bad_request"
            return web.json_response(error_body(400, problem), status=400)
        record.step = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        record.max_tokens = int(body.get("max_tokens") or 0)
        record.tools = [str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict)]
        if self.faults.latency_seconds:
            await asyncio.sleep(self.faults.latency_seconds)
        while self.faults.hold and record.number > self.faults.hold_after:  # read afresh: a PUT replaces it
            await asyncio.sleep(0.05)
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
            message = f"injected fault: HTTP {status}"
            return web.json_response(error_body(status, message), status=status, headers=headers)
        message_id = f"msg_local_{len(self.calls):06d}"
        reply = respond(body, message_id=message_id)
        if reply["stop_reason"] == "end_turn" and not is_judge_request(body):
            self._finals += 1
            if self._wrong(self._finals):
                reply = respond(body, message_id=message_id, wrong=True)
        record.input_tokens = reply["usage"]["input_tokens"]
        record.output_tokens = reply["usage"]["output_tokens"]
        payload = messages_to_chat(reply) if openai else reply
        return web.json_response(payload, headers={"request-id": f"req_local_{len(self.calls):06d}"})

    def _wrong(self, number: int) -> bool:
        """Whether the `number`-th final answer is wrong: `wrong_per_ten` of every 10, spread out."""
        k = min(10, max(0, self.faults.wrong_per_ten))
        return bool(k) and (number - 1) % 10 in {(i * 10) // k for i in range(k)}

    async def _list_calls(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(c) for c in self.calls])

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults = Faults(**await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response(_error_body(400, f"bad faults: {exc}"), status=400)
        self._rng = random.Random(self.faults.seed)
        self._finals = 0
        return web.json_response(asdict(self.faults))


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """Read a chat-completions request into the Messages API form `respond` answers. Pure."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        role = message["role"]
        if role == "system":
            system.append(str(message.get("content") or ""))
        elif role == "tool":
            text = str(message.get("content") or "")
            is_error = text.startswith(TOOL_ERROR_PREFIX)
            block = {
                "type": "tool_result",
                "tool_use_id": message["tool_call_id"],
                "content": text.removeprefix(TOOL_ERROR_PREFIX),
                "is_error": is_error,
            }
            if messages and messages[-1]["role"] == "user" and isinstance(messages[-1]["content"], list):
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
        elif role == "assistant":
            content: list[dict[str, Any]] = []
            if message.get("content"):
                content.append({"type": "text", "text": str(message["content"])})
            for call in message.get("tool_calls") or []:
                content.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": json.loads(call["function"]["arguments"] or "{}"),
                    }
                )
            messages.append({"role": "assistant", "content": content})
        else:
            messages.append({"role": "user", "content": str(message.get("content") or "")})
    tools = [
        {
            "name": t["function"]["name"],
            "description": t["function"].get("description", ""),
            "input_schema": t["function"].get("parameters") or {"type": "object"},
        }
        for t in body.get("tools") or []
    ]
    return {
        "model": body.get("model"),
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 1024,
        "system": "\n".join(system),
        "messages": messages,
        "tools": tools,
    }


def messages_to_chat(reply: dict[str, Any]) -> dict[str, Any]:
    """Write a Messages API reply as a chat completion. Pure."""
    text = "".join(b["text"] for b in reply["content"] if b["type"] == "text")
    calls = [
        {"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}
        for b in reply["content"]
        if b["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    usage = reply["usage"]
    return {
        "id": reply["id"].replace("msg_", "chatcmpl_", 1),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {
            "prompt_tokens": usage["input_tokens"],
            "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        },
    }


def _chat_error_body(status: int, message: str) -> dict[str, Any]:
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "code": str(status)}}


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

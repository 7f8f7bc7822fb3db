"""The task API (FastAPI): submit, inspect and cancel tasks; probes and metrics.

`POST /v1/tasks` answers at once with the task id and its status URL (work happens in the workers);
`GET /v1/tasks/{id}` shows status, progress, result, error, usage, the degradation level the
task ran at and, for a queued task put aside by the daily budget, why it waits (`waiting`: the
figures and when money comes back); `POST /v1/tasks/{id}/cancel` cancels (`DELETE /v1/tasks/{id}`
does the same, deprecated: it cancels, the task stays readable). While the service's daily
budget is spent or tasks wait for it, submissions answer 429 `budget exhausted until 00:00 UTC`
with the figure and a `retry-after` (`budget.py`). `/metrics` also exports the day's budget figures.
`/v1/*` needs `Authorization: Bearer <AGENT_AUTH_TOKEN>`; `/health`, `/ready` and `/metrics` do not
(kubelet probes and Prometheus scrapes carry no token). Every error body is
`{"error": "<what to fix>"}`, the framework's own 404, 405 and 422 included. Redis unreachable or
refusing commands for now (READONLY, OOM, LOADING, MASTERDOWN, BUSY, ...) is a 503 with
`retry-after`, and `/ready` answers 503 until Redis accepts writes again. `Location` and
`status_url` are relative paths: nothing in a response echoes the request's Host header.

`/openapi.json` documents every answer (status codes, bodies, content types, the bearer scheme);
a 405 lists in `Allow` every method the path serves. A test runs schemathesis against it.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis.asyncio
import structlog
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_runtime import budget, constants, costs, errors, tracing
from agent_runtime.budget import BudgetLedger
from agent_runtime.config import RuntimeConfig
from agent_runtime.costs import CostReports
from agent_runtime.logging import get_logger
from agent_runtime.metrics import Metrics
from agent_runtime.queue import TaskQueue
from agent_runtime.tasks import MAX_METADATA_DEPTH, TaskStatus, TaskView, metadata_problem

__all__ = ["SubmitRequest", "SubmitResponse", "create_app"]

log = get_logger(__name__)

_METADATA_DEPTH_RULE = f"task metadata is limited to {MAX_METADATA_DEPTH} levels (metadata depth)"
# A full queue drains at the workers' pace: ask clients to come back after a few seconds.
QUEUE_FULL_RETRY_AFTER_SECONDS = 5


class SubmitRequest(BaseModel):
    """The body of `POST /v1/tasks`."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, description="The task for the agent, in natural language.")
    priority: Literal["high", "normal", "low"] = "normal"
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Kept with the task; `intent` labels metrics. At most 32 levels deep and 64 KiB as JSON.",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Resubmitting with the same key returns the same task; with another input or priority: 409.",
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        # Before pydantic walks the value: the depth is measured iteratively, so even metadata
        # nested past the recursion limit gets this 422 naming the bound.
        problem = metadata_problem(value) if isinstance(value, dict) else None
        if problem is not None:
            raise PydanticCustomError("metadata_bounds", problem)
        return value


class SubmitResponse(BaseModel):
    task_id: str
    status: TaskStatus
    status_url: str
    duplicate: bool = False


class CancelResponse(BaseModel):
    task_id: str
    status: TaskStatus


class ErrorBody(BaseModel):
    """Every error answer: what went wrong, in words that say what to fix."""

    error: str


class ReadyBody(BaseModel):
    ready: bool
    reason: str | None = None


class HealthBody(BaseModel):
    status: str


_ERROR_MEANINGS = {
    400: "The body could not be read as the declared content type.",
    401: "No bearer token, or not the service's (`Authorization: Bearer <token>`).",
    404: "No such task (unknown id, or its record expired).",
    409: "A conflict: the idempotency key names another task, or the task already ended.",
    413: "The body is larger than max_body_bytes.",
    422: "The request is invalid (the message names the field and the rule).",
    429: "The queue is full or the daily budget is spent: retry after `Retry-After` seconds.",
    503: "Redis is unreachable or refusing writes for now: retry after `Retry-After` seconds.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error answers, each an `ErrorBody`."""
    return {code: {"model": ErrorBody, "description": _ERROR_MEANINGS[code]} for code in codes}


def create_app(
    config: RuntimeConfig,
    *,
    redis: redis.asyncio.Redis,
    registry: CollectorRegistry,
    auth_token: str | None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the API on injected clients; `auth_token=None` turns authentication off (local use only)."""
    queue = TaskQueue.from_config(config, redis)
    metrics = metrics or Metrics(
        registry, service=config.service, track=config.track.value, known_intents=config.known_intents
    )
    app = FastAPI(title="agent-runtime", version="1", docs_url=None, redoc_url=None)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.queue = queue
    app.state.metrics = metrics
    daily = BudgetLedger(
        redis,
        keys=config.keys(),
        daily_limit_usd=config.daily_budget_usd,
        per_task_limit_usd=config.per_task_budget_usd,
    )
    app.include_router(_task_routes(config, queue, metrics, daily))
    reports = CostReports(redis, keys=config.keys(), retention_days=config.report_retention_days)
    app.include_router(_cost_routes(config, reports))
    app.include_router(_probe_routes(queue, metrics, daily))
    _install_error_handlers(app, metrics, daily)
    # Outermost last: traced, then headers checked (400) and the request id bound, then the token
    # (401), then the body's size (413); the body is parsed only after all of them.
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(_Authorized, token=auth_token)
    app.add_middleware(_RequestId)
    app.add_middleware(_Traced)
    return app


def _task_routes(config: RuntimeConfig, queue: TaskQueue, metrics: Metrics, daily: BudgetLedger) -> APIRouter:
    router = APIRouter(prefix=constants.TASKS_PATH)  # behind `_Authorized`

    @router.post(
        "",
        status_code=202,
        response_model=SubmitResponse,
        responses={
            200: {"model": SubmitResponse, "description": "A resubmission with the same idempotency key: that task."},
            **_errors(400, 401, 409, 413, 422, 429, 503),
        },
    )
    async def submit(body: SubmitRequest, response: Response) -> SubmitResponse:
        if len(body.input) > config.max_input_chars:
            limit = config.max_input_chars
            raise _Rejected(422, f"input is {len(body.input)} characters; the limit is {limit} (max_input_chars)")
        await daily.check()
        metadata = tracing.with_context(body.metadata)  # the worker's task span continues this request's trace
        made = await queue.submit(
            body.input,
            priority=body.priority,
            metadata=metadata,
            idempotency_key=body.idempotency_key,
            max_steps=config.max_steps_per_task,
        )
        tracing.annotate({"task.id": made.task_id, "task.priority": body.priority})
        url = status_path(made.task_id)  # relative: a Host header must not choose where clients go next
        response.headers["location"] = url
        if not made.created:
            response.status_code = 200
            record = await queue.get(made.task_id)
            return SubmitResponse(task_id=made.task_id, status=record.status, status_url=url, duplicate=True)
        log.info("task_submitted", task_id=made.task_id, priority=body.priority)
        return SubmitResponse(task_id=made.task_id, status=TaskStatus.QUEUED, status_url=url)

    @router.get("/{task_id}", response_model=TaskView, responses=_errors(401, 404, 422, 503))
    async def get_task(task_id: str) -> TaskView:
        tracing.annotate({"task.id": task_id})
        view = (await queue.get(task_id)).view()
        view.metadata.pop(tracing.CONTEXT_KEY, None)  # ours, not the client's
        return view

    cancel_responses = _errors(401, 404, 409, 422, 503)

    @router.post("/{task_id}/cancel", response_model=CancelResponse, responses=cancel_responses)
    async def cancel_task(task_id: str) -> CancelResponse:
        """Cancel a queued or running task; it stays readable, with status `cancelled`."""
        tracing.annotate({"task.id": task_id})
        status, changed = await queue.cancel(task_id)
        if status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            message = f"task {task_id} already {status.value}; only queued or running tasks can be cancelled"
            raise _Rejected(409, message)
        if changed:  # this request made the transition: count it exactly once
            record = await queue.get(task_id)
            metrics.task_finished(
                TaskStatus.CANCELLED,
                intent=metrics.intent(record.metadata.get("intent")),
                latency_seconds=time.time() - record.created_at,
                steps=record.checkpoint.step,
            )
            log.info("task_cancelled", task_id=task_id)
        return CancelResponse(task_id=task_id, status=status)

    @router.delete("/{task_id}", response_model=CancelResponse, responses=cancel_responses, deprecated=True)
    async def cancel_task_by_delete(task_id: str) -> CancelResponse:
        """Deprecated alias of `POST /v1/tasks/{task_id}/cancel`, kept for one release: it cancels, the record stays."""
        return await cancel_task(task_id)

    return router


def _cost_routes(config: RuntimeConfig, reports: CostReports) -> APIRouter:
    router = APIRouter(prefix=constants.COSTS_PATH)  # behind `_Authorized`

    @router.get("", responses=_errors(401, 422, 503))
    async def cost_report(
        start: str | None = Query(default=None, alias="from", max_length=64, description="RFC 3339; default: to - 24h"),
        end: str | None = Query(default=None, alias="to", max_length=64, description="RFC 3339; default: now"),
        top: int = Query(default=costs.DEFAULT_TOP, ge=0, le=costs.MAX_TOP, description="Dearest tasks listed."),
    ) -> dict[str, Any]:
        """Spend of a period by model, user, intent and hour, and its dearest tasks (docs/costs.md)."""
        period = costs.parse_range(start, end, now=time.time(), retention_days=config.report_retention_days)
        return await reports.report(period, top=top)

    return router


def _probe_routes(queue: TaskQueue, metrics: Metrics, daily: BudgetLedger) -> APIRouter:
    router = APIRouter()

    @router.get(constants.HEALTH_PATH, response_model=HealthBody)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        constants.READY_PATH,
        response_model=ReadyBody,
        responses={503: {"model": ReadyBody, "description": "Redis does not accept writes (the reason says why)."}},
    )
    async def ready() -> JSONResponse:
        try:
            await queue.probe()  # a write: a replica or a full Redis answers PING but refuses our writes
        except errors.StoreUnavailable as exc:
            return JSONResponse({"ready": False, "reason": str(exc)}, status_code=503)
        return JSONResponse({"ready": True})

    @router.get(
        constants.METRICS_PATH,
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    )
    async def scrape() -> Response:
        with contextlib.suppress(errors.StoreUnavailable):  # the last known depth stays; /ready says why
            metrics.set_queue_depth(await queue.depth())
            budget.export(metrics, await daily.snapshot())
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_path(task_id: str) -> str:
    """Where a task's status is served: a path relative to the API's own origin. Pure."""
    return f"{constants.TASKS_PATH}/{task_id}"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors():
        if item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "syntax error")
            return f"request body is not valid JSON: {reason}"
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {item.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def _plain(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """A handler answering `status` with the exception's message as the error."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return _error(status, str(exc))

    return handler


def _install_error_handlers(app: FastAPI, metrics: Metrics, daily: BudgetLedger) -> None:
    handlers: dict[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]] = {
        errors.TaskNotFound: _plain(404),
        errors.InvalidTask: _plain(422),
        errors.InvalidReportRange: _plain(422),
        errors.IdempotencyConflict: _plain(409),
    }

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _describe(exc))

    async def rejected(request: Request, exc: _Rejected) -> JSONResponse:
        return _error(exc.status, str(exc))

    async def unavailable(request: Request, exc: errors.StoreUnavailable) -> JSONResponse:
        log.warning("store_unavailable", error=str(exc))
        return _error(503, str(exc), {"retry-after": "1"})

    async def queue_full(request: Request, exc: errors.QueueFull) -> JSONResponse:
        return _error(429, str(exc), {"retry-after": str(QUEUE_FULL_RETRY_AFTER_SECONDS)})

    async def budget_exhausted(request: Request, exc: errors.BudgetExhausted) -> JSONResponse:
        metrics.budget_rejected("daily")
        return _error(429, str(exc), {"retry-after": str(daily.retry_after())})

    async def framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # the router's own 404 (unknown path) and 405 (wrong method, with its `allow`), body parse failures (400)
        if isinstance(exc.__cause__, RecursionError):  # JSON nested past the parser's limit: say which bound
            return _error(422, f"request body nests too deeply to parse; {_METADATA_DEPTH_RULE}")
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; list every method it serves.
            headers["allow"] = ", ".join(_allowed_methods(request))
        return _error(exc.status_code, str(exc.detail), headers)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("request_failed", error=f"{type(exc).__name__}: {exc}")
        return _error(500, "internal error; the API's log has the details (look for request_failed)")

    handlers[RequestValidationError] = validation
    handlers[_Rejected] = rejected
    handlers[errors.StoreUnavailable] = unavailable
    handlers[errors.QueueFull] = queue_full
    handlers[errors.BudgetExhausted] = budget_exhausted
    handlers[StarletteHTTPException] = framework
    handlers[Exception] = internal
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)


class _Authorized:
    """Answer 401 to a `/v1` request without the bearer token, before anything reads its body.

    A middleware, not a route dependency: FastAPI parses the body before it runs a route's
    dependencies, so a client without the token learned from a 422 how its JSON was wrong.
    `token=None` turns authentication off (local use only).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or not _protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = sent.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.token):
            message = (
                f"missing or invalid bearer token: send 'Authorization: Bearer <token>' ({constants.AUTH_TOKEN_ENV})"
            )
            await _error(401, message, {"www-authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _protected(path: str) -> bool:
    """Whether `path` is one of the token's routes (the tasks and the cost reports)."""
    return any(
        path == prefix or path.startswith(prefix + "/") for prefix in (constants.TASKS_PATH, constants.COSTS_PATH)
    )


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path.

    Asked of each route as a request with that method (a route fully matches only a method it
    serves), so it holds for routers FastAPI wraps as well as for plain routes.
    """
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.router.routes
        )
    ]


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the bearer scheme the `/v1` routes require (built once)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema.get("paths", {}).items():
            if _protected(path):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = schema
    return app.openapi_schema


class _RequestId:
    """Bind a request id (the client's `x-request-id`, or a new one) to every log line, and echo it.

    A request with a header value that is not UTF-8 is answered 400 naming the header, here, before
    anything decodes it (that was a 500).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        for name, value in headers.items():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                shown = name.decode("latin-1")[:64].encode("ascii", "replace").decode()
                await _error(400, f"header {shown!r} is not UTF-8 text")(scope, receive, send)
                return
        sent = headers.get(constants.REQUEST_ID_HEADER.encode(), b"").decode()
        # Printable ASCII only: the id is echoed in a header and written to every log line.
        request_id = "".join(c for c in sent if " " < c < "\x7f")[:128] or uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (constants.REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class _Traced:
    """A server span per `/v1` request (probes and scrapes are not traced), continuing a client's `traceparent`.

    The span is named after the route template (`GET /v1/tasks/{task_id}`), never the raw path, and
    carries no header: the bearer token stays out of traces. Handlers add the task id (`tracing.annotate`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled() or not scope["path"].startswith(constants.TASKS_PATH):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        carrier = {k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.span(method, attributes, kind="server", parent=carrier or None) as span:
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.rename(f"{method} {route}")
                    span.set({"http.route": route})
                if status:
                    span.set({"http.response.status_code": status})
                if status >= 500:
                    span.fail(f"HTTP {status}")


class _BodyLimit:
    """Answer 413 for bodies over the limit, whether or not they declare a content-length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than {self.limit} bytes (max_body_bytes); send a shorter input"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                await _error(413, message)(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server stops at content-length
            return
        # No declared length (chunked): read up to the limit before the app sees anything, then replay.
        body = bytearray()
        while True:
            incoming = await receive()
            if incoming["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnected: let the app see it
                return
            body += incoming.get("body", b"")
            if len(body) > self.limit:
                await _error(413, message)(scope, receive, send)
                return
            if not incoming.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

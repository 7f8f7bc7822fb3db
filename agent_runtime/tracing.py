"""OpenTelemetry traces, only when an OTLP endpoint is configured and the `otel` extra is installed.

Everything else calls `span(name, attributes)`, which is a no-op context manager when tracing is
off, so no other module imports OpenTelemetry and the runtime runs without it. `configure` is called
once per process by the CLI (the composition root) and `shutdown` before it exits: the exporter
batches spans in a background thread, and a process that exits without flushing loses the last ones.

One task is one trace across processes: the API stores the W3C `traceparent` of its
`POST /v1/tasks` span with the task (`CONTEXT_KEY` in the task metadata), and every delivery of
that task in a worker opens its `task.run` span as a child of it.

Attributes carry identifiers, names and figures (task id, model, provider, token counts) — never
the task input, a prompt, a tool's arguments or a credential.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from agent_runtime import constants
from agent_runtime.logging import get_logger

__all__ = [
    "CONTEXT_KEY",
    "ENDPOINT_ENV",
    "Attributes",
    "Span",
    "annotate",
    "configure",
    "enabled",
    "shutdown",
    "span",
    "stored_context",
    "traceparent",
    "with_context",
]

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
CONTEXT_KEY = "_traceparent"  # the task metadata key holding the submitting request's trace context

AttributeValue = str | int | float | bool | Sequence[str]
Attributes = Mapping[str, AttributeValue]
Kind = Literal["internal", "server", "consumer", "client"]

log = get_logger(__name__)


class _Tracing:
    """The process's tracer and what `span` needs from the SDK, set once by `configure`."""

    def __init__(self, provider: Any, tracer: Any, trace: Any, propagator: Any) -> None:
        self.provider = provider
        self.tracer = tracer
        self.trace = trace  # the `opentelemetry.trace` module: span kinds, statuses, the current span
        self.propagator = propagator


_state: _Tracing | None = None


def configure(
    service_name: str, environ: Mapping[str, str] | None = None, *, resource: Attributes | None = None
) -> bool:
    """Install an OTLP/HTTP exporter if an endpoint is configured; return whether tracing is on.

    `resource` adds resource attributes (service, track, component) to `service.name`; the standard
    `OTEL_*` variables (headers, timeout, `OTEL_RESOURCE_ATTRIBUTES`) are read by the SDK itself.
    """
    global _state  # the composition root's single tracer (set once per process)  # noqa: PLW0603
    env = os.environ if environ is None else environ
    if not (env.get(ENDPOINT_ENV) or env.get(TRACES_ENDPOINT_ENV)):
        return False
    try:
        from opentelemetry import trace  # noqa: PLC0415  (optional dependency: the `otel` extra)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: PLC0415
    except ImportError as exc:
        log.warning("tracing_unavailable", reason=f"{ENDPOINT_ENV} is set but the otel extra is not installed: {exc}")
        return False
    if _state is not None:  # a second configure would leave the first provider's spans unflushed
        return True
    instance = env.get(constants.POD_NAME_ENV) or f"{socket.gethostname()}-{os.getpid()}"
    attributes = {"service.name": service_name, "service.instance.id": instance, **(resource or {})}
    # The SDK also flushes at exit (atexit), but a process forked by multiprocessing never runs
    # atexit hooks: the CLI calls `shutdown` itself.
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _state = _Tracing(provider, provider.get_tracer("agent_runtime"), trace, TraceContextTextMapPropagator())
    log.info("tracing_enabled", service_name=service_name)
    return True


def enabled() -> bool:
    return _state is not None


def shutdown() -> None:
    """Export the spans still batched and stop the exporter (call before the process exits)."""
    global _state
    if _state is None:
        return
    state, _state = _state, None
    state.provider.shutdown()


class Span:
    """The handle `span` yields: add what is known only later (a no-op when tracing is off)."""

    def __init__(self, otel_span: Any = None, state: _Tracing | None = None) -> None:
        self._span = otel_span
        self._state = state

    def set(self, attributes: Attributes) -> None:
        if self._span is not None:
            self._span.set_attributes(dict(attributes))

    def rename(self, name: str) -> None:
        if self._span is not None:
            self._span.update_name(name)

    def fail(self, description: str) -> None:
        """Mark the span as an error (an exception leaving the block does so by itself)."""
        if self._span is not None and self._state is not None:
            self._span.set_status(self._state.trace.Status(self._state.trace.StatusCode.ERROR, description))


@contextlib.contextmanager
def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: Kind = "internal",
    parent: str | Mapping[str, str] | None = None,
    **more: AttributeValue,
) -> Iterator[Span]:
    """A span around the block, current inside it; nothing when tracing is off.

    `parent` is a W3C `traceparent` string or a carrier of trace headers (incoming HTTP headers):
    the span continues that trace instead of the current one. An unparsable parent starts a new trace.
    """
    state = _state
    if state is None:
        yield Span()
        return
    context = None
    if parent is not None:
        carrier = {"traceparent": parent} if isinstance(parent, str) else parent
        context = state.propagator.extract(carrier)
    with state.tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(state.trace.SpanKind, kind.upper()),
        attributes={**(attributes or {}), **more},
    ) as otel_span:
        yield Span(otel_span, state)


def annotate(attributes: Attributes) -> None:
    """Add attributes to the current span (no-op when tracing is off or no span is current)."""
    if _state is not None:
        _state.trace.get_current_span().set_attributes(dict(attributes))


def traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to hand the trace to another process; None when off."""
    if _state is None:
        return None
    carrier: dict[str, str] = {}
    _state.propagator.inject(carrier)
    return carrier.get("traceparent")


def with_context(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Task metadata to store: the client's, plus the current trace context when tracing is on.

    A client's own `CONTEXT_KEY` is dropped either way: a client continues its trace with a
    `traceparent` header, which makes the request span (and so the task) part of it.
    """
    stored = {key: value for key, value in metadata.items() if key != CONTEXT_KEY}
    context = traceparent()
    if context is not None:
        stored[CONTEXT_KEY] = context
    return stored


def stored_context(metadata: Mapping[str, Any]) -> str | None:
    """The trace context `with_context` stored with a task, if any."""
    value = metadata.get(CONTEXT_KEY)
    return value if isinstance(value, str) else None

"""OpenTelemetry traces, only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `otel` extra is installed.

Everything else calls `span(name, **attributes)`, which is a no-op context manager when tracing is
off, so no module imports OpenTelemetry directly and the runtime runs without it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from agent_runtime.logging import get_logger

__all__ = ["ENDPOINT_ENV", "configure", "enabled", "span"]

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
_tracer: Any = None
log = get_logger(__name__)


def configure(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install an OTLP/HTTP exporter if an endpoint is configured; return whether tracing is on."""
    global _tracer  # the composition root's single tracer (set once per process)  # noqa: PLW0603
    env = os.environ if environ is None else environ
    if not env.get(ENDPOINT_ENV):
        return False
    try:
        trace = importlib.import_module("opentelemetry.trace")
        sdk_trace = importlib.import_module("opentelemetry.sdk.trace")
        export = importlib.import_module("opentelemetry.sdk.trace.export")
        resources = importlib.import_module("opentelemetry.sdk.resources")
        otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError as exc:
        log.warning("tracing_unavailable", reason=f"{ENDPOINT_ENV} is set but the otel extra is not installed: {exc}")
        return False
    provider = sdk_trace.TracerProvider(resource=resources.Resource.create({"service.name": service_name}))
    provider.add_span_processor(export.BatchSpanProcessor(otlp.OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("agent_runtime")
    return True


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """A span around the block when tracing is on; nothing otherwise."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield

"""A tiny real Prometheus exporter serving runtime-shaped series whose values the test controls.

The series carry the runtime's names and labels (`agent_runtime.constants`):
`agent_requests_total{service,track,status,intent}`, `agent_latency_seconds_bucket{service,track,le}`
(and `_sum`, `_count`), `agent_cost_usd_total{service,track}` and
`agent_provider_fallbacks_total{service,track}`. No `namespace` label: outside Kubernetes nothing adds
one.

A test sets a `Traffic` profile per (service, track); a background thread turns it into finished
tasks every `tick` seconds, one counter increment per task, as a runtime would. It finishes the
tasks the time elapsed since its last round owes, so a CPU-starved thread that wakes late catches
up instead of producing fewer requests per second than the profile says. Errors and fallbacks
are spread evenly (an error accumulator, not randomness), so a 30 % profile is 30 % in every window.
Setting a profile creates the track's series at zero, like a runtime that is up but idle; a track
never set has no series at all (no data).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from agent_runtime import constants

__all__ = ["LATENCY_BUCKETS", "MetricsExporter", "Traffic"]

LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
INTENT = "chat"
PROVIDER = "primary"


@dataclass(frozen=True)
class Traffic:
    """What one track of one service does per second."""

    requests_per_second: float = 0.0
    error_ratio: float = 0.0  # share of finished tasks that fail
    latency_seconds: float = 1.0  # every task takes this long
    cost_per_task: float = 0.0  # USD
    fallbacks_per_task: float = 0.0
    provider_error_ratio: float = 0.0  # share of tasks whose first model call fails (then a retry succeeds)


@dataclass
class _Track:
    traffic: Traffic
    pending: float = 0.0  # tasks owed but not yet finished (fractions carry over between ticks)
    errors_owed: float = 0.0
    fallbacks_owed: float = 0.0
    provider_errors_owed: float = 0.0


class MetricsExporter:
    """An HTTP `/metrics` endpoint on a free loopback port plus the thread that produces traffic."""

    def __init__(self, *, host: str = "127.0.0.1", tick: float = 0.1) -> None:
        self.registry = CollectorRegistry()
        labels = [constants.LABEL_SERVICE, constants.LABEL_TRACK]
        self.requests = Counter(
            constants.METRIC_REQUESTS, "Finished tasks.", [*labels, "status", "intent"], registry=self.registry
        )
        self.latency = Histogram(
            constants.METRIC_LATENCY, "Task latency.", labels, buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.cost = Counter(constants.METRIC_COST, "LLM spend in USD.", labels, registry=self.registry)
        self.fallbacks = Counter(
            constants.METRIC_PROVIDER_FALLBACKS, "Calls moved to another provider.", labels, registry=self.registry
        )
        self.provider_calls = Counter(
            constants.METRIC_PROVIDER_CALLS,
            "Model calls sent to a provider, by outcome.",
            [*labels, "provider", "outcome"],
            registry=self.registry,
        )
        self.host = host
        self.tick = tick
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server, self._server_thread = start_http_server(0, addr=host, registry=self.registry)
        self._producer = threading.Thread(target=self._produce, name="metrics-exporter-traffic", daemon=True)
        self._producer.start()

    @property
    def target(self) -> str:
        """`host:port` for a Prometheus scrape config."""
        return f"{self.host}:{self._server.server_port}"

    def set(self, service: str, track: str, traffic: Traffic) -> None:
        """Make one track of one service behave like `traffic` from now on."""
        with self._lock:
            current = self._tracks.get((service, track))
            self._tracks[(service, track)] = _Track(traffic) if current is None else _Track(traffic, current.pending)
            # an idle runtime still exposes its series, at zero
            self.requests.labels(service, track, "succeeded", INTENT)
            self.latency.labels(service, track)
            self.cost.labels(service, track)
            self.fallbacks.labels(service, track)
            self.provider_calls.labels(service, track, PROVIDER, "ok")

    def _produce(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                for (service, track), state in self._tracks.items():
                    self._finish_tasks(service, track, state, elapsed)

    def _finish_tasks(self, service: str, track: str, state: _Track, elapsed: float) -> None:
        traffic = state.traffic
        state.pending += traffic.requests_per_second * elapsed
        tasks = int(state.pending)
        state.pending -= tasks
        for _ in range(tasks):
            state.errors_owed += traffic.error_ratio
            status = "succeeded"
            if state.errors_owed >= 1:
                state.errors_owed -= 1
                status = "failed"
            self.requests.labels(service, track, status, INTENT).inc()
            self.latency.labels(service, track).observe(traffic.latency_seconds)
            if traffic.cost_per_task:
                self.cost.labels(service, track).inc(traffic.cost_per_task)
            state.provider_errors_owed += traffic.provider_error_ratio
            if state.provider_errors_owed >= 1:
                state.provider_errors_owed -= 1
                self.provider_calls.labels(service, track, PROVIDER, "unavailable").inc()
            self.provider_calls.labels(service, track, PROVIDER, "ok").inc()
            state.fallbacks_owed += traffic.fallbacks_per_task
            if state.fallbacks_owed >= 1:
                whole = int(state.fallbacks_owed)
                state.fallbacks_owed -= whole
                self.fallbacks.labels(service, track).inc(whole)

    def close(self) -> None:
        """Stop producing and serving; join both threads."""
        self._stop.set()
        self._producer.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()
        self._server_thread.join(timeout=5)

    def __enter__(self) -> MetricsExporter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""Every Prometheus metric of the runtime, on an injected registry, labelled with service and track.

Names come from `constants` (alert rules, dashboards, the HPA and canary analysis use the same
ones). Label sets are bounded: `intent` is one of `RuntimeConfig.known_intents`, `default` or
`other`; never a task id. prometheus_client exposes the counter `agent_cost_usd` as
`agent_cost_usd_total` and the histogram `agent_latency_seconds` as `_bucket/_sum/_count`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from agent_runtime import constants
from agent_runtime.tasks import CallUsage, TaskStatus

__all__ = ["DEFAULT_INTENT", "OTHER_INTENT", "Metrics"]

DEFAULT_INTENT = "default"
OTHER_INTENT = "other"
_BASE = (constants.LABEL_SERVICE, constants.LABEL_TRACK)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_STEP_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50)
_FINAL = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED)
_TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOOL_STATUSES = ("ok", "error", "timeout", "interrupted")
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The runtime's metrics for one service and track."""

    def __init__(
        self, registry: CollectorRegistry, *, service: str, track: str, known_intents: Iterable[str] = ()
    ) -> None:
        self.registry = registry
        self.service = service
        self.track = track
        self.known_intents = frozenset(known_intents)
        self.requests = Counter(
            constants.METRIC_REQUESTS,
            "Tasks finished, by final status and intent.",
            [*_BASE, "status", "intent"],
            registry=registry,
        )
        self.latency = Histogram(
            constants.METRIC_LATENCY,
            "Task wall-clock time from submission to its final status.",
            _BASE,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.steps = Histogram(
            constants.METRIC_STEPS,
            "Agent-loop steps (model calls) per finished task.",
            _BASE,
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.cost = Counter(constants.METRIC_COST, "LLM spend in USD.", _BASE, registry=registry)
        self.model_cost = Counter(
            constants.METRIC_MODEL_COST,
            "LLM spend in USD by the model that answered and the route that chose it.",
            [*_BASE, "model", "route"],
            registry=registry,
        )
        self.model_calls = Counter(
            constants.METRIC_MODEL_CALLS,
            "Model calls answered, by model and route.",
            [*_BASE, "model", "route"],
            registry=registry,
        )
        self.model_tokens = Counter(
            constants.METRIC_MODEL_TOKENS,
            "Tokens of answered model calls, by model and kind (input, output).",
            [*_BASE, "model", "kind"],
            registry=registry,
        )
        self.active = Gauge(constants.METRIC_ACTIVE, "Tasks running now in this process.", _BASE, registry=registry)
        self.tool_calls = Counter(
            constants.METRIC_TOOL_CALLS,
            "Tool calls, by tool and outcome.",
            [*_BASE, "tool_name", "status"],
            registry=registry,
        )
        self.tool_latency = Histogram(
            constants.METRIC_TOOL_LATENCY,
            "Tool call duration, by tool (any outcome).",
            [*_BASE, "tool_name"],
            buckets=_TOOL_BUCKETS,
            registry=registry,
        )
        self.tool_server_up = Gauge(
            constants.METRIC_TOOL_SERVER_UP,
            "1 while the MCP server is connected and has listed its tools, 0 while it cannot be reached.",
            [*_BASE, "server"],
            registry=registry,
        )
        self.tool_circuit = Gauge(
            constants.METRIC_TOOL_CIRCUIT,
            "An MCP server's circuit breaker in this process: 0 closed, 1 half-open, 2 open.",
            [*_BASE, "server"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            constants.METRIC_QUEUE_DEPTH,
            "Tasks waiting or pending in the queue (all priorities).",
            _BASE,
            registry=registry,
        )
        self.provider_up = Gauge(
            constants.METRIC_PROVIDER_HEALTHY,
            "1 while the provider answers, 0 after a failed call.",
            [*_BASE, "provider"],
            registry=registry,
        )
        self.fallbacks = Counter(
            constants.METRIC_PROVIDER_FALLBACKS,
            "Model calls moved to another provider.",
            [*_BASE, "provider"],
            registry=registry,
        )
        self.circuit = Gauge(
            constants.METRIC_CIRCUIT_STATE,
            "Circuit breaker state: 0 closed, 1 half-open, 2 open (the service's, shared through Redis;"
            " this process's own while it cannot reach Redis).",
            [*_BASE, "provider"],
            registry=registry,
        )
        self.provider_calls = Counter(
            constants.METRIC_PROVIDER_CALLS,
            "Model calls sent to a provider, by outcome (ok, unavailable, rate_limited, error).",
            [*_BASE, "provider", "outcome"],
            registry=registry,
        )
        self.ratelimit_wait = Histogram(
            constants.METRIC_RATELIMIT_WAIT,
            "Time a model call waited for its shared rate-limit slot (and any provider backoff).",
            [*_BASE, "provider"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.degradation = Gauge(
            constants.METRIC_DEGRADATION,
            "Degradation level: 0 full, 1 reduced_tools, 2 fallback_only, 3 static.",
            _BASE,
            registry=registry,
        )
        self.cache = Counter(
            constants.METRIC_CACHE,
            "Response cache lookups, by result (hit, miss).",
            [*_BASE, "result"],
            registry=registry,
        )
        self.budget_rejections = Counter(
            constants.METRIC_BUDGET_REJECTIONS,
            "Submissions refused and tasks held or failed by the daily budget (daily);"
            " tasks stopped by their own (per_task).",
            [*_BASE, "budget"],
            registry=registry,
        )
        self.budget_spent = Gauge(
            constants.METRIC_BUDGET_SPENT,
            "Settled LLM spend of the UTC day, service-wide (read from Redis at scrape).",
            _BASE,
            registry=registry,
        )
        self.budget_reserved = Gauge(
            constants.METRIC_BUDGET_RESERVED,
            "USD reserved by model calls in flight (their worst case), service-wide.",
            _BASE,
            registry=registry,
        )
        self.budget_remaining = Gauge(
            constants.METRIC_BUDGET_REMAINING,
            "Daily budget minus spent and reserved, service-wide (absent without a daily budget).",
            _BASE,
            registry=registry,
        )
        self.budget_held = Gauge(
            constants.METRIC_BUDGET_HELD,
            "Tasks waiting for the daily budget to come back (budget.onExhausted: hold), service-wide.",
            _BASE,
            registry=registry,
        )
        self._refreshers: list[Callable[[], None]] = []
        # Create the zero-valued series up front: "no traffic yet" then reads 0, not "no data".
        for status in _FINAL:
            self.requests.labels(service, track, status.value, DEFAULT_INTENT)
        for metric in (self.latency, self.steps, self.cost, self.active, self.queue_depth, self.degradation):
            metric.labels(service, track)
        for result in ("hit", "miss"):
            self.cache.labels(service, track, result)
        for budget in ("daily", "per_task"):
            self.budget_rejections.labels(service, track, budget)

    def intent(self, value: object) -> str:
        """The bounded label value for a task's metadata.intent."""
        if value is None or value == "":
            return DEFAULT_INTENT
        return str(value) if value in self.known_intents else OTHER_INTENT

    def task_finished(self, status: TaskStatus, *, intent: str, latency_seconds: float, steps: int) -> None:
        self.requests.labels(self.service, self.track, status.value, intent).inc()
        self.latency.labels(self.service, self.track).observe(max(latency_seconds, 0.0))
        self.steps.labels(self.service, self.track).observe(steps)

    def spent(self, usd: float) -> None:
        if usd > 0:
            self.cost.labels(self.service, self.track).inc(usd)

    def model_call(self, model: str, *, route: str, call: CallUsage) -> None:
        """One answered call: its cost (as the ledger settles it), tokens and count, by model and route."""
        self.model_calls.labels(self.service, self.track, model, route).inc()
        self.model_cost.labels(self.service, self.track, model, route).inc(call.cost_micros / 1_000_000)
        self.model_tokens.labels(self.service, self.track, model, "input").inc(call.input_tokens)
        self.model_tokens.labels(self.service, self.track, model, "output").inc(call.output_tokens)

    def task_started(self) -> None:
        self.active.labels(self.service, self.track).inc()

    def task_stopped(self) -> None:
        self.active.labels(self.service, self.track).dec()

    def tool_called(self, tool_name: str, ok: bool) -> None:
        self.tool_calls.labels(self.service, self.track, tool_name, "ok" if ok else "error").inc()

    def tool_call(self, tool_name: str, status: str, seconds: float) -> None:
        """One call of a tool (`status`: one of TOOL_STATUSES); tool names are the configured ones, bounded."""
        self.tool_calls.labels(self.service, self.track, tool_name, status).inc()
        if tool_name != "unknown":
            self.tool_latency.labels(self.service, self.track, tool_name).observe(max(seconds, 0.0))

    def tool_server(self, server: str, *, up: bool) -> None:
        self.tool_server_up.labels(self.service, self.track, server).set(1 if up else 0)

    def tool_circuit_state(self, server: str, state: int) -> None:
        self.tool_circuit.labels(self.service, self.track, server).set(state)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.labels(self.service, self.track).set(depth)

    def provider_healthy(self, provider: str, healthy: bool) -> None:
        self.provider_up.labels(self.service, self.track, provider).set(1 if healthy else 0)

    def provider_fallback(self, provider: str) -> None:
        self.fallbacks.labels(self.service, self.track, provider).inc()

    def circuit_state(self, provider: str, state: int) -> None:
        self.circuit.labels(self.service, self.track, provider).set(state)

    def providers_configured(self, providers: Iterable[str]) -> None:
        """Export every outcome of every provider at 0 from the start.

        A counter series that first appears at its first failure has no earlier sample, so
        `increase()` over a window misses that failure (the canary's provider error ratio saw a
        fault one scrape late); a series present at 0 counts it from its first increment.
        """
        for provider in providers:
            for outcome in constants.PROVIDER_OUTCOMES:
                self.provider_calls.labels(self.service, self.track, provider, outcome)

    def provider_call(self, provider: str, outcome: str) -> None:
        self.provider_calls.labels(self.service, self.track, provider, outcome).inc()

    def waited_for_slot(self, provider: str, seconds: float) -> None:
        self.ratelimit_wait.labels(self.service, self.track, provider).observe(max(seconds, 0.0))

    def degradation_level(self, level: int) -> None:
        self.degradation.labels(self.service, self.track).set(level)

    def cache_lookup(self, hit: bool) -> None:
        self.cache.labels(self.service, self.track, "hit" if hit else "miss").inc()

    def budget_rejected(self, budget: str) -> None:
        self.budget_rejections.labels(self.service, self.track, budget).inc()

    def budget(self, *, spent_usd: float, reserved_usd: float, remaining_usd: float | None, held: int) -> None:
        """Export the day's money as last read from Redis."""
        self.budget_spent.labels(self.service, self.track).set(spent_usd)
        self.budget_reserved.labels(self.service, self.track).set(reserved_usd)
        if remaining_usd is not None:
            self.budget_remaining.labels(self.service, self.track).set(remaining_usd)
        self.budget_held.labels(self.service, self.track).set(held)

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Run `refresh` before each exposition (time-driven values such as a circuit's cool-down)."""
        self._refreshers.append(refresh)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        for refresh in self._refreshers:
            refresh()
        return generate_latest(self.registry)

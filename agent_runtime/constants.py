"""Every name the runtime shares with the outside world: metrics, Redis keys, ports, env vars.

The operator's builders (alert rules, dashboards, autoscalers, Deployments) import these names
so that a rename cannot leave a dashboard or an HPA pointing at a metric that no longer exists.
"""

from dataclasses import dataclass
from typing import Final

# --- metrics (labels: service and track on every one) ---
METRIC_REQUESTS: Final = "agent_requests_total"  # labels: status (succeeded|failed|cancelled), intent
METRIC_LATENCY: Final = "agent_latency_seconds"  # histogram of task wall-clock time
METRIC_STEPS: Final = "agent_steps_count"  # histogram of agent-loop steps per task
METRIC_COST: Final = "agent_cost_usd"  # counter of LLM spend (exported as agent_cost_usd_total)
# Model calls by the model that answered and the route that chose it (`routing`; `default` without):
# both bounded by the spec (models of spec.model.providers, names of its rules).
METRIC_MODEL_COST: Final = "agent_model_cost_usd"  # counter (exported as agent_model_cost_usd_total)
METRIC_MODEL_CALLS: Final = "agent_model_calls_total"  # labels: model, route
METRIC_MODEL_TOKENS: Final = "agent_model_tokens_total"  # labels: model, kind (input|output)
METRIC_ACTIVE: Final = "active_agents"  # gauge of tasks running now
METRIC_TOOL_CALLS: Final = "agent_tool_calls_total"  # labels: tool_name, status
METRIC_QUEUE_DEPTH: Final = "agent_queue_depth"  # gauge: waiting + pending entries
METRIC_PROVIDER_HEALTHY: Final = "llm_provider_healthy"  # gauge 0/1, label: provider
METRIC_PROVIDER_FALLBACKS: Final = "agent_provider_fallbacks_total"  # calls moved to another provider
METRIC_CIRCUIT_STATE: Final = "llm_circuit_state"  # gauge 0 closed, 1 half-open, 2 open; label: provider
METRIC_PROVIDER_CALLS: Final = "llm_provider_calls_total"  # labels: provider, outcome (PROVIDER_OUTCOMES)
PROVIDER_OUTCOMES: Final = ("ok", "unavailable", "rate_limited", "error")
METRIC_RATELIMIT_WAIT: Final = "llm_ratelimit_wait_seconds"  # histogram of time spent waiting for a slot
METRIC_TOOL_LATENCY: Final = "agent_tool_call_seconds"  # histogram, label: tool_name
METRIC_TOOL_SERVER_UP: Final = "agent_tool_server_up"  # gauge 1/0, label: server (MCP servers)
METRIC_TOOL_CIRCUIT: Final = "agent_tool_circuit_state"  # gauge 0 closed, 1 half-open, 2 open, label: server
METRIC_DEGRADATION: Final = "agent_degradation_level"  # gauge 0 full, 1 reduced_tools, 2 fallback_only, 3 static
METRIC_CACHE: Final = "agent_cache_requests_total"  # label: result (hit|miss)
METRIC_BUDGET_REJECTIONS: Final = "agent_budget_rejections_total"  # label: budget (daily|per_task)
# The day's money as Redis holds it, service-wide (every replica exports the same figure: use max()).
METRIC_BUDGET_SPENT: Final = "agent_budget_spent_usd"  # gauge: settled spend of the UTC day
METRIC_BUDGET_RESERVED: Final = "agent_budget_reserved_usd"  # gauge: reserved by calls in flight
METRIC_BUDGET_REMAINING: Final = "agent_budget_remaining_usd"  # gauge: daily budget - spent - reserved
METRIC_BUDGET_HELD: Final = "agent_budget_held_tasks"  # gauge: tasks waiting for money (onExhausted: hold)
# Series names as exposed by prometheus_client (counters gain `_total`, histograms `_bucket/_sum/_count`);
# alert rules, dashboards and canary queries use these.
SERIES_REQUESTS: Final = "agent_requests_total"
SERIES_LATENCY_BUCKET: Final = "agent_latency_seconds_bucket"
SERIES_COST: Final = "agent_cost_usd_total"
SERIES_MODEL_COST: Final = "agent_model_cost_usd_total"
SERIES_FALLBACKS: Final = "agent_provider_fallbacks_total"
SERIES_PROVIDER_CALLS: Final = METRIC_PROVIDER_CALLS
LABEL_SERVICE: Final = "service"
LABEL_TRACK: Final = "track"

# --- processes ---
API_PORT: Final = 8080  # task API, /health, /ready and /metrics
WORKER_METRICS_PORT: Final = 9090  # worker /health and /metrics
HEALTH_PATH: Final = "/health"
READY_PATH: Final = "/ready"
METRICS_PATH: Final = "/metrics"

# --- environment ---
CONFIG_PATH: Final = "/etc/agent-runtime/config.json"
CONFIG_PATH_ENV: Final = "AGENT_CONFIG_PATH"
AUTH_TOKEN_ENV: Final = "AGENT_AUTH_TOKEN"
REDIS_URL_ENV: Final = "AGENT_REDIS_URL"
TRACK_ENV: Final = "AGENT_TRACK"
SERVICE_ENV: Final = "AGENT_SERVICE"
QUEUE_LANE_ENV: Final = "AGENT_QUEUE_LANE"  # overrides RuntimeConfig.queue_lane (the operator sets it per track)
POD_NAME_ENV: Final = "AGENT_POD_NAME"

# --- Redis keys: `ServiceKeys` below builds every one of them ---
KEY_PREFIX: Final = "agent"
CONSUMER_GROUP: Final = "workers"
PRIORITIES: Final = ("high", "normal", "low")
DEAD_LETTER_SUFFIX: Final = "dead"


def provider_key_env(provider_name: str) -> str:
    """Name of the environment variable that carries one provider's API key."""
    return "AGENT_PROVIDER_" + provider_name.upper().replace("-", "_") + "_API_KEY"


def mcp_header_env(server_name: str, index: int) -> str:
    """Name of the environment variable that carries the value of an MCP server's `index`-th header."""
    return "AGENT_MCP_" + server_name.upper().replace("-", "_") + f"_HEADER_{index}"


DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
TASK_ID_HEADER: Final = "x-agent-task-id"  # sent with every model call, so provider logs name the task
REQUEST_ID_HEADER: Final = "x-request-id"
TASKS_PATH: Final = "/v1/tasks"
COSTS_PATH: Final = "/v1/costs"


@dataclass(frozen=True)
class ServiceKeys:
    """Every Redis key of one service: `agent:{<namespace>/<service>}:<concept>:…`.

    Several services, in several namespaces, may share one Redis: the namespace is part of every
    key, so two services of the same name in two namespaces share nothing (tasks, queue,
    idempotency keys, cache, budget, limiter, circuit breakers). The braces are a Redis Cluster hash tag: all keys
    of a service hash to one slot, so the multi-key Lua scripts stay valid on a Cluster.
    Namespace and service are Kubernetes names (no braces), and whatever a client supplies
    (task ids, idempotency keys) comes after the tag, so it cannot move a key to another slot.
    """

    namespace: str
    service: str
    # A queue of its own (`RuntimeConfig.queue_lane`): a candidate that must not see user tasks
    # until its evaluation passes reads streams no user-facing API writes to. "" is the main queue.
    lane: str = ""

    @property
    def tag(self) -> str:
        """The hash tag shared by every key of the service."""
        return f"{{{self.namespace}/{self.service}}}"

    def key(self, *parts: str) -> str:
        """The one rule: every key below is made here."""
        return ":".join((KEY_PREFIX, self.tag, *parts))

    def stream(self, priority: str) -> str:
        """The Redis stream of one priority level (of the lane, when there is one)."""
        return self.key("lane", self.lane, "tasks", priority) if self.lane else self.key("tasks", priority)

    def queued_bytes(self) -> str:
        """The bytes the records of the tasks not yet ended hold (an integer; `limits.maxQueuedInputBytes`)."""
        return self.key("queued", "bytes")

    def queued_sizes(self) -> str:
        """Each such task's size in bytes, by task id: what its end takes off `queued_bytes`, once."""
        return self.key("queued", "sizes")

    def dead_letter(self) -> str:
        """The stream receiving tasks that failed too many deliveries, with their last error."""
        return self.key("tasks", DEAD_LETTER_SUFFIX)

    def task(self, task_id: str) -> str:
        """The hash holding one task's record, checkpoint included."""
        return self.key("task", task_id)

    def idempotency(self, key: str) -> str:
        """The hash mapping a client's idempotency key to the task it created and a digest of that request."""
        return self.key("idem", key)

    def ratelimit(self, provider: str, part: str) -> str:
        """A provider's shared limiter state: `requests` / `tokens` (GCRA arrival times) or `backoff`."""
        return self.key("ratelimit", provider, part)

    def breaker(self, provider: str) -> str:
        """A provider's circuit, shared by every replica (`circuits.SharedCircuit`): a hash, absent while closed."""
        return self.key("breaker", provider)

    def cache(self, digest: str) -> str:
        """A cached model reply, by the hash of its request."""
        return self.key("cache", digest)

    def spend(self, day: str) -> str:
        """The day's spend in USD as a float, as written before reservations (read once to seed `budget_spent`)."""
        return self.key("spend", day)

    def budget_spent(self, day: str) -> str:
        """Micro-USD the service spent (settled) on one UTC day (`YYYY-MM-DD`), shared by every replica."""
        return self.key("budget", "spent", day)

    def budget_task(self, task_id: str) -> str:
        """Micro-USD one task has spent (settled), across all its deliveries."""
        return self.key("budget", "task", task_id)

    def budget_holds(self) -> str:
        """The hash of live reservations: id → `day|task|fence|micro-USD`."""
        return self.key("budget", "holds")

    def budget_expiry(self) -> str:
        """The sorted set of live reservations by expiry (Redis time, µs): a dead worker's come back."""
        return self.key("budget", "expiry")

    def budget_held(self) -> str:
        """The sorted set of tasks put aside until money comes back (`budget.onExhausted: hold`); per lane,
        so a task held in a lane goes back to that lane's streams."""
        return self.key("lane", self.lane, "budget", "held") if self.lane else self.key("budget", "held")

    def costs_hour(self, hour: str) -> str:
        """One UTC hour's cost figures (`YYYY-MM-DDTHH`): a hash of micro-USD, requests and tokens, by model,
        user and intent (`costs.py`)."""
        return self.key("costs", "hour", hour)

    def costs_top(self, day: str) -> str:
        """The day's dearest finished tasks: task id → micro-USD (a sorted set, kept short)."""
        return self.key("costs", "top", day)

    def costs_top_info(self, day: str) -> str:
        """The model, tokens and finish time of each task in the day's ranking (a hash of JSON)."""
        return self.key("costs", "topinfo", day)

    def probe(self) -> str:
        """Written by the readiness probes: a replica is ready only while Redis accepts writes."""
        return self.key("probe")

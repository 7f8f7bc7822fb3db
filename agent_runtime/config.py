"""Runtime configuration: one model shared by the runtime and the operator's ConfigMap builder.

The operator renders `RuntimeConfig` as JSON into the runtime ConfigMap (mounted at
`CONFIG_PATH`); secrets never enter it: they arrive as environment variables named here
(`constants.AUTH_TOKEN_ENV`, `constants.REDIS_URL_ENV`, each provider's `api_key_env`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_runtime.constants import CONFIG_PATH, CONFIG_PATH_ENV, QUEUE_LANE_ENV, SERVICE_ENV, TRACK_ENV, ServiceKeys
from agent_runtime.redisconn import RedisSettings

_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# A shared Redis that one service cannot fill: tasks not yet ended, and the bytes their records hold.
DEFAULT_MAX_QUEUED_TASKS = 10_000
DEFAULT_MAX_QUEUED_INPUT_BYTES = 64 * 1024 * 1024


class Track(StrEnum):
    STABLE = "stable"
    CANARY = "canary"


class ProviderConfig(BaseModel):
    """One LLM endpoint as the runtime sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str = "anthropic"
    model: str
    base_url: str | None = None
    weight: int = 1
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="This provider's request limit; None: RuntimeConfig.requests_per_minute."
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="This provider's token limit; None: RuntimeConfig.tokens_per_minute."
    )


class PriceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float
    output_per_mtok: float


class ToolPolicyConfig(BaseModel):
    """What the runtime allows one group of tools (an MCP server, a Python module); see `tools.Policy`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_tools: list[str] | None = Field(default=None, description="Tool names offered; None: all.")
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_result_bytes: int = Field(default=65_536, ge=1)
    side_effects: Literal["none", "external"] = "external"


class McpServerConfig(ToolPolicyConfig):
    """One MCP server: `url` (streamable HTTP) or `command` (stdio)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=24)
    url: str | None = None
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header name -> the environment variable holding its value."
    )
    command: list[str] | None = None


class PythonToolsConfig(ToolPolicyConfig):
    module: str


class RuntimeConfig(BaseModel):
    """Everything the API and worker processes need, secrets excepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Kubernetes names (the AgentService's name and namespace): they form the hash tag of every
    # Redis key (`constants.ServiceKeys`), so they may not hold braces or slashes.
    service: str = Field(default="agent", pattern=_NAME, max_length=253)
    namespace: str = Field(default="default", pattern=_NAME, max_length=63)
    track: Track = Track.STABLE
    queue_lane: str = Field(
        default="",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        max_length=63,
        description="A queue of its own: API and workers with the same lane share streams no other lane sees"
        " ('' is the main queue; an evaluated candidate runs in its own until its gate passes).",
    )
    providers: list[ProviderConfig] = Field(default_factory=list)
    strategy: str = "failover"
    system_prompt: str = "You are a helpful agent. Use the tools when they help, then answer concisely."
    max_output_tokens: int = 1024
    requests_per_minute: int = 600
    tokens_per_minute: int = 400_000
    max_steps_per_task: int = 20
    task_timeout_seconds: int = 600
    max_input_chars: int = 100_000
    daily_budget_usd: float | None = None
    per_task_budget_usd: float | None = 1.0
    budget_on_exhausted: Literal["hold", "fail"] = Field(
        default="hold",
        description="A task whose next call does not fit the daily budget waits for money (hold) or fails (fail).",
    )
    budget_min_output_tokens: int = Field(
        default=256,
        ge=1,
        description="When the day's budget cannot cover a call's full max_output_tokens, the call may still go"
        " with its output capped to what is left, down to this many tokens (below: the task waits or is held).",
    )
    budget_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a call that does not fit waits for calls in flight to settle (their reservations"
        " are worst cases) before its task is held.",
    )
    budget_check_seconds: float = Field(
        default=5.0, gt=0, description="How often workers look whether held tasks can go back to the queue."
    )
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    report_retention_days: int = Field(
        default=35, ge=1, le=400, description="Days the cost reports' hourly figures and rankings are kept."
    )
    report_max_users: int = Field(
        default=100, ge=1, le=10_000, description="Users named in one hour's cost figures; the rest count as 'other'."
    )
    worker_concurrency: int = 8
    shutdown_grace_seconds: float = 110.0
    tools: list[str] = Field(
        default_factory=list, description="Import paths of extra tool modules (the default policy of python_tools)."
    )
    builtin_tools: list[str] | None = Field(default=None, description="Built-in tools offered; None: all of them.")
    mcp_servers: list[McpServerConfig] = Field(default_factory=list, description="MCP servers (spec.tools).")
    python_tools: list[PythonToolsConfig] = Field(default_factory=list, description="Python tool modules.")
    tool_reconnect_seconds: float = Field(
        default=5.0, gt=0, description="Longest wait between attempts to reach an MCP server that is down."
    )
    # --- queue and API tuning (defaults suit production; tests shorten the timeouts) ---
    priority_weights: dict[str, int] = Field(
        default_factory=lambda: {"high": 6, "normal": 3, "low": 1},
        description="Share of reads each priority gets while all wait; every weight > 0, so low is never starved.",
    )
    claim_idle_seconds: float = Field(
        default=60.0, gt=0, description="A task pending this long without a heartbeat is reclaimed by another worker."
    )
    max_deliveries: int = Field(default=5, ge=1, description="Deliveries before a task goes to the dead-letter stream.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest accepted request body.")
    max_queued_tasks: int | None = Field(
        default=DEFAULT_MAX_QUEUED_TASKS,
        ge=1,
        description="Submit answers 429 while this many tasks are queued or running (None: no bound).",
    )
    max_queued_input_bytes: int | None = Field(
        default=DEFAULT_MAX_QUEUED_INPUT_BYTES,
        ge=1,
        description=(
            "Submit answers 429 when the records of the tasks not yet ended (input, metadata and the rest)"
            " would pass this many bytes (None: no bound): one service cannot fill a shared Redis."
        ),
    )
    task_ttl_seconds: int = Field(default=7 * 86_400, ge=60, description="How long finished task records are kept.")
    provider_max_retries: int = Field(
        default=2,
        ge=0,
        description="Further rounds over the providers when every one failed (exponential backoff with jitter);"
        " the SDK's own retries are off, so each request goes through the limiter and the breaker.",
    )
    provider_timeout_seconds: float = Field(default=120.0, gt=0)
    # --- resilience (ratelimit.py, breaker.py, cache.py, degradation.py, budget.py) ---
    rate_limit_burst_fraction: float = Field(
        default=0.1, ge=0, le=1, description="Share of a minute's limits that may go at once after an idle spell."
    )
    rate_limit_headroom: float = Field(
        default=0.02, ge=0, le=0.5, description="Grants are spaced this much wider than the limit, absorbing jitter."
    )
    rate_limit_max_wait_seconds: float = Field(
        default=5.0, ge=0, description="Wait this long for a provider's slot before trying the next provider."
    )
    retry_base_seconds: float = Field(default=0.5, ge=0, description="First retry delay (doubles, full jitter).")
    retry_max_seconds: float = Field(default=8.0, ge=0, description="Longest retry delay.")
    breaker_failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures (5xx, timeouts) that open a provider's circuit."
    )
    breaker_cooldown_seconds: float = Field(
        default=30.0, ge=0, description="Time an open circuit waits before letting one probe call through."
    )
    breaker_scope: Literal["service", "process"] = Field(
        default="service",
        description="Where circuit state lives: in Redis, one circuit per provider for every replica (service),"
        " or in each process (process; also the fallback while Redis cannot be reached).",
    )
    degraded_tools: list[str] = Field(
        default_factory=list, description="Tools kept when degraded (reduced_tools and below); others are withheld."
    )
    cache_enabled: bool = Field(default=False, description="Serve identical model requests from the response cache.")
    cache_ttl_seconds: int = Field(default=3600, ge=1, description="How long a cached model reply is served.")
    redis: RedisSettings = Field(
        default_factory=RedisSettings, description="Kind of Redis (standalone, cluster, sentinel), TLS, replica waits."
    )
    known_intents: list[str] = Field(
        default_factory=list,
        description="Values of metadata.intent used as the metric label; others count as 'other' (bounded labels).",
    )

    def keys(self) -> ServiceKeys:
        """The service's Redis keys (namespace and service in one hash tag)."""
        return ServiceKeys(namespace=self.namespace, service=self.service, lane=self.queue_lane)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def load(environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read the mounted config file (if any), then let the environment set the track, service and queue lane."""
    env = os.environ if environ is None else environ
    path = Path(env.get(CONFIG_PATH_ENV, CONFIG_PATH))
    data = json.loads(path.read_text()) if path.exists() else {}
    if TRACK_ENV in env:
        data["track"] = env[TRACK_ENV]
    if env.get(SERVICE_ENV):
        data["service"] = env[SERVICE_ENV]
    if QUEUE_LANE_ENV in env:
        data["queue_lane"] = env[QUEUE_LANE_ENV]
    return RuntimeConfig.model_validate(data)

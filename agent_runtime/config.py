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

from pydantic import BaseModel, ConfigDict, Field

from agent_runtime.constants import CONFIG_PATH, CONFIG_PATH_ENV, TRACK_ENV


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


class PriceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_mtok: float
    output_per_mtok: float


class RuntimeConfig(BaseModel):
    """Everything the API and worker processes need, secrets excepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str = "agent"
    namespace: str = "default"
    track: Track = Track.STABLE
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
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    worker_concurrency: int = 8
    shutdown_grace_seconds: float = 110.0
    tools: list[str] = Field(default_factory=list, description="Import paths of extra tool modules.")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def load(environ: Mapping[str, str] | None = None) -> RuntimeConfig:
    """Read the mounted config file (if any), then let the environment set the track."""
    env = os.environ if environ is None else environ
    path = Path(env.get(CONFIG_PATH_ENV, CONFIG_PATH))
    data = json.loads(path.read_text()) if path.exists() else {}
    if TRACK_ENV in env:
        data["track"] = env[TRACK_ENV]
    return RuntimeConfig.model_validate(data)

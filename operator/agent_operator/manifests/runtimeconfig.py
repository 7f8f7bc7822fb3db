"""The runtime ConfigMap and the operator-managed auth Secret of one AgentService.

The ConfigMap carries `agent_runtime.config.RuntimeConfig` as JSON: the very model the runtime
loads, so the operator and the runtime cannot disagree on a field name. Secrets never enter it:
provider keys are named by `api_key_env` and reach the pods as `secretKeyRef` environment
variables (see `workloads.py`).

The auth Secret holds the token clients present to the task API. The operator generates the token
once, when the Secret does not exist yet, and never rotates it on a re-render. A builder is pure
and cannot know the token, so `build_auth_secret(svc)` returns the Secret's *shape*: no `data`,
and the annotation `agentops.dev/generated: "true"` that says the value is filled in by the
operator. That is also what `agentctl render` prints, so a GitOps diff never shows (or churns) the
token; the operator fills it in when it applies the Secret (`kube.secrets.with_token`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from agent_operator.api import models
from agent_operator.manifests import naming, redisconfig

from agent_runtime import config, constants

CONFIG_KEY: Final = "config.json"
AUTH_TOKEN_KEY: Final = "token"
GENERATED_ANNOTATION: Final = "agentops.dev/generated"
# Pod-template annotation carrying a digest of the ConfigMap data: a config change (model,
# limits, prices) changes the pod template, hence its hash, hence starts a rollout.
CONFIG_HASH_ANNOTATION: Final = "agentops.dev/config-hash"
CONFIG_COMPONENT: Final = "config"
AUTH_COMPONENT: Final = "auth"
# Seconds the worker keeps for itself between its own drain deadline and the kubelet's SIGKILL.
SHUTDOWN_MARGIN_SECONDS: Final = 10.0


def shutdown_grace_seconds(termination_grace_period_seconds: int) -> float:
    """Drain deadline of a worker: the pod's grace period minus a margin (never below half of it)."""
    grace = float(termination_grace_period_seconds)
    return max(grace - SHUTDOWN_MARGIN_SECONDS, grace / 2)


def runtime_config(svc: models.AgentService) -> config.RuntimeConfig:
    """Derive the runtime's configuration from the spec (the track comes from the pod env)."""
    spec = svc.spec
    providers = [
        config.ProviderConfig(
            name=p.name,
            kind=str(p.kind),
            model=p.model,
            base_url=p.base_url,
            weight=p.weight,
            api_key_env=constants.provider_key_env(p.name) if p.api_key_secret_ref is not None else None,
            requests_per_minute=p.requests_per_minute,
            tokens_per_minute=p.tokens_per_minute,
        )
        for p in spec.model.providers
    ]
    prices = {
        model: config.PriceConfig(input_per_mtok=price.input_per_mtok, output_per_mtok=price.output_per_mtok)
        for model, price in sorted(spec.budget.prices.items())
    }
    tools = spec.tools
    mcp_servers = [
        config.McpServerConfig(
            name=server.name,
            url=server.url,
            command=list(server.command) if server.command is not None else None,
            headers={h.name: constants.mcp_header_env(server.name, i) for i, h in enumerate(server.headers)},
            **_policy(server),
        )
        for server in tools.mcp_servers
    ]
    python_tools = [config.PythonToolsConfig(module=p.module, **_policy(p)) for p in tools.python]
    return config.RuntimeConfig(
        service=svc.metadata.name,
        namespace=svc.metadata.namespace,
        providers=providers,
        strategy=str(spec.model.strategy),
        system_prompt=spec.model.system_prompt,
        max_output_tokens=spec.model.max_output_tokens,
        requests_per_minute=spec.limits.requests_per_minute,
        tokens_per_minute=spec.limits.tokens_per_minute,
        max_steps_per_task=spec.limits.max_steps_per_task,
        task_timeout_seconds=spec.limits.task_timeout_seconds,
        max_input_chars=spec.limits.max_input_chars,
        max_queued_tasks=spec.limits.max_queued_tasks,
        max_queued_input_bytes=spec.limits.max_queued_input_bytes,
        daily_budget_usd=spec.budget.daily_usd,
        per_task_budget_usd=spec.budget.per_task_usd,
        budget_on_exhausted=str(spec.budget.on_exhausted),
        prices=prices,
        report_retention_days=spec.budget.report_retention_days,
        breaker_failure_threshold=spec.model.circuit_breaker.failure_threshold,
        breaker_cooldown_seconds=float(spec.model.circuit_breaker.cooldown_seconds),
        degraded_tools=list(spec.model.degraded_tools),
        builtin_tools=[str(b) for b in tools.builtin],
        mcp_servers=mcp_servers,
        python_tools=python_tools,
        cache_enabled=spec.cache.enabled,
        cache_ttl_seconds=spec.cache.ttl_seconds,
        worker_concurrency=spec.worker.concurrency,
        shutdown_grace_seconds=shutdown_grace_seconds(spec.worker.termination_grace_period_seconds),
        redis=redisconfig.runtime_settings(spec.redis),
    )


def _policy(policy: models.ToolPolicy) -> dict[str, Any]:
    return {
        "allow_tools": list(policy.allow_tools) if policy.allow_tools is not None else None,
        "timeout_seconds": float(policy.timeout_seconds),
        "max_result_bytes": policy.max_result_bytes,
        "side_effects": str(policy.side_effects),
    }


def config_data(svc: models.AgentService) -> dict[str, str]:
    """The ConfigMap's `data`: one key, the RuntimeConfig as sorted JSON."""
    return {CONFIG_KEY: runtime_config(svc).to_json()}


def config_hash(data: dict[str, str]) -> str:
    """A short, stable digest of ConfigMap data."""
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode())
        digest.update(b"\0")
        digest.update(data[key].encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def build_config_map(
    svc: models.AgentService,
    *,
    app_version: str,
    track: naming.Track = naming.Track.STABLE,
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The runtime ConfigMap of one track (`data` may be passed in when already computed)."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.config_map_name(name, track),
            "namespace": svc.metadata.namespace,
            "labels": {
                **naming.standard_labels(name, CONFIG_COMPONENT, app_version),
                naming.TRACK_LABEL: track.value,
            },
        },
        "data": config_data(svc) if data is None else data,
    }


def build_auth_secret(svc: models.AgentService, *, app_version: str) -> dict[str, Any]:
    """The operator-managed auth Secret's shape: no `data` (the operator fills in the token)."""
    name = svc.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": naming.auth_secret_name(name),
            "namespace": svc.metadata.namespace,
            "labels": naming.standard_labels(name, AUTH_COMPONENT, app_version),
            "annotations": {GENERATED_ANNOTATION: "true"},
        },
        "type": "Opaque",
    }

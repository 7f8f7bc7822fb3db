"""What `spec.redis` becomes in the children: runtime settings, pod env and volumes, and the KEDA trigger.

The runtime builds its client from the URL plus `RuntimeConfig.redis` (`agent_runtime.redisconn`);
this module derives both from the spec, so the operator and the runtime read one vocabulary:
- the mode, master name, TLS flag, CA path and replica waits go into the ConfigMap;
- the password reaches the pods only as a `secretKeyRef` env var, and the CA bundle as a
  read-only Secret volume whose path the ConfigMap names;
- the KEDA trigger type follows the mode (`redis-streams`, `redis-cluster-streams`,
  `redis-sentinel-streams`), and KEDA reads the password from the worker's own env var
  (`passwordFromEnv`), so no TriggerAuthentication is needed for it.
"""

from __future__ import annotations

import posixpath
from typing import Any, Final

from agent_operator.api import models

from agent_runtime import errors as runtime_errors
from agent_runtime import redisconn

CA_VOLUME: Final = "redis-ca"
CA_DIRECTORY: Final = "/etc/agent-runtime/redis-ca"
CA_FILE: Final = "ca.crt"

KEDA_TRIGGER_TYPES: Final = {
    redisconn.RedisMode.STANDALONE: "redis-streams",
    redisconn.RedisMode.CLUSTER: "redis-cluster-streams",
    redisconn.RedisMode.SENTINEL: "redis-sentinel-streams",
}


def tls_enabled(redis: models.RedisSpec) -> bool:
    return redis.tls is not None and redis.tls.enabled


def runtime_settings(redis: models.RedisSpec) -> redisconn.RedisSettings:
    """The ConfigMap's `redis` section. Pure."""
    ca = redis.tls.ca_secret_ref if redis.tls is not None else None
    return redisconn.RedisSettings(
        mode=redisconn.RedisMode(str(redis.mode)) if redis.mode is not None else None,
        master_name=redis.master_name,
        tls=tls_enabled(redis),
        tls_ca_file=posixpath.join(CA_DIRECTORY, CA_FILE) if ca is not None and tls_enabled(redis) else None,
        wait_replicas=redis.wait_replicas,
        wait_timeout_ms=redis.wait_timeout_ms,
    )


def env(redis: models.RedisSpec) -> list[dict[str, Any]]:
    """The credential env vars of the runtime containers (the password only as a secretKeyRef). Pure."""
    out: list[dict[str, Any]] = []
    if redis.username is not None:
        out.append({"name": redisconn.USERNAME_ENV, "value": redis.username})
    if redis.password_secret_ref is not None:
        ref = redis.password_secret_ref
        out.append({"name": redisconn.PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return out


def volume_mounts(redis: models.RedisSpec) -> list[dict[str, Any]]:
    if redis.tls is None or redis.tls.ca_secret_ref is None or not redis.tls.enabled:
        return []
    return [{"name": CA_VOLUME, "mountPath": CA_DIRECTORY, "readOnly": True}]


def volumes(redis: models.RedisSpec) -> list[dict[str, Any]]:
    if redis.tls is None or redis.tls.ca_secret_ref is None or not redis.tls.enabled:
        return []
    ref = redis.tls.ca_secret_ref
    return [{"name": CA_VOLUME, "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": CA_FILE}]}}]


def keda_trigger(redis: models.RedisSpec) -> tuple[str, dict[str, str]]:
    """The KEDA trigger type and its connection metadata for this Redis. Pure.

    KEDA dials Redis itself, so it needs the addresses from a literal URL (a URL kept in a Secret
    cannot be read at render time) and credentials from the worker container's env
    (`usernameFromEnv`/`passwordFromEnv`), never from the URL.
    """
    if redis.url is None:
        raise models.CrossFieldError(
            "spec.redis.urlSecretRef",
            "autoscaling engine keda needs a literal spec.redis.url: KEDA's redis streams triggers take host:port, "
            "which cannot be derived from a Secret at render time (use engine hpa, or a password-less url "
            "with redis.passwordSecretRef)",
        )
    try:
        target = redisconn.parse(redis.url, runtime_settings(redis), environ={})
    except runtime_errors.ConfigError as exc:
        raise models.CrossFieldError("spec.redis.url", str(exc)) from exc
    if target.username or target.password:
        raise models.CrossFieldError(
            "spec.redis.url",
            "autoscaling engine keda cannot pass credentials from a literal url to KEDA; "
            "use redis.username and redis.passwordSecretRef",
        )
    addresses = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in target.nodes)
    metadata: dict[str, str] = {"enableTLS": "true" if target.tls else "false"}
    if target.mode == redisconn.RedisMode.STANDALONE:
        metadata |= {"address": addresses, "databaseIndex": str(target.db)}
    elif target.mode == redisconn.RedisMode.CLUSTER:
        metadata |= {"addresses": addresses}
    else:
        assert target.master_name is not None  # parse() insists on it
        metadata |= {"addresses": addresses, "sentinelMaster": target.master_name, "databaseIndex": str(target.db)}
    if redis.username is not None:
        metadata["usernameFromEnv"] = redisconn.USERNAME_ENV
    if redis.password_secret_ref is not None:
        metadata["passwordFromEnv"] = redisconn.PASSWORD_ENV
    return KEDA_TRIGGER_TYPES[target.mode], metadata

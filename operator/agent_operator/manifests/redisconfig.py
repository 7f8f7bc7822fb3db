"""What `spec.redis` becomes in the children: runtime settings, pod env and volumes, and the KEDA trigger.

The runtime builds its client from the URL plus `RuntimeConfig.redis` (`agent_runtime.redisconn`);
this module derives both from the spec, so the operator and the runtime read one vocabulary:
- the mode, master name, TLS flag, CA path and replica waits go into the ConfigMap;
- the password reaches the pods only as a `secretKeyRef` env var, and the CA bundle as a
  read-only Secret volume whose path the ConfigMap names;
- the KEDA trigger type follows the mode (`redis-streams`, `redis-cluster-streams`,
  `redis-sentinel-streams`); KEDA reads a `passwordSecretRef` password from the worker's own env
  var (`passwordFromEnv`), and with `urlSecretRef` the address and password from other keys of that
  Secret, through a TriggerAuthentication.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class KedaTrigger:
    """How a KEDA Redis trigger reaches this Redis.

    `metadata` goes into every trigger; `secret_refs` (a TriggerAuthentication's `secretTargetRef`
    entries: parameter, Secret name, key) carry what only a Secret holds; empty: no
    TriggerAuthentication is needed.
    """

    type: str
    metadata: dict[str, str]
    secret_refs: list[dict[str, str]]


def keda_trigger(redis: models.RedisSpec) -> KedaTrigger:
    """The KEDA trigger type, its connection metadata and its Secret references for this Redis. Pure.

    KEDA dials Redis itself and takes an address and a password, never a URL:
    - a literal `url` gives the addresses (no credentials may be in it); `username` and
      `passwordSecretRef` reach KEDA from the worker container's env (`usernameFromEnv`,
      `passwordFromEnv`, which KEDA resolves from the Deployment, Secret included);
    - with `urlSecretRef` the address is secret too: a TriggerAuthentication reads it and the
      password from other keys of that same Secret (`redis.keda`), and the mode, master name, TLS
      and database come from the spec.
    """
    if redis.url_secret_ref is not None:
        return _keda_trigger_from_secret(redis, redis.url_secret_ref)
    assert redis.url is not None  # the model insists on exactly one of url and urlSecretRef
    try:
        target = redisconn.parse(redis.url, runtime_settings(redis), environ={})
    except runtime_errors.ConfigError as exc:
        raise models.CrossFieldError("spec.redis.url", str(exc)) from exc
    if target.username or target.password:
        raise models.CrossFieldError(
            "spec.redis.url",
            "autoscaling engine keda cannot pass credentials from a literal url to KEDA; "
            "use redis.username and redis.passwordSecretRef, or redis.urlSecretRef",
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
    metadata |= _credentials_from_env(redis)
    return KedaTrigger(KEDA_TRIGGER_TYPES[target.mode], metadata, _ca_ref(redis, tls=target.tls))


def _ca_ref(redis: models.RedisSpec, *, tls: bool) -> list[dict[str, str]]:
    """KEDA's `ca` parameter (the PEM bundle, read from the Secret) when TLS verifies against a private CA.

    Without it KEDA would verify the server against its own system CAs and never reach a Redis
    whose certificate a private CA signed: its scaler would fail while the pods work.
    """
    if not tls or redis.tls is None or not redis.tls.enabled or redis.tls.ca_secret_ref is None:
        return []
    return [_secret_ref("ca", redis.tls.ca_secret_ref.name, redis.tls.ca_secret_ref.key)]


def _credentials_from_env(redis: models.RedisSpec) -> dict[str, str]:
    metadata = {}
    if redis.username is not None:
        metadata["usernameFromEnv"] = redisconn.USERNAME_ENV
    if redis.password_secret_ref is not None:
        metadata["passwordFromEnv"] = redisconn.PASSWORD_ENV
    return metadata


def _keda_trigger_from_secret(redis: models.RedisSpec, ref: models.SecretKeyRef) -> KedaTrigger:
    keys = redis.keda or models.RedisKeda()
    mode = redisconn.RedisMode(str(redis.mode)) if redis.mode is not None else redisconn.RedisMode.STANDALONE
    metadata: dict[str, str] = {"enableTLS": "true" if tls_enabled(redis) else "false"}
    if mode == redisconn.RedisMode.STANDALONE:
        metadata["databaseIndex"] = str(keys.database_index)
    elif mode == redisconn.RedisMode.SENTINEL:
        if redis.master_name is None:
            raise models.CrossFieldError("spec.redis.masterName", models.KEDA_SENTINEL_MESSAGE)
        metadata |= {"sentinelMaster": redis.master_name, "databaseIndex": str(keys.database_index)}
    metadata |= _credentials_from_env(redis)
    # KEDA's parameter: `address` for one server, `addresses` for a Cluster's or Sentinel group's list.
    address = "address" if mode == redisconn.RedisMode.STANDALONE else "addresses"
    refs = [_secret_ref(address, ref.name, keys.address_key)]
    if redis.password_secret_ref is None:
        refs.append(_secret_ref("password", ref.name, keys.password_key))
    if redis.username is None and keys.username_key is not None:
        refs.append(_secret_ref("username", ref.name, keys.username_key))
    refs.extend(_ca_ref(redis, tls=tls_enabled(redis)))
    return KedaTrigger(KEDA_TRIGGER_TYPES[mode], metadata, refs)


def _secret_ref(parameter: str, name: str, key: str) -> dict[str, str]:
    return {"parameter": parameter, "name": name, "key": key}


def keda_secret_keys(redis: models.RedisSpec) -> list[tuple[str, str, str]]:
    """The keys of Secrets KEDA reads through the TriggerAuthentication: (Secret, key, spec field)."""
    fields = {
        "address": "spec.redis.keda.addressKey",
        "addresses": "spec.redis.keda.addressKey",
        "password": "spec.redis.keda.passwordKey",
        "username": "spec.redis.keda.usernameKey",
        "ca": "spec.redis.tls.caSecretRef",
    }
    return [(r["name"], r["key"], fields[r["parameter"]]) for r in keda_trigger(redis).secret_refs]

"""Secrets: the operator-managed auth token, and the user Secrets a spec references.

The runtime's auth token is generated once, when the `<svc>-auth` Secret does not exist yet, and
read back on every later reconcile, so re-applying the Secret never rotates it by accident.
Rotating is writing a new token into the Secret (or deleting it, and a new one is generated): the
pod templates carry the token's digest (`with_token_digest`), so the pods roll onto the new token.

Provider keys, a Redis URL (and the keys KEDA reads beside it) and `env[].secretKeyRef`s are only
referenced, never copied: the operator checks that each named Secret and key exists before it rolls
out pods, because a pod whose `secretKeyRef` does not resolve never starts.

Every Secret the operator reads is in the AgentService's own namespace (`Client.read_secret`, the
one reader): the operator may read Secrets cluster-wide, a tenant may not, so neither a read nor
a condition message may depend on another namespace.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import re
import secrets as random
from collections.abc import Mapping, Sequence
from typing import Any, Final

from agent_operator.api import models
from agent_operator.kube.client import Client
from agent_operator.manifests import redisconfig, runtimeconfig
from agent_operator.objects import ObjectRef

TOKEN_BYTES: Final = 32
# On every pod template: a fingerprint of the auth token, so that a new token (written into the
# auth Secret, or a deleted Secret regenerated) rolls the pods, which read it from their env only
# at start. It is not part of the template hash: a credential change is not a new revision to
# analyse as a canary, every pod of both tracks takes it at once.
TOKEN_DIGEST_ANNOTATION: Final = "agentops.dev/auth-token-digest"
TOKEN_DIGEST_LENGTH: Final = 16
# Domain separation: the digest is a fingerprint of this token for this purpose, nothing else.
TOKEN_DIGEST_SALT: Final = b"agentops.dev/auth-token-digest/v1\x00"


@dataclasses.dataclass(frozen=True)
class Reference:
    """A Secret key the spec points at, with the field that points."""

    name: str
    key: str
    field: str


def references(spec: models.AgentServiceSpec) -> list[Reference]:
    """Every Secret key the spec references, in spec order."""
    refs = [
        Reference(p.api_key_secret_ref.name, p.api_key_secret_ref.key, f"spec.model.providers[{i}].apiKeySecretRef")
        for i, p in enumerate(spec.model.providers)
        if p.api_key_secret_ref is not None
    ]
    if spec.redis.url_secret_ref is not None:
        refs.append(Reference(spec.redis.url_secret_ref.name, spec.redis.url_secret_ref.key, "spec.redis.urlSecretRef"))
    if spec.redis.password_secret_ref is not None:
        ref = spec.redis.password_secret_ref
        refs.append(Reference(ref.name, ref.key, "spec.redis.passwordSecretRef"))
    if spec.autoscaling.enabled and spec.autoscaling.engine == models.AutoscalingEngine.KEDA:
        # The keys KEDA reads through the TriggerAuthentication (urlSecretRef): without them KEDA
        # cannot reach the queue and the workers would stay at zero.
        refs.extend(Reference(name, key, field) for name, key, field in redisconfig.keda_secret_keys(spec.redis))
    if spec.redis.tls is not None and spec.redis.tls.ca_secret_ref is not None:
        ref = spec.redis.tls.ca_secret_ref
        refs.append(Reference(ref.name, ref.key, "spec.redis.tls.caSecretRef"))
    refs.extend(
        Reference(h.secret_key_ref.name, h.secret_key_ref.key, f"spec.tools.mcpServers[{i}].headers[{j}].secretKeyRef")
        for i, server in enumerate(spec.tools.mcp_servers)
        for j, h in enumerate(server.headers)
    )
    refs.extend(
        Reference(e.secret_key_ref.name, e.secret_key_ref.key, f"spec.env[{i}].secretKeyRef")
        for i, e in enumerate(spec.env)
        if e.secret_key_ref is not None
    )
    return list(dict.fromkeys(refs))  # the CA is both the pods' and KEDA's: reported once


def problems(refs: Sequence[Reference], live: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """One message per reference whose Secret or key is missing (`live`: Secret name -> object)."""
    found: list[str] = []
    for ref in refs:
        secret = live.get(ref.name)
        if secret is None:
            found.append(f"Secret {ref.name!r} not found ({ref.field})")
        elif decode_secret_value(secret, ref.key) is None:
            found.append(f"key {ref.key!r} not in Secret {ref.name!r} ({ref.field})")
    return found


async def missing(client: Client, namespace: str, refs: Sequence[Reference]) -> list[str]:
    """Read each referenced Secret once (concurrently); describe every missing Secret or key.

    `namespace` is the AgentService's: every read stays there (`Client.read_secret`). A name that
    is not a Kubernetes name is reported as such without a request (the models refuse it first;
    this is the second fence), so no answer ever depends on another namespace's Secrets.
    """
    names = list(dict.fromkeys(r.name for r in refs if valid_name(r.name)))
    secrets = await asyncio.gather(*(client.read_secret(namespace, name) for name in names))
    live = dict(zip(names, secrets, strict=True))
    found: list[str] = []
    for ref in refs:
        if valid_name(ref.name):
            found.extend(problems([ref], live))
        else:
            found.append(f"Secret name {ref.name!r} is not a valid object name ({ref.field})")
    return found


def valid_name(name: str) -> bool:
    """Whether `name` can name a Secret (a DNS subdomain of at most 253 characters)."""
    return len(name) <= models.NAME_MAX_LENGTH and re.fullmatch(models.DNS_SUBDOMAIN, name) is not None


def new_token() -> str:
    """A fresh random token for the runtime's API."""
    return random.token_urlsafe(TOKEN_BYTES)


def auth_token(live: Mapping[str, Any] | None) -> tuple[str, bool]:
    """The token stored in the live auth Secret, or a new one; and whether it is new."""
    current = decode_secret_value(live, runtimeconfig.AUTH_TOKEN_KEY) if live is not None else None
    if current:
        return current, False
    return new_token(), True


def token_digest(token: str) -> str:
    """A short fingerprint of `token` (salted, truncated SHA-256): it moves with the token, reveals nothing.

    The token is 256 random bits, so 64 bits of a salted digest cannot be turned back into it; a
    reader of the Deployment (who may not read the Secret) learns only that the token changed.
    """
    return hashlib.sha256(TOKEN_DIGEST_SALT + token.encode()).hexdigest()[:TOKEN_DIGEST_LENGTH]


def with_token_digest(children: Sequence[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    """`children` with every Deployment's pod template carrying `token`'s digest (copies where changed)."""
    digest = token_digest(token)
    result = []
    for child in children:
        if child.get("kind") != "Deployment":
            result.append(child)
            continue
        # New dicts along the path to the annotations only: the rest is shared with `child`, which
        # is not changed (`apply.adopt` copies each child whole before it is sent).
        template = child["spec"]["template"]
        meta = template.get("metadata") or {}
        annotations = {**(meta.get("annotations") or {}), TOKEN_DIGEST_ANNOTATION: digest}
        stamped_template = {**template, "metadata": {**meta, "annotations": annotations}}
        result.append({**child, "spec": {**child["spec"], "template": stamped_template}})
    return result


def with_auth_token(
    children: Sequence[dict[str, Any]], auth: ObjectRef, live: Mapping[str, Any] | None
) -> tuple[list[dict[str, Any]], bool]:
    """`children` with the auth Secret `auth` holding the token and every pod template its digest.

    The token is the live Secret's (`live`: our own, or None), or a new one; and whether it is new.
    """
    token, new = auth_token(live)
    return with_token_digest(with_token(children, auth, token), token), new


def with_token(children: Sequence[dict[str, Any]], auth: ObjectRef, token: str) -> list[dict[str, Any]]:
    """`children` with the auth Secret `auth` completed by `token` (the builders render it without)."""
    result = []
    for child in children:
        if ObjectRef.of(child) == auth:
            encoded = base64.b64encode(token.encode()).decode("ascii")
            result.append({**child, "data": {runtimeconfig.AUTH_TOKEN_KEY: encoded}})
        else:
            result.append(child)
    return result


def decode_secret_value(secret: Mapping[str, Any], key_name: str) -> str | None:
    """A Secret key's value (from `data` or `stringData`), or None when the key is absent."""
    data = secret.get("data") or {}
    if key_name in data:
        return base64.b64decode(data[key_name]).decode(errors="replace")
    string_data = secret.get("stringData") or {}
    value = string_data.get(key_name)
    return str(value) if value is not None else None

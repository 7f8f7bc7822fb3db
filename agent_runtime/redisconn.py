"""The one place a Redis client is made: standalone, Redis Cluster or Sentinel, with TLS and ACL users.

Which kind of Redis the runtime talks to is chosen by the URL (`AGENT_REDIS_URL`) and the
`redis` section of the runtime config (`RedisSettings`, written by the operator into the ConfigMap):

| URL                                                     | mode       |
|---------------------------------------------------------|------------|
| `redis://[user:pass@]host[:port][/db]`, `rediss://…`    | standalone |
| `redis+cluster://[user:pass@]host:port[,host:port…]`    | cluster    |
| `redis+sentinel://[user:pass@]host:port[,…]/master[/db]`| sentinel   |

`rediss…` means TLS. `RedisSettings.mode` overrides what the scheme says (a managed cluster's
configuration endpoint is often given as a plain `rediss://host:6379`). Credentials may also come
from the environment (`AGENT_REDIS_USERNAME`, `AGENT_REDIS_PASSWORD`, filled by the operator from a
Secret), which win over the URL's.

Clients are redis-py's own: `redis.asyncio.Redis`, `redis.asyncio.RedisCluster` (follows MOVED /
ASK and re-reads the slot map after a failover) and `redis.asyncio.sentinel.Sentinel.master_for`
(asks the sentinels for the current primary on every new connection). Every key of a service
carries one hash tag (`constants.ServiceKeys`), so on a Cluster all of them live in one slot and
the multi-key Lua scripts stay valid.

Writes that carry a promise (submit, checkpoint, result) can be made to wait for replicas
(`wait_replicas`): see `run_replicated`.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, cast

import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
from pydantic import BaseModel, ConfigDict, Field

from agent_runtime import errors

__all__ = [
    "PASSWORD_ENV",
    "SENTINEL_PASSWORD_ENV",
    "USERNAME_ENV",
    "RedisMode",
    "RedisSettings",
    "RedisTarget",
    "connect",
    "location",
    "parse",
    "run_replicated",
]

USERNAME_ENV: Final = "AGENT_REDIS_USERNAME"
PASSWORD_ENV: Final = "AGENT_REDIS_PASSWORD"
SENTINEL_PASSWORD_ENV: Final = "AGENT_REDIS_SENTINEL_PASSWORD"
DEFAULT_PORT: Final = 6379
DEFAULT_SENTINEL_PORT: Final = 26379

# Short timeouts, so an outage shows up as fast errors (503s, worker back-off), not hangs.
_SOCKET_TIMEOUT: Final = 5.0
_CONNECT_TIMEOUT: Final = 2.0
_HEALTH_CHECK_INTERVAL: Final = 10


class RedisMode(StrEnum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


class RedisSettings(BaseModel):
    """How to reach Redis, secrets excepted (the URL and the password arrive through the environment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: RedisMode | None = Field(default=None, description="None: the URL's scheme decides.")
    master_name: str | None = Field(
        default=None, description="Sentinel: the monitored primary's name (else the URL's first path segment)."
    )
    tls: bool = Field(default=False, description="Use TLS even with a redis:// URL (rediss:// always does).")
    tls_ca_file: str | None = Field(default=None, description="PEM bundle the server certificate is checked against.")
    wait_replicas: int = Field(
        default=0,
        ge=0,
        description="Submit, checkpoint and result wait until this many replicas have them (WAIT); 0: do not wait.",
    )
    wait_timeout_ms: int = Field(
        default=500, ge=1, description="How long such a write waits for its replicas before answering 503."
    )


@dataclass(frozen=True)
class RedisTarget:
    """A parsed connection target. Pure data; `connect` turns it into a client."""

    mode: RedisMode
    nodes: tuple[tuple[str, int], ...]  # the server, the cluster's seed nodes, or the sentinels
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    master_name: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


_SCHEMES: Final[dict[str, tuple[RedisMode | None, bool]]] = {
    "redis": (None, False),
    "rediss": (None, True),
    "redis+cluster": (RedisMode.CLUSTER, False),
    "rediss+cluster": (RedisMode.CLUSTER, True),
    "redis+sentinel": (RedisMode.SENTINEL, False),
    "rediss+sentinel": (RedisMode.SENTINEL, True),
}


def _split_hosts(netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """`h1:p1,h2,[::1]:p3` → ((h1, p1), (h2, default), (::1, p3)). Pure."""
    nodes: list[tuple[str, int]] = []
    for raw in netloc.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise errors.ConfigError(f"Redis URL: no host in {item!r}")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError as exc:
            raise errors.ConfigError(f"Redis URL: invalid port in {item!r}") from exc
        nodes.append((host, port))
    if not nodes:
        raise errors.ConfigError("Redis URL: no host")
    return tuple(nodes)


def parse(url: str, settings: RedisSettings | None = None, environ: Mapping[str, str] | None = None) -> RedisTarget:
    """Read the URL, the settings and the credential variables into one target. Pure (given `environ`)."""
    settings = settings or RedisSettings()
    env = os.environ if environ is None else environ
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise errors.ConfigError(f"Redis URL scheme {scheme!r} is not one of {', '.join(_SCHEMES)} (see docs/redis.md)")
    url_mode, url_tls = _SCHEMES[scheme]
    mode = settings.mode or url_mode or RedisMode.STANDALONE
    if url_mode is not None and settings.mode is not None and url_mode != settings.mode:
        raise errors.ConfigError(f"Redis URL scheme {scheme!r} says {url_mode}, redis.mode says {settings.mode}")
    netloc, _, path = rest.partition("/")
    path, _, _ = path.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    username, _, password = userinfo.partition(":")
    nodes = _split_hosts(hosts, DEFAULT_SENTINEL_PORT if mode == RedisMode.SENTINEL else DEFAULT_PORT)
    segments = [urllib.parse.unquote(s) for s in path.split("/") if s]
    master = settings.master_name
    if mode == RedisMode.SENTINEL and master is None and segments and not segments[0].isdigit():
        master = segments.pop(0)
    if mode == RedisMode.SENTINEL and not master:
        raise errors.ConfigError("Redis sentinel mode needs a master name (redis.masterName, or the URL's path)")
    db = 0
    if segments:
        if not segments[0].isdigit():
            raise errors.ConfigError(f"Redis URL: the database {segments[0]!r} must be a number")
        db = int(segments[0])
    if mode == RedisMode.CLUSTER and db != 0:
        raise errors.ConfigError("Redis Cluster has only database 0")
    if mode == RedisMode.STANDALONE and len(nodes) > 1:
        raise errors.ConfigError("a standalone Redis URL names one host; several hosts need redis+cluster or sentinel")
    return RedisTarget(
        mode=mode,
        nodes=nodes,
        db=db,
        username=env.get(USERNAME_ENV) or urllib.parse.unquote(username) or None,
        password=env.get(PASSWORD_ENV) or urllib.parse.unquote(password) or None,
        tls=url_tls or settings.tls or settings.tls_ca_file is not None,
        tls_ca_file=settings.tls_ca_file,
        master_name=master,
        sentinel_password=env.get(SENTINEL_PASSWORD_ENV) or None,
    )


def location(url: str) -> str:
    """The URL without credentials, for log lines (a URL may carry a password, a log line must not)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    hosts = netloc.rpartition("@")[2]
    return f"{scheme}{sep}{hosts}{slash}{path.partition('?')[0]}"


def _tls_kwargs(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    tls: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required"}
    if target.tls_ca_file:
        tls["ssl_ca_certs"] = target.tls_ca_file
    return tls


def connect(
    url: str, settings: RedisSettings | None = None, environ: Mapping[str, str] | None = None
) -> redis.asyncio.Redis:
    """The runtime's Redis client for this URL and these settings (the only place one is made).

    The return type is `redis.asyncio.Redis` for every mode: the runtime uses single-slot
    commands, Lua scripts and non-transactional pipelines only, which `RedisCluster` offers
    with the same signatures; redis-py gives the two classes no common base to name instead.
    The cluster tests run the runtime's key paths on a real Cluster to hold that claim.
    """
    target = parse(url, settings, environ)
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": _SOCKET_TIMEOUT,
        "socket_connect_timeout": _CONNECT_TIMEOUT,
        "health_check_interval": _HEALTH_CHECK_INTERVAL,
        "username": target.username,
        "password": target.password,
        **_tls_kwargs(target),
    }
    if target.mode == RedisMode.CLUSTER:
        cluster = redis.asyncio.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes],
            # A failover moves slots: re-read the slot map on the first error rather than after five.
            reinitialize_steps=1,
            **common,
        )
        return cast(redis.asyncio.Redis, cluster)
    if target.mode == RedisMode.SENTINEL:
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": _SOCKET_TIMEOUT,
            "socket_connect_timeout": _CONNECT_TIMEOUT,
            "decode_responses": True,
            **_tls_kwargs(target),
        }
        if target.sentinel_password:
            sentinel_kwargs["password"] = target.sentinel_password
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            list(target.nodes), sentinel_kwargs=sentinel_kwargs
        )
        assert target.master_name is not None  # parse() insists on it
        client: redis.asyncio.Redis = sentinel.master_for(target.master_name, db=target.db, **common)
        return client
    host, port = target.nodes[0]
    standalone: redis.asyncio.Redis = redis.asyncio.Redis(host=host, port=port, db=target.db, **common)
    return standalone


async def run_replicated(
    client: redis.asyncio.Redis,
    script: str,
    keys: Sequence[str],
    args: Sequence[str | int | float],
    *,
    replicas: int,
    timeout_ms: int,
) -> Any:
    """Run a Lua script, then `WAIT replicas timeout_ms` on the same connection; return the script's reply.

    WAIT counts the replicas that have every write made *on its connection* so far, so the two
    commands go in one pipeline (one connection; on a Cluster, to the node owning the keys'
    slot). The script is sent as EVAL, not EVALSHA: a pipeline cannot reload a flushed script.
    Fewer replicas than asked within the timeout raises `StoreUnavailable`: the write is on the
    primary but not yet a promise a failover keeps, so the caller answers 503 (submit) or leaves
    the task pending to be resumed (checkpoint, result).
    """
    if isinstance(client, redis.asyncio.RedisCluster):
        node = client.get_node_from_key(keys[0])
        cluster_pipe = client.pipeline()
        cluster_pipe.eval(script, len(keys), *keys, *map(str, args))
        cluster_pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)
        reply, acks = await cluster_pipe.execute()
    else:
        async with client.pipeline(transaction=False) as pipe:
            pipe.eval(script, len(keys), *keys, *map(str, args))
            pipe.execute_command("WAIT", replicas, timeout_ms)
            reply, acks = await pipe.execute()
    if int(acks) < replicas:
        raise errors.StoreUnavailable(
            f"task store unavailable: the write reached {acks} of {replicas} replica(s) within {timeout_ms} ms "
            "(redis.waitReplicas); it may not survive a failover, retry"
        )
    return reply

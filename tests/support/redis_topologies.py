"""Real Redis topologies for tests, all on loopback: a Cluster, a Sentinel-managed primary, TLS with an ACL user.

Every process is a real `redis-server` (7.x) in its own directory on free ports; each topology
is a context manager that SIGKILLs and reaps every process it started, whatever the test did.
Start-up waits for the state the tests rely on (every slot served, every sentinel seeing its
replicas), polling the servers themselves.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

__all__ = [
    "MASTER_NAME",
    "RedisCluster",
    "RedisProcess",
    "SentinelGroup",
    "TlsRedis",
    "command",
    "role",
    "running_cluster",
    "running_sentinel_group",
    "running_tls_redis",
    "wait_until",
]

MASTER_NAME = "agents"


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` until truthy (exceptions count as not yet); fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (redis.RedisError, OSError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(0.05)


def command(client: redis.Redis, *args: Any) -> Any:
    """One raw command on a sync client (redis-py leaves `execute_command` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def role(client: redis.Redis) -> str:
    """`master` or `slave`, from INFO replication."""
    return str(cast(dict[str, Any], client.info("replication"))["role"])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, with_bus: bool = False) -> list[int]:
    """`count` free loopback ports; with `with_bus`, port + 10000 (a Cluster's bus port) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 29999) if with_bus else random.randint(30000, 59999)
        if port in ports or not _port_free(port) or (with_bus and not _port_free(port + 10000)):
            continue
        ports.append(port)
    return ports


@dataclass
class RedisProcess:
    """One redis-server (or sentinel) run from a config file in its own directory."""

    directory: Path
    port: int
    lines: list[str]
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")
        conf.write_text("\n".join(self.lines) + "\n")
        args = [shutil.which("redis-server") or "redis-server", str(conf), *(["--sentinel"] if self.sentinel else [])]
        with (self.directory / "log.txt").open("ab") as log:
            self.process = subprocess.Popen(args, cwd=self.directory, stdout=log, stderr=log)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to replicas (what a crashed machine does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2, **kwargs)

    def log(self) -> str:
        path = self.directory / "log.txt"
        return path.read_text(errors="replace") if path.exists() else ""


def _server_lines(port: int, *extra: str) -> list[str]:
    # No persistence: a killed primary's data survives only on its replicas, which is the point.
    return [
        "bind 127.0.0.1",
        f"port {port}",
        "save ''",
        "appendonly no",
        "protected-mode no",
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        *extra,
    ]


@dataclass
class RedisCluster:
    """Three primaries and three replicas of `redis-server --cluster-enabled yes`."""

    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def node_at(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def _alive(self) -> RedisProcess:
        return next(n for n in self.nodes if n.alive)

    def primary_port_of(self, key: str) -> int:
        """The port of the primary now serving `key`'s slot (asked of a live node)."""
        client = self._alive().client()
        try:
            slot = int(command(client, "CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in command(client, "CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        finally:
            client.close()
        raise AssertionError(f"no node serves slot of {key!r}")

    def healthy(self) -> bool:
        """Every live node says the cluster is ok (all 16384 slots served)."""
        for node in self.nodes:
            if not node.alive:
                continue
            client = node.client()
            try:
                info = command(client, "CLUSTER", "INFO")
            finally:
                client.close()
            text = info if isinstance(info, str) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                return False
        return True


@contextlib.contextmanager
def running_cluster(directory: Path, *, node_timeout_ms: int = 1000) -> Iterator[RedisCluster]:
    cluster = RedisCluster()
    try:
        for port in free_ports(6, with_bus=True):
            node = RedisProcess(
                directory / f"node-{port}",
                port,
                _server_lines(
                    port,
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {node_timeout_ms}",
                    # A replica whose primary died takes over however long ago it last heard from it.
                    "cluster-replica-validity-factor 0",
                ),
            )
            cluster.nodes.append(node)
            node.start()
        for node in cluster.nodes:
            wait_until(lambda node=node: node.client().ping(), 10, f"redis node {node.port} up")  # type: ignore[misc]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        wait_until(cluster.healthy, 30, "cluster_state:ok on every node")
        yield cluster
    finally:
        for node in cluster.nodes:
            node.kill()


@dataclass
class SentinelGroup:
    """One primary, two replicas (`replicaof`) and three sentinels monitoring them as `MASTER_NAME`."""

    servers: list[RedisProcess] = field(default_factory=list)
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{MASTER_NAME}"

    def primary_port(self) -> int:
        """The primary's port as a live sentinel reports it."""
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            client = sentinel.client()
            try:
                host_port = command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            finally:
                client.close()
            return int(host_port[1])
        raise AssertionError("no sentinel alive")

    def server_at(self, port: int) -> RedisProcess:
        return next(s for s in self.servers if s.port == port)

    def settled(self) -> bool:
        """Every sentinel knows both replicas and the two other sentinels; both replicas are in sync."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                master = command(client, "SENTINEL", "MASTER", MASTER_NAME)
            finally:
                client.close()
            info = dict(zip(master[::2], master[1::2], strict=True)) if isinstance(master, list) else master
            if int(info["num-slaves"]) != 2 or int(info["num-other-sentinels"]) != 2:
                return False
        primary = self.server_at(self.primary_port()).client()
        try:
            return int(cast(dict[str, Any], primary.info("replication"))["connected_slaves"]) == 2
        finally:
            primary.close()


@contextlib.contextmanager
def running_sentinel_group(directory: Path, *, down_after_ms: int = 1000) -> Iterator[SentinelGroup]:
    group = SentinelGroup()
    try:
        ports = free_ports(6)
        primary_port = ports[0]
        for i, port in enumerate(ports[:3]):
            extra = [] if i == 0 else [f"replicaof 127.0.0.1 {primary_port}"]
            server = RedisProcess(directory / f"server-{port}", port, _server_lines(port, *extra))
            group.servers.append(server)
            server.start()
        for port in ports[3:]:
            sentinel = RedisProcess(
                directory / f"sentinel-{port}",
                port,
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    "sentinel resolve-hostnames yes",
                    "sentinel announce-ip 127.0.0.1",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} 10000",
                    f"sentinel parallel-syncs {MASTER_NAME} 2",
                ],
                sentinel=True,
            )
            group.sentinels.append(sentinel)
            sentinel.start()
        wait_until(group.settled, 30, "sentinels see 2 replicas and each other")
        yield group
    finally:
        for process in [*group.sentinels, *group.servers]:
            process.kill()


@dataclass
class TlsRedis:
    """redis-server on a TLS port only, with a test CA, and an ACL user limited to one service's keys."""

    server: RedisProcess
    ca_file: Path
    username: str
    password: str
    admin_password: str

    def url(self, *, with_credentials: bool = True) -> str:
        auth = f"{self.username}:{self.password}@" if with_credentials else ""
        return f"rediss://{auth}127.0.0.1:{self.server.port}/0"

    def admin(self) -> redis.Redis:
        return self.server.client(
            password=self.admin_password, ssl=True, ssl_ca_certs=str(self.ca_file), ssl_cert_reqs="required"
        )


def make_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl); returns (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=agent-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@contextlib.contextmanager
def running_tls_redis(directory: Path, *, acl_rules: str, username: str = "agent") -> Iterator[TlsRedis]:
    """A TLS-only redis-server; `username` gets exactly `acl_rules`; `default` is an admin with a password."""
    ca, cert, key = make_test_ca(directory / "pki")
    (port,) = free_ports(1)
    password, admin_password = "agent-secret", "admin-secret"
    server = RedisProcess(
        directory / "server",
        port,
        _server_lines(
            0,
            f"tls-port {port}",
            f"tls-cert-file {cert}",
            f"tls-key-file {key}",
            f"tls-ca-cert-file {ca}",
            "tls-auth-clients no",
            f"user default on >{admin_password} ~* &* +@all",
            f"user {username} on >{password} {acl_rules}",
        ),
    )
    tls = TlsRedis(server, ca, username, password, admin_password)
    try:
        server.start()
        wait_until(lambda: tls.admin().ping(), 15, "TLS redis up")
        yield tls
    finally:
        server.kill()

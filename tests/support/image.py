"""The bundled image (`scripts/image.sh`) run as containers with podman, hardened as the manifests run it.

`load()` puts the images built by the set-up into the local container storage; `Container` runs
one entry point the way a pod's securityContext does: the image's non-root user, a read-only root
filesystem with a writable /tmp (the pods' emptyDir), every capability dropped, no privilege
escalation, the runtime's default seccomp profile. The network is the host's, so the probes are
asked on loopback ports; the ports are free ones given by flag, as the entry points take them.

The runtime flags are those this kind of machine needs (docs/image.md): runc (crun refuses the
hybrid cgroup layout), cgroupfs (no systemd), and rlimits below the hard limits the process may
not raise (no CAP_SYS_RESOURCE), which podman's defaults exceed.

`Containerd` is a private containerd on a socket of its own, to import the OCI archive as a node
does and run it there.

Where podman or buildah is missing: with `CI=true` the tests fail; elsewhere they skip with the
reason `unavailable()` gives. A missing build fails: it belongs to the set-up (`make setup-test`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from agent_operator.api import models
from agent_operator.manifests import builders, runtimeconfig

from agent_runtime import constants

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "image.sh"
UID = 10001  # the Dockerfile's USER, the manifests' runAsUser
TOKEN = "image-test-token"  # the API token the runtime containers are given
TMP_SIZE = "64m"  # the runtime pods' /tmp emptyDir sizeLimit (workloads.TMP_SIZE_LIMIT)

# What podman needs on this kind of machine (see the module docstring and docs/image.md).
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")

# What building and running the image needs (Debian packages; containerd brings ctr).
TOOLS = ("buildah", "podman", "mmdebstrap", "runc", "containerd", "ctr")

__all__ = [
    "Container",
    "Containerd",
    "ImageError",
    "ServiceForward",
    "built",
    "in_ci",
    "load",
    "podman",
    "rendered",
    "runtime_container",
    "runtime_service",
    "unavailable",
]


class ImageError(RuntimeError):
    """The image could not be loaded or a container not run (the message carries the output)."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable() -> str | None:
    """Why the image cannot be built or run here (None: it can, or CI demands it)."""
    if in_ci():
        return None
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: the image tests build and run the image (make setup-test)"
    return None


def built() -> bool:
    return subprocess.run(["bash", str(SCRIPT), "built"], capture_output=True, check=False).returncode == 0


def build_env() -> dict[str, str]:
    """The cache folder's build.env (names, IDs, build times)."""
    directory = subprocess.run(["bash", str(SCRIPT), "dir"], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in (Path(directory.strip()) / "build.env").read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    values["DIR"] = directory.strip()
    return values


def load() -> tuple[str, str]:
    """The runtime and dev images' IDs, loaded from the cache's archives when the storage lacks them.

    By ID, not name: another checkout on the machine may have tagged a build of other inputs."""
    result = subprocess.run(["bash", str(SCRIPT), "load"], capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0:
        raise ImageError(f"scripts/image.sh load failed ({result.returncode}):\n{result.stderr[-4000:]}")
    env = build_env()
    return env["RUNTIME_ID"].removeprefix("sha256:"), env["DEV_ID"].removeprefix("sha256:")


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise ImageError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-3000:]}")
    return result


def hardened(mounts: Sequence[tuple[Path, str]] = (), env: Mapping[str, str] | None = None) -> list[str]:
    """`podman run` flags of a pod's securityContext: non-root, read-only root, no capabilities."""
    flags = [
        *LIMITS,
        "--network", "host",
        "--user", f"{UID}:{UID}",
        "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", f"/tmp:rw,size={TMP_SIZE},mode=1777",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--http-proxy=false",  # the host's proxy variables are not the pod's
    ]  # fmt: skip
    for source, target in mounts:
        flags += ["--volume", f"{source}:{target}:ro"]
    for key, value in (env or {}).items():
        flags += ["--env", f"{key}={value}"]
    return flags


def run_once(image: str, command: Sequence[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command in the image (hardened) to its end; the caller checks its status."""
    entrypoint, *args = command
    return podman("run", "--rm", *hardened(), "--entrypoint", entrypoint, image, *args, timeout=timeout, check=False)


@dataclasses.dataclass
class Container:
    """One entry point running detached; `stop()` is `podman stop` (SIGTERM, then SIGKILL after the grace)."""

    image: str
    command: Sequence[str]
    mounts: Sequence[tuple[Path, str]] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    hosts: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> address, as cluster DNS answers
    name: str = dataclasses.field(default_factory=lambda: f"agentops-test-{uuid.uuid4().hex[:12]}")
    started_at: float = 0.0

    def start(self) -> Container:
        entrypoint, *args = self.command
        self.started_at = time.monotonic()
        hosts = [f"--add-host={name}:{address}" for name, address in self.hosts.items()]
        podman("run", "--detach", "--name", self.name, *hardened(self.mounts, self.env), *hosts,
               "--entrypoint", entrypoint, self.image, *args)  # fmt: skip
        return self

    def inspect(self) -> dict[str, Any]:
        (state,) = json.loads(podman("container", "inspect", self.name).stdout)
        return dict(state)

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def wait_http(self, url: str, timeout: float = 60.0) -> int:
        """The status `url` answers once the container listens (fails when it exits first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return httpx.get(url, timeout=2.0).status_code
            except httpx.TransportError:
                if not self.running():
                    raise ImageError(f"{self.name} exited before {url} answered:\n{self.logs()}") from None
                if time.monotonic() > deadline:
                    raise ImageError(f"{url}: nothing listens after {timeout} s:\n{self.logs()}") from None
                time.sleep(0.1)

    def stop(self, grace: int) -> tuple[int, float]:
        """SIGTERM and wait at most `grace` seconds, as the kubelet does: (exit code, seconds taken)."""
        started = time.monotonic()
        podman("stop", "--time", str(grace), self.name, timeout=grace + 60)
        took = time.monotonic() - started
        return int(self.inspect()["State"]["ExitCode"]), took

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def runtime_service(model_url: str, redis_url: str) -> models.AgentService:
    return models.AgentService.model_validate(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": "image", "namespace": "default"},
            "spec": {
                "model": {"providers": [{"name": "local", "model": "claude-sonnet-4-5", "baseURL": model_url}]},
                "redis": {"url": redis_url},
            },
        }
    )


def rendered(svc: models.AgentService, component: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec and container the operator renders for `component`."""
    children = builders.build_children(svc)
    name = f"{svc.metadata.name}-{component}"
    deployment = next(c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name)
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def config_dir(svc: models.AgentService, tmp_path: Path) -> Path:
    """The runtime config as the pods mount it (the ConfigMap), readable by the image's user."""
    children = builders.build_children(svc)
    config_map = next(c for c in children if c["kind"] == "ConfigMap" and c["metadata"]["name"].endswith("-config"))
    directory = tmp_path / "config"
    directory.mkdir(parents=True)
    (directory / Path(constants.CONFIG_PATH).name).write_text(config_map["data"][runtimeconfig.CONFIG_KEY])
    directory.chmod(0o755)
    (directory / Path(constants.CONFIG_PATH).name).chmod(0o644)
    return directory


def runtime_container(
    image: str, svc: models.AgentService, component: str, *, port: int, tmp_path: Path, redis_url: str
) -> Container:
    """The `component`'s container as the operator renders it, with its port moved to `port`."""
    _, container = rendered(svc, component)
    flag = "--port" if component == "api" else "--metrics-port"
    return Container(
        image=image,
        command=[*container["command"], *container["args"], "--host", "127.0.0.1", flag, str(port)],
        mounts=[(config_dir(svc, tmp_path / component), str(Path(constants.CONFIG_PATH).parent))],
        env={
            constants.REDIS_URL_ENV: redis_url,
            constants.AUTH_TOKEN_ENV: TOKEN,
            constants.SERVICE_ENV: svc.metadata.name,
            constants.POD_NAME_ENV: f"image-{component}",
        },
    )


class Containerd:
    """A private containerd (Debian's) on a socket under `directory`, its CRI plugin off; `ctr()` runs ctr on it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "containerd.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Containerd:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.directory / "root"}"\n'
            f'state = "{self.directory / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
        )
        with (self.directory / "containerd.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ImageError(
                    f"containerd did not start:\n{(self.directory / 'containerd.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        return self

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise ImageError(f"ctr {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-3000:]}")
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ServiceForward:
    """The `kubernetes` Service as kube-proxy makes it: `address:443` forwarded to the API server.

    A pod's service-account login (kopf's, client-go's) dials https://kubernetes.default.svc on
    port 443, which cluster DNS resolves to the Service's address and kube-proxy forwards to an API
    server. Here the name is given to the container with `--add-host` and the address is a loopback
    address of its own (127.x.y.z, so that several runs on the machine do not collide on port 443);
    TLS goes through untouched, so the API server's certificate must name kubernetes.default.svc.
    """

    PORT = 443

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = self._bind()
        self.address = str(self.listener.getsockname()[0])
        self._stopped = threading.Event()
        self._connections: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="service-forward", daemon=True)
        self._thread.start()

    def _bind(self) -> socket.socket:
        rng = random.SystemRandom()
        for _ in range(50):
            address = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.bind((address, self.PORT))
            except OSError:
                listener.close()
                continue
            listener.listen(64)
            listener.settimeout(0.2)
            return listener
        raise ImageError("no free loopback address for port 443")

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._connections.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            with upstream:
                self._open.update({client, upstream})
                back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
                back.start()
                self._pump(client, upstream)
                back.join()
                self._open.difference_update({client, upstream})

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(None)
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop accepting, end the open connections, and wait for every thread."""
        self._stopped.set()
        self.listener.close()
        self._thread.join(timeout=5)
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._connections:
            thread.join(timeout=5)

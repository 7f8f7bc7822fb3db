"""One Pod of the real API run as local processes: the container runtime's part of the harness kubelet.

A `PodProcess` takes a Pod bound to the harness Node (the JSON form the API serves) and does on this
host what a container runtime does for it:
- volumes: a folder per volume under the pod's folder. A ConfigMap or Secret volume is written from
  the API (its `items`, or every key), an emptyDir is an empty folder. A container sees a mounted
  volume at that folder: every env value and argument naming a path under a `mountPath` is
  rewritten to it, so `AGENT_CONFIG_PATH=/etc/agent-runtime/config.json` names the file written
  from the ConfigMap. A mount's `subPath` is not supported (the pods run here use none);
- env: literals, `valueFrom` (`secretKeyRef`, `configMapKeyRef`, `fieldRef`) and `envFrom`. A Secret
  or ConfigMap that is not there (and not optional) holds the container back with
  `CreateContainerConfigError`, tried again later, as the kubelet does;
- ports: the pods share the host's loopback, so each container port gets a free host port. The
  runtime image's entry point takes its listen address as a flag (`--port` for `api`,
  `--metrics-port` for `worker`): that flag and `--host 127.0.0.1` are appended to the container's
  arguments, the one change a process on a shared host needs that a container in its own network
  namespace would not (a test's own `python -c` program gets `--host` and `--port` the same way).
  `address(port)` says where a port of the pod (by name or number) listens;
- the process: the container's `command` looked up in this virtualenv (the image's entry point
  `agent-runtime` is this checkout's console script) with its `args`; stdout and stderr go to
  `<pod folder>/<container>.log`;
- readiness from the container's `readinessProbe` (`httpGet` on a mapped port);
- CPU seconds and working-set bytes of each process, read from /proc (`usage()`), which the
  kubelet serves as its resource metrics;
- `terminate(grace)`: SIGTERM to every container, SIGKILL to those still running when the grace
  period runs out.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import os
import posixpath
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.redis_server import free_port

__all__ = ["ContainerConfigError", "PodProcess", "PodSpecError", "Termination"]

HOST: Final = "127.0.0.1"
# The runtime image's entry point (`agent-runtime <component>`): the flag that sets where the
# component's one port listens. A container of another image has no port mapping here.
LISTEN_FLAGS: Final = {"api": "--port", "worker": "--metrics-port"}
VENV_BIN: Final = Path(sys.executable).parent
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def now() -> str:
    """The time as the API writes it (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ContainerConfigError(Exception):
    """A container cannot be configured yet (a Secret or ConfigMap it needs is missing): tried again."""


class PodSpecError(Exception):
    """A pod asks for something the harness cannot run (a volume kind, an unmapped port): not retried."""


@dataclasses.dataclass
class Termination:
    """How one container of a deleted pod ended."""

    pod: str
    container: str
    exit_code: int | None
    seconds: float  # from SIGTERM to exit
    killed: bool  # still running at the end of the grace period: SIGKILLed


@dataclasses.dataclass
class Container:
    """One container's process and what the kubelet reports about it."""

    spec: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    restarts: int = 0
    ready: bool = False
    probe_failures: int = 0
    next_start: float = 0.0  # monotonic time before which a crashed container is not restarted

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class PodProcess:
    """The processes of one pod (see the module docstring); `prepare()`, then `start()`."""

    def __init__(self, pod: Mapping[str, Any], core: client.CoreV1Api, directory: Path) -> None:
        self.pod = pod
        self.core = core
        self.namespace = str(pod["metadata"]["namespace"])
        self.name = str(pod["metadata"]["name"])
        self.directory = directory / f"{self.namespace}_{self.name}"
        self.ports: dict[str, int] = {}  # container port, by name and by number -> host port
        self.containers: list[Container] = []

    # --- configuration ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Write the volumes, resolve the env and the ports; raise ContainerConfigError to retry."""
        spec = self.pod["spec"]
        volumes = {v["name"]: self._volume(v) for v in spec.get("volumes") or []}
        self.ports = {}
        containers = []
        for container in spec["containers"]:
            mounts = {}
            for mount in container.get("volumeMounts") or []:
                if mount.get("subPath"):
                    raise PodSpecError(f"container {container['name']}: subPath mounts are not supported here")
                mounts[str(mount["mountPath"]).rstrip("/") or "/"] = volumes[mount["name"]]
            env = self._environment(container)
            # Only what the pod spec says is moved to the volumes' host folders: the command is this
            # venv's executable and the listen flags are the harness's own (a venv under /tmp, as in a
            # clone there, is no path inside the pod's /tmp emptyDir).
            args = [_host_path(str(a), mounts) for a in container.get("args") or []]
            argv = [self._command(container), *args, *self._listen_args(container)]
            env = {key: _host_path(value, mounts) for key, value in env.items()}
            # As the image's ENV: unbuffered, so a pod killed by the test leaves its last lines in its log.
            base = {"PATH": f"{VENV_BIN}{os.pathsep}{os.defpath}", "HOME": str(self.directory), "PYTHONUNBUFFERED": "1"}
            containers.append(
                Container(
                    spec=container, argv=argv, env={**base, **env}, log_path=self.directory / f"{container['name']}.log"
                )
            )
        self.containers = containers

    def _volume(self, volume: Mapping[str, Any]) -> Path:
        path = self.directory / "volumes" / str(volume["name"])
        if "emptyDir" in volume:
            path.mkdir(parents=True, exist_ok=True)
            return path
        if "configMap" in volume:
            source = volume["configMap"]
            data = self._config_map(source["name"], optional=bool(source.get("optional")))
        elif "secret" in volume:
            source = volume["secret"]
            data = self._secret(source["secretName"], optional=bool(source.get("optional")))
        else:
            raise PodSpecError(f"volume {volume['name']}: only configMap, secret and emptyDir volumes run here")
        # Written whole into a fresh folder, then swapped in: a retry never sees half a volume.
        fresh = path.with_name(f".{path.name}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise ContainerConfigError(f"volume {volume['name']}: key {item['key']} is missing")
            target = fresh / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data[item["key"]])
        shutil.rmtree(path, ignore_errors=True)
        fresh.rename(path)
        return path

    def _config_map(self, name: str, *, optional: bool) -> dict[str, bytes]:
        try:
            config_map = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as error:
            if error.status == 404 and optional:
                return {}
            if error.status in (403, 404):  # 403: the Node authorizer has not linked it to this pod yet
                raise ContainerConfigError(f'configmap "{name}": {error.reason}') from None
            raise
        data = {key: value.encode() for key, value in (config_map.data or {}).items()}
        data.update({key: base64.b64decode(value) for key, value in (config_map.binary_data or {}).items()})
        return data

    def _secret(self, name: str, *, optional: bool) -> dict[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as error:
            if error.status == 404 and optional:
                return {}
            if error.status in (403, 404):  # 403: the Node authorizer has not linked it to this pod yet
                raise ContainerConfigError(f'secret "{name}": {error.reason}') from None
            raise
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    def _key(self, kind: str, ref: Mapping[str, Any]) -> str | None:
        optional = bool(ref.get("optional"))
        data = (
            self._secret(ref["name"], optional=optional)
            if kind == "secret"
            else self._config_map(ref["name"], optional=optional)
        )
        if ref["key"] in data:
            return data[ref["key"]].decode()
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {ref['key']} in {kind} {self.namespace}/{ref['name']}")

    def _field(self, path: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": HOST,
            "status.hostIP": HOST,
        }
        if path not in fields:
            raise PodSpecError(f"fieldRef {path} is not supported here")
        return str(fields[path])

    def _environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self._secret(source["secretRef"]["name"], optional=bool(source["secretRef"].get("optional")))
            else:
                ref = source["configMapRef"]
                data = self._config_map(ref["name"], optional=bool(ref.get("optional")))
            env.update({prefix + key: value.decode() for key, value in data.items()})
        for var in container.get("env") or []:
            value_from = var.get("valueFrom")
            value: str | None
            if value_from is None:
                value = _expand(str(var.get("value", "")), env)
            elif "secretKeyRef" in value_from:
                value = self._key("secret", value_from["secretKeyRef"])
            elif "configMapKeyRef" in value_from:
                value = self._key("configmap", value_from["configMapKeyRef"])
            elif "fieldRef" in value_from:
                value = self._field(value_from["fieldRef"]["fieldPath"])
            else:
                raise PodSpecError(f"env {var['name']}: only secretKeyRef, configMapKeyRef and fieldRef run here")
            if value is not None:
                env[var["name"]] = value
        return env

    def _command(self, container: Mapping[str, Any]) -> str:
        command = container.get("command") or []
        if not command:
            raise PodSpecError(f"container {container['name']}: no command (the image's entry point is not known here)")
        found = shutil.which(command[0], path=str(VENV_BIN))
        if found is None:
            raise PodSpecError(f"container {container['name']}: {command[0]} is not in {VENV_BIN}")
        if len(command) > 1:
            raise PodSpecError(f"container {container['name']}: a command with arguments is not supported here")
        return found

    def _listen_args(self, container: Mapping[str, Any]) -> list[str]:
        ports = container.get("ports") or []
        if not ports:
            return []
        args = container.get("args") or []
        flag = LISTEN_FLAGS.get(args[0]) if args else None
        if flag is None and (container.get("command") or [""])[0] == "python":
            flag = "--port"  # a test's own program (`python -c`), which reads --host and --port from its argv
        if flag is None or len(ports) != 1:
            raise PodSpecError(f"container {container['name']}: its ports cannot be mapped to host ports here")
        port = free_port(HOST)
        self.ports[str(ports[0]["containerPort"])] = port
        if "name" in ports[0]:
            self.ports[str(ports[0]["name"])] = port
        return ["--host", HOST, flag, str(port)]

    # --- processes ----------------------------------------------------------------------------

    def address(self, port: str | int) -> str:
        """`host:port` where a container port of this pod (by name or number) listens."""
        return f"{HOST}:{self.ports[str(port)]}"

    def start(self) -> None:
        """Start every container that is not running (a crashed one once its back-off is over)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for container in self.containers:
            if container.running() or time.monotonic() < container.next_start:
                continue
            if container.popen is not None:
                container.restarts += 1
            with container.log_path.open("ab") as log:
                container.popen = subprocess.Popen(
                    container.argv, env=container.env, cwd=self.directory,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                )  # fmt: skip
            container.started_at, container.finished_at, container.exit_code = now(), None, None
            container.ready, container.probe_failures = False, 0

    def reap(self) -> list[Container]:
        """Containers that exited since the last look (restartPolicy Always: started again after a back-off)."""
        exited = []
        for container in self.containers:
            if container.popen is None or container.exit_code is not None:
                continue
            code = container.popen.poll()
            if code is not None:
                container.exit_code, container.finished_at, container.ready = code, now(), False
                container.next_start = time.monotonic() + min(10.0, 2.0**container.restarts)
                exited.append(container)
        return exited

    def probe(self) -> None:
        """Run each running container's readiness probe once and update `ready`."""
        for container in self.containers:
            if not container.running():
                continue
            probe = container.spec.get("readinessProbe")
            if probe is None:
                container.ready = True
                continue
            if self._probe_succeeds(probe):
                container.ready, container.probe_failures = True, 0
            else:
                container.probe_failures += 1
                if container.probe_failures >= int(probe.get("failureThreshold", 3)) or not container.ready:
                    container.ready = False

    def _probe_succeeds(self, probe: Mapping[str, Any]) -> bool:
        get = probe.get("httpGet")
        if get is None:
            raise PodSpecError("only httpGet readiness probes run here")
        url = f"http://{self.address(get['port'])}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=float(probe.get("timeoutSeconds", 1))) as response:
                return 200 <= int(response.status) < 400
        except (urllib.error.URLError, OSError, TimeoutError):  # HTTPError (4xx, 5xx) is a URLError
            return False

    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready and c.running() for c in self.containers)

    def usage(self) -> list[tuple[str, float, int]]:
        """(container, CPU seconds, working-set bytes) of each running container, from /proc."""
        out = []
        for container in self.containers:
            if not container.running():
                continue
            assert container.popen is not None
            with contextlib.suppress(OSError, ValueError, IndexError):  # it may exit while read
                stat = Path(f"/proc/{container.popen.pid}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
                cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
                resident = int(Path(f"/proc/{container.popen.pid}/statm").read_text().split()[1]) * PAGE_SIZE
                out.append((container.name, cpu, resident))
        return out

    def terminate(self, grace: float) -> list[Termination]:
        """SIGTERM every container, wait out `grace` seconds, SIGKILL what is left; how each ended."""
        started = time.monotonic()
        for container in self.containers:
            if container.running():
                assert container.popen is not None
                container.popen.send_signal(signal.SIGTERM)
        deadline = started + grace
        ended = []
        for container in self.containers:
            if container.popen is None or container.exit_code is not None:
                continue
            killed = False
            try:
                container.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                container.popen.kill()
                container.popen.wait()
                killed = True
            container.exit_code, container.finished_at, container.ready = container.popen.returncode, now(), False
            ended.append(
                Termination(self.name, container.name, container.exit_code, time.monotonic() - started, killed)
            )
        return ended

    def logs(self, container: str | None = None) -> str:
        """The log of one container (the first by default)."""
        chosen = next(c for c in self.containers if container is None or c.name == container)
        return chosen.log_path.read_text(errors="replace") if chosen.log_path.exists() else ""


def _host_path(value: str, mounts: Mapping[str, Path]) -> str:
    """`value` with a mounted path (the mount itself or under it) moved to the volume's host folder."""
    for mount_path, host in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if value == mount_path:
            return str(host)
        if value.startswith(mount_path + "/"):
            return str(host / posixpath.relpath(value, mount_path))
    return value


def _expand(value: str, env: Mapping[str, str]) -> str:
    """`$(NAME)` references to earlier variables, as the kubelet expands them (`$$` escapes)."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and (end := value.find(")", i)) != -1 and value[i + 2 : end] in env:
            out.append(env[value[i + 2 : end]])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)

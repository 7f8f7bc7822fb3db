"""The dev cluster's kubelet: the operator's Deployments run as real runtime processes.

The dev cluster (kmock's emulator) runs no pods; this plays the part of a cluster it lacks, and fakes
nothing of the code under test. For every Deployment of a namespace, `Kubelet` runs one runtime
process per replica (`agent-runtime api|worker`, forked from a preloaded fork server), configured
the way a pod would be: the ConfigMap its template mounts becomes the config file, its env is
resolved (literals, Secret keys, the pod name), so `AGENT_TRACK` and `AGENT_SERVICE` come from the
operator's template. A template change (any field: a Deployment rolls on any) restarts the pods, a
replica change adds or stops some, a deleted Deployment stops them. Once every Deployment's pods
run on its current template and answer `/health` (`in_step`), it plays the Deployment controller
(`simulate_rollouts`); and it keeps a `DiscoveringPrometheus`'s target file in step, each target
labelled as the operator's ServiceMonitor has the Prometheus Operator label it: `namespace`
(discovery), `service` and `track` (the pod's `app.kubernetes.io/instance` and `track` labels),
scraped with `honor_labels: false`.
The only change to a pod's config (`OVERLAY`) is a short drain when it is stopped.

The end-to-end tests, `bench/canary.py` and part 4 of `agentctl demo` run their pods this way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx
from agent_operator.manifests import monitoring, naming, templatehash

from agent_runtime import constants
from agentops_dev import devcluster
from agentops_dev.localprometheus import DiscoveringPrometheus
from agentops_dev.localredis import free_port
from agentops_dev.runtimeprocesses import ForkedRuntime

__all__ = ["NAMESPACE", "OVERLAY", "Kubelet", "Pending", "Pod"]

NAMESPACE: Final = "default"
# The one change to every pod's runtime config: a stopped worker drains briefly, so a rollout's
# pod restarts take seconds, not the production grace period.
OVERLAY: Final[dict[str, Any]] = {"shutdown_grace_seconds": 2}
STOP_GRACE: Final = 4.0
START_TIMEOUT: Final = 30.0


class Pending(Exception):
    """A pod cannot start yet (its ConfigMap is not there): tried again at the next sync, as a kubelet would."""


@dataclasses.dataclass
class Pod:
    """One runtime process standing in for one pod of a Deployment."""

    name: str
    deployment: str
    component: str
    track: str
    revision: str
    port: int
    process: ForkedRuntime
    template: str = ""  # digest of the whole pod template it was started from
    service: str = ""  # the pod's AgentService label (app.kubernetes.io/instance)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Kubelet:
    """Runs the Deployments of one namespace of the dev cluster as runtime processes (see the module doc)."""

    def __init__(
        self,
        cluster: devcluster.DevCluster,
        directory: Path,
        prometheus: DiscoveringPrometheus | None,
        *,
        namespace: str = NAMESPACE,
        overlay: Mapping[str, Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.directory = directory
        self.prometheus = prometheus
        self.namespace = namespace
        self.overlay = dict(OVERLAY if overlay is None else overlay)
        self.pods: dict[str, Pod] = {}
        self.started: list[tuple[float, str, str]] = []  # (monotonic time ready, deployment, revision)
        self.errors: list[BaseException] = []  # pods that could not start (the sync goes on)
        self._serial = itertools.count()
        self._http = httpx.AsyncClient(timeout=2.0)

    async def run(self, period: float = 0.2) -> None:
        """Sync forever (cancel to stop; `close` stops the pods); failures are kept in `errors`."""
        while True:
            try:
                await self.sync()
            except (RuntimeError, TimeoutError, OSError) as exc:
                self.errors.append(exc)
            await asyncio.sleep(period)

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(pod) for pod in list(self.pods.values())))
        self.pods.clear()
        self._publish()
        await self._http.aclose()

    def api_pods(self, track: str | None = None) -> list[Pod]:
        return [p for p in self.pods.values() if p.component == "api" and (track is None or p.track == track)]

    def ready_at(self, deployment: str, revision: str | None = None) -> float | None:
        """When the pods of a Deployment (at a revision) last became ready (monotonic), if they did."""
        times = [t for t, name, rev in self.started if name == deployment and (revision is None or rev == revision)]
        return max(times) if times else None

    async def sync(self) -> None:
        """Close the gap between the Deployments and the pods; then report the Deployments rolled out."""
        wanted: dict[str, tuple[dict[str, Any], int, str]] = {}
        for deployment in self.cluster.live_objects("apps/v1/deployments", self.namespace):
            template = deployment["spec"]["template"]
            revision = template["metadata"]["annotations"].get(naming.TEMPLATE_HASH_ANNOTATION, "")
            wanted[deployment["metadata"]["name"]] = (deployment, int(deployment["spec"].get("replicas", 1)), revision)
        await self._stop_unwanted(wanted)
        await self._start_missing(wanted)
        if self.in_step():
            await self.cluster.simulate_rollouts(self.namespace)

    async def _stop_unwanted(self, wanted: Mapping[str, tuple[dict[str, Any], int, str]]) -> None:
        """Stop the pods of deleted Deployments, of old templates, and those above the replica count."""
        stopping = []
        for pod in list(self.pods.values()):
            spec = wanted.get(pod.deployment)
            if spec is None or templatehash.template_hash(spec[0]["spec"]["template"]) != pod.template:
                stopping.append(self.pods.pop(pod.name))
        for name, (_, replicas, _) in wanted.items():
            mine = sorted((p for p in self.pods.values() if p.deployment == name), key=lambda p: p.name)
            for pod in mine[replicas:]:
                stopping.append(self.pods.pop(pod.name))
        if stopping:
            self._publish()
            await asyncio.gather(*(self._stop(pod) for pod in stopping))

    async def _start_missing(self, wanted: Mapping[str, tuple[dict[str, Any], int, str]]) -> None:
        """Start pods up to each Deployment's replica count; a pod that cannot start yet waits for the next sync."""
        starting = []
        for name, (deployment, replicas, revision) in wanted.items():
            have = sum(1 for p in self.pods.values() if p.deployment == name)
            starting += [self._start(deployment, revision) for _ in range(replicas - have)]
        if not starting:
            return
        try:
            outcomes = await asyncio.gather(*starting, return_exceptions=True)
        finally:
            self._publish()
        failures = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, Pending)]
        if failures:
            raise failures[0]

    def in_step(self) -> bool:
        """Whether every live Deployment has exactly its replicas running, on its current template.

        Only then does the kubelet report the Deployments rolled out. A Deployment changed while a
        sync ran (its new pods not started yet) or whose pods cannot start must not look ready: the
        operator times a canary's analyses from the moment its Deployments are rolled out.
        """
        deployments = {
            d["metadata"]["name"]: d for d in self.cluster.live_objects("apps/v1/deployments", self.namespace)
        }
        if any(pod.deployment not in deployments for pod in self.pods.values()):
            return False
        for name, deployment in deployments.items():
            template = templatehash.template_hash(deployment["spec"]["template"])
            pods = [pod for pod in self.pods.values() if pod.deployment == name]
            if len(pods) != int(deployment["spec"].get("replicas", 1)) or any(p.template != template for p in pods):
                return False
        return True

    async def _start(self, deployment: Mapping[str, Any], revision: str) -> Pod:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        component = container["args"][0]
        track = template["metadata"]["labels"][naming.TRACK_LABEL]
        mounted = self._mounted_config(template)
        name = f"{meta['name']}-{revision}-{next(self._serial)}"
        home = self.directory / name
        home.mkdir(parents=True)
        config_path = home / "config.json"
        config_path.write_text(json.dumps({**mounted, **self.overlay}))
        env = self._environment(container, name)
        env[constants.CONFIG_PATH_ENV] = str(config_path)
        port = free_port()
        flag = "--port" if component == "api" else "--metrics-port"
        args = ["--log-level", "warning", component, "--host", "127.0.0.1", flag, str(port)]
        process = ForkedRuntime(args, config_path=config_path, redis_url=env[constants.REDIS_URL_ENV], env=env)
        pod = Pod(
            name,
            meta["name"],
            component,
            track,
            revision,
            port,
            process,
            templatehash.template_hash(template),
            service=template["metadata"]["labels"].get(monitoring.POD_SERVICE_LABEL, ""),
        )
        try:
            await process.start()
            await self._wait_healthy(pod)
        except BaseException:  # cancelled too (the stack stopping): a pod nobody tracks must not live on
            await process.kill()
            raise
        # Tracked at once, not when every start of this sync is done: a sync cancelled meanwhile
        # would lose it, and `close()` stops only the pods it knows.
        self.pods[pod.name] = pod
        self.started.append((time.monotonic(), pod.deployment, pod.revision))
        return pod

    def _mounted_config(self, template: Mapping[str, Any]) -> dict[str, Any]:
        volume = next(v for v in template["spec"]["volumes"] if "configMap" in v)
        config_map = self.cluster.live("v1/configmaps", self.namespace, volume["configMap"]["name"])
        if config_map is None:
            raise Pending(f"ConfigMap {volume['configMap']['name']} is not there")
        data: dict[str, Any] = json.loads(config_map["data"]["config.json"])
        return data

    def _environment(self, container: Mapping[str, Any], pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.cluster.live("v1/secrets", self.namespace, ref["name"]) or {}
                env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[var["name"]] = pod_name
        return env

    async def _wait_healthy(self, pod: Pod) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        url = f"http://{pod.address}{constants.HEALTH_PATH}"
        while time.monotonic() < deadline:
            if not pod.process.alive():
                raise RuntimeError(f"pod {pod.name} exited:\n{pod.process.logs()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self._http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"pod {pod.name} not healthy after {START_TIMEOUT} s:\n{pod.process.logs()[-3000:]}")

    async def _stop(self, pod: Pod) -> None:
        pod.process.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await pod.process.wait(STOP_GRACE)
        await pod.process.kill()

    def _publish(self) -> None:
        if self.prometheus is not None:
            self.prometheus.set_targets(
                {
                    pod.address: {
                        "namespace": self.namespace,
                        "pod": pod.name,
                        constants.LABEL_SERVICE: pod.service,
                        constants.LABEL_TRACK: pod.track,
                    }
                    for pod in self.pods.values()
                }
            )

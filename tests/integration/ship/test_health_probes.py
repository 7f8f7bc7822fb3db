"""Every health check of the image and of its Kubernetes probes is served by the entry point it checks.

The image runs three entry points: `agentctl operator`, `agent-runtime api` and `agent-runtime
worker`. Each is started here for real (the installed console scripts, as the image's PATH has
them), on free ports standing in for the image's 8080 and 9090, with what a pod would get (the
runtime config the operator renders, a Redis, the dev cluster for the operator), then:
- the Dockerfile's HEALTHCHECK, if it declares one, must succeed against every entry point (the
  image cannot know which one it runs); the shipped Dockerfile declares none and says why;
- every probe the operator renders for the API and worker containers (startup, liveness,
  readiness) answers 200 on the port it names;
- the chart's operator Deployment has a liveness and a readiness probe, and both answer 200 on
  the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_operator.api import models
from agent_operator.manifests import builders, runtimeconfig
from agentops_dev import devcluster
from agentops_dev.localredis import free_port

from agent_runtime import constants
from tests.integration.ship.test_chart import render
from tests.integration.ship.test_dockerfile import final_stage
from tests.support.redis_server import running_redis

BIN = Path(sys.executable).parent
IMAGE_PORTS = (8080, 9090)  # what the Dockerfile EXPOSEs
START_TIMEOUT = 30.0
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def service() -> models.AgentService:
    return models.AgentService.model_validate(
        {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": "probe", "namespace": "default"},
            "spec": {
                "model": {"providers": [{"name": "local", "model": "m", "baseURL": "http://127.0.0.1:9/"}]},
                "redis": {"url": "redis://unused:6379/0"},
            },
        }
    )


def container_of(component: str) -> dict[str, Any]:
    children = builders.build_children(service())
    name = f"probe-{component}"
    deployment = next(c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == name)
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def runtime_config() -> str:
    children = builders.build_children(service())
    config_map = next(c for c in children if c["kind"] == "ConfigMap" and c["metadata"]["name"] == "probe-config")
    return str(config_map["data"][runtimeconfig.CONFIG_KEY])


def healthcheck_command() -> list[str] | None:
    """The exec form of the final stage's HEALTHCHECK CMD, or None when the image declares none."""
    for keyword, args in final_stage():
        if keyword == "HEALTHCHECK":
            if args.strip().upper() == "NONE":
                return None
            command = args[args.index("CMD") + 3 :].strip()
            parsed = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
            return [sys.executable if part == "python" else part for part in parsed]
    return None


@contextlib.asynccontextmanager
async def started(args: list[str], env: Mapping[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            *args, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def answered(url: str, process: asyncio.subprocess.Process, log: Path) -> int:
    """The status `url` answers once the process listens (waits for it to come up)."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"{url}: the process exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                return (await http.get(url)).status_code
            except httpx.TransportError:
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{url}: nothing listens after {START_TIMEOUT} s") from None
                await asyncio.sleep(0.1)


async def healthcheck_passes(command: list[str], health_port: int) -> bool:
    """Run the image's HEALTHCHECK as Docker would; HEALTH_PORT is the image's 8080 (or the chart's
    health port for the operator), mapped like the ports."""
    env = {**os.environ, "HEALTH_PORT": str(health_port)}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 15) == 0


def test_the_image_declares_no_healthcheck_and_says_why() -> None:
    assert healthcheck_command() is None
    text = (Path(__file__).resolve().parents[3] / "Dockerfile").read_text()
    assert "No HEALTHCHECK" in text and "Kubernetes probes" in text


@pytest.mark.parametrize("component", ["api", "worker"])
async def test_runtime_probes_and_healthcheck_are_served(component: str, tmp_path: Path) -> None:
    container = container_of(component)
    image_port = {port: free_port() for port in IMAGE_PORTS}
    ports = {p["name"]: image_port[p["containerPort"]] for p in container["ports"]}
    config = tmp_path / "config.json"
    config.write_text(runtime_config())
    flag = "--port" if component == "api" else "--metrics-port"
    (port,) = ports.values()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    with running_redis(redis_dir, durable=False) as redis:
        env = {
            constants.CONFIG_PATH_ENV: str(config),
            constants.REDIS_URL_ENV: redis.url,
            constants.AUTH_TOKEN_ENV: "probe-token",
            constants.SERVICE_ENV: "probe",
        }
        args = [str(BIN / container["command"][0]), *container["args"], "--host", "127.0.0.1", flag, str(port)]
        log = tmp_path / f"{component}.log"
        async with started(args, env, log) as process:
            for probe in PROBES:
                get = container[probe]["httpGet"]
                url = f"http://127.0.0.1:{ports[get['port']]}{get['path']}"
                assert await answered(url, process, log) == 200, (probe, url, log.read_text()[-2000:])
            command = healthcheck_command()
            if command is not None:
                assert await healthcheck_passes(command, image_port[8080]), f"HEALTHCHECK fails for {component}"


async def test_operator_probes_and_healthcheck_are_served(tmp_path: Path) -> None:
    (deployment,) = [d for d in render() if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"livenessProbe", "readinessProbe"} <= set(container), "the operator needs liveness and readiness"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    mapped = {port: free_port() for port in named.values()}  # the chart's ports, onto free ones
    flags = {"--health-port": mapped[named["health"]], "--metrics-port": mapped[named["metrics"]]}
    args = [str(BIN / container["command"][0])]
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        args.append(f"{flag}={flags[flag]}" if flag in flags else arg)
    async with devcluster.running() as (_, url):
        log = tmp_path / "operator.log"
        async with started([*args, f"--server={url}"], {}, log) as process:
            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                target = f"http://127.0.0.1:{mapped[named[get['port']]]}{get['path']}"
                assert await answered(target, process, log) == 200, (probe, shlex.join(args))
            command = healthcheck_command()
            if command is not None:
                passed = await healthcheck_passes(command, mapped[named["health"]])
                assert passed, "HEALTHCHECK fails for the operator"

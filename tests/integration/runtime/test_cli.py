"""`agent-runtime api` and `agent-runtime worker` as processes, configured like the operator's pods.

Covers: the API process serves probes without a token, refuses /v1 without it and accepts a task
with it; a burst worker process drains the queue and exits 0; the API exits 0 on SIGTERM; the API
refuses to start without AGENT_AUTH_TOKEN (exit 2, message naming the variable).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config

from agent_runtime import constants
from agent_runtime.config import RuntimeConfig


async def test_api_and_burst_worker_processes(tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis) -> None:
    path = write_config(tmp_path, config.model_dump(mode="json"))
    port = free_port()
    env = {constants.AUTH_TOKEN_ENV: "s3cret", constants.TRACK_ENV: "canary"}
    api = ForkedRuntime(
        ["api", "--host", "127.0.0.1", "--port", str(port)], config_path=path, redis_url=redis_server.url, env=env
    )
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert (await client.get("/ready")).json() == {"ready": True}
            assert (await client.post("/v1/tasks", json={"input": "hi"})).status_code == 401
            made = await client.post(
                "/v1/tasks", json={"input": "What is 4*4?"}, headers={"authorization": "Bearer s3cret"}
            )
            assert made.status_code == 202

            worker = ForkedRuntime(
                ["worker", "--burst", "--metrics-port", "0"], config_path=path, redis_url=redis_server.url
            )
            await worker.start()
            try:
                assert await worker.wait(30) == 0, worker.logs()
            finally:
                await worker.kill()
            view = (await client.get(made.json()["status_url"], headers={"authorization": "Bearer s3cret"})).json()
            assert (view["status"], view["result"]) == ("succeeded", "The answer: 4*4 = 16.")
            assert 'track="canary"' in (await client.get("/metrics")).text
        api.signal(signal.SIGTERM)
        assert await api.wait(15) == 0, api.logs()
    finally:
        await api.kill()


async def test_api_refuses_to_start_without_token(
    tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis
) -> None:
    path = write_config(tmp_path, config.model_dump(mode="json"))
    api = ForkedRuntime(["api", "--port", str(free_port())], config_path=path, redis_url=redis_server.url)
    await api.start()
    try:
        assert await api.wait(15) == 2
        assert f"{constants.AUTH_TOKEN_ENV} is not set" in api.logs()
    finally:
        await api.kill()

"""`agent-runtime api` and `agent-runtime worker` say where they are, once, in their JSON logs.

Covers: the API logs one `listening` line with the address it bound (the port it was given); the
worker logs one `started` line with its probe/metrics address and its Redis, without the Redis
password.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config
from agentops_dev.waiting import eventually

from agent_runtime import constants
from agent_runtime.config import RuntimeConfig


def events(process: ForkedRuntime, name: str) -> list[dict[str, Any]]:
    found = []
    for line in process.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


async def test_api_logs_one_listening_line(tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis) -> None:
    path = write_config(tmp_path, config.model_dump(mode="json"))
    port = free_port()
    api = ForkedRuntime(
        ["api", "--host", "127.0.0.1", "--port", str(port)],
        config_path=path,
        redis_url=redis_server.url,
        env={constants.AUTH_TOKEN_ENV: "s3cret"},
    )
    await api.start()
    try:
        (line,) = await eventually(lambda: events(api, "listening"), timeout=30)
        assert (line["component"], line["addresses"]) == ("api", [f"http://127.0.0.1:{port}"])
        api.signal(signal.SIGTERM)
        assert await api.wait(15) == 0, api.logs()
        assert len(events(api, "listening")) == 1
    finally:
        await api.kill()


async def test_worker_logs_one_started_line_without_the_redis_password(
    tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis
) -> None:
    path = write_config(tmp_path, config.model_dump(mode="json"))
    port = free_port()
    secret_url = redis_server.url.replace("redis://", "redis://:hunter2@")
    worker = ForkedRuntime(
        ["worker", "--host", "127.0.0.1", "--metrics-port", str(port)], config_path=path, redis_url=secret_url
    )
    await worker.start()
    try:
        (line,) = await eventually(lambda: events(worker, "started"), timeout=30)
        assert line["component"] == "worker"
        assert line["probes"] == [f"http://127.0.0.1:{port}"]
        assert line["redis"] == redis_server.url
        assert "hunter2" not in worker.logs()
    finally:
        await worker.kill()

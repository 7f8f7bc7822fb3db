"""A Sentinel-managed primary with two replicas and three sentinels: the primary dies mid-run (SIGKILL).

The API (in-process) and two worker processes (`agent-runtime worker`, as a pod runs it) reach
Redis through the sentinels only. Sentinel promotes a replica; nothing is restarted; every task
the API acknowledged (202) ends succeeded. Promised writes wait for one replica
(`redis.wait_replicas: 1`), which closes the window in which asynchronous replication could take
an acknowledged task back (docs/redis.md has the figures measured without it).
"""

from __future__ import annotations

from pathlib import Path

import httpx
from agentops_dev.localmodel import Faults, LocalModelServer
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config
from agentops_dev.waiting import eventually
from prometheus_client import CollectorRegistry

from agent_runtime.api import create_app
from agent_runtime.composition import connect_redis
from agent_runtime.config import RuntimeConfig
from agent_runtime.redisconn import RedisSettings
from tests.integration.runtime.conftest import AUTH, TOKEN
from tests.support.redis_topologies import running_sentinel_group


async def test_acknowledged_tasks_survive_a_sentinel_failover(
    tmp_path: Path, config: RuntimeConfig, model_server: LocalModelServer
) -> None:
    model_server.faults = Faults(latency_seconds=0.15)  # tasks are mid-run when the primary dies
    cfg = config.model_copy(
        update={
            "claim_idle_seconds": 1.0,
            "max_deliveries": 10,
            "worker_concurrency": 4,
            "redis": RedisSettings(wait_replicas=1, wait_timeout_ms=500),
        }
    )
    with running_sentinel_group(tmp_path / "redis") as group:
        client = connect_redis(group.url, cfg.redis)
        path = write_config(tmp_path, cfg.model_dump(mode="json"))
        workers = [
            ForkedRuntime(["worker", "--metrics-port", "0"], config_path=path, redis_url=group.url) for _ in range(2)
        ]
        accepted: list[str] = []
        refused = 0
        app = create_app(cfg, redis=client, registry=CollectorRegistry(), auth_token=TOKEN)
        try:
            for worker in workers:
                await worker.start()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:

                async def submit(n: int) -> bool:
                    nonlocal refused
                    text = f"Task {n}: compute {n}+1, then {n}*2."
                    response = await api.post("/v1/tasks", json={"input": text}, headers=AUTH)
                    if response.status_code == 202:
                        accepted.append(response.json()["task_id"])
                        return True
                    # during the failover: 503 with retry-after, nothing promised
                    assert response.status_code == 503, response.text
                    assert "retry-after" in response.headers
                    refused += 1
                    return False

                async def status_of(task_id: str) -> str:
                    response = await api.get(f"/v1/tasks/{task_id}", headers=AUTH)
                    return str(response.json()["status"]) if response.status_code == 200 else str(response.status_code)

                for n in range(12):
                    await submit(n)

                async def some_running() -> bool:
                    return any([await status_of(t) == "running" for t in accepted])

                await eventually(some_running, timeout=20)
                old = group.server_at(group.primary_port())
                old.kill()
                n = 12
                while group.primary_port() == old.port:  # submissions go on while sentinel decides
                    await submit(n)
                    n += 1
                # One sentinel naming the new primary is not the client healed: the sentinel the
                # client asks first may still name the dead one for a moment (hello messages spread
                # the new configuration), so a caller does what the 503 says, retries, until the
                # service takes tasks again; then 8 more are promised on the new primary.
                wanted = len(accepted) + 8

                async def eight_more() -> bool:
                    nonlocal n
                    n += 1
                    await submit(n)
                    return len(accepted) >= wanted

                await eventually(eight_more, timeout=30, interval=0.1)

                async def all_succeeded() -> bool:
                    return all([await status_of(t) == "succeeded" for t in accepted])

                await eventually(all_succeeded, timeout=60, interval=0.2)
            assert len(accepted) >= 20, (len(accepted), refused)  # 12 before the kill, 8 after
            assert all(worker.alive() for worker in workers)  # nobody restarted
        finally:
            for worker in workers:
                await worker.kill()
            await client.aclose()

"""Managed-Redis style: TLS only (a test CA), and an ACL user allowed exactly one service's keys.

The runtime runs a task end to end (submit, claim, checkpoints, result, limiter, budget, cache,
readiness probe) with those rights only, which proves every key it touches stays in the service's
hash tag; the same user is refused another service's keys and admin commands.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis.asyncio
import redis.exceptions
from prometheus_client import CollectorRegistry

from agent_runtime.api import create_app
from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.config import RuntimeConfig
from agent_runtime.constants import ServiceKeys
from agent_runtime.redisconn import PASSWORD_ENV, USERNAME_ENV, RedisSettings
from tests.integration.runtime.conftest import AUTH, TOKEN
from tests.support.redis_topologies import running_tls_redis

# What docs/redis.md tells an operator of a managed Redis to grant the runtime's user.
RUNTIME_ACL = (
    "resetkeys ~agent:{team-a/svc}:* resetchannels -@all +@read +@write +@scripting +@connection +time -@dangerous"
)


async def test_runtime_works_over_tls_with_an_acl_user_limited_to_its_keys(
    tmp_path: Path, config: RuntimeConfig
) -> None:
    with running_tls_redis(tmp_path / "redis", acl_rules=RUNTIME_ACL) as server:
        settings = RedisSettings(tls_ca_file=str(server.ca_file))
        cfg = config.model_copy(
            update={"namespace": "team-a", "cache_enabled": True, "daily_budget_usd": 10.0, "redis": settings}
        )
        # The credentials as the operator passes them: a plain URL plus the Secret's values in the env.
        env = {USERNAME_ENV: server.username, PASSWORD_ENV: server.password}
        client = connect_redis(server.url(with_credentials=False), cfg.redis, env)
        try:
            app = create_app(cfg, redis=client, registry=CollectorRegistry(), auth_token=TOKEN)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
                assert (await api.get("/ready")).status_code == 200
                task_ids = []
                # an idempotent repeat (200), the same input again (a cache hit), another input
                for text, key in (("What is 6*7?", "a"), ("What is 6*7?", "a"), ("What is 6*7?", None), ("2+3?", None)):
                    body = {"input": text, **({"idempotency_key": key} if key else {})}
                    response = await api.post("/v1/tasks", json=body, headers=AUTH)
                    assert response.status_code in (200, 202), response.text
                    task_ids.append(response.json()["task_id"])
                assert task_ids[0] == task_ids[1]
                parts = build_worker(cfg, redis_client=client, registry=CollectorRegistry(), burst=True)
                try:
                    await parts.worker.run()
                finally:
                    await parts.aclose()
                for task_id in task_ids:
                    done = (await api.get(f"/v1/tasks/{task_id}", headers=AUTH)).json()
                    assert done["status"] == "succeeded", done

            other = ServiceKeys(namespace="team-b", service="svc")
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.get(other.probe())
            with pytest.raises(redis.exceptions.NoPermissionError):
                await client.flushall()
        finally:
            await client.aclose()

        # Without the CA the server's certificate is refused; without the password the user is.
        no_ca = connect_redis(server.url(), RedisSettings(tls=True))
        with pytest.raises(redis.exceptions.ConnectionError):
            await no_ca.ping()
        await no_ca.aclose()
        wrong: redis.asyncio.Redis = connect_redis(
            f"rediss://{server.username}:nope@127.0.0.1:{server.server.port}", settings
        )
        with pytest.raises(redis.exceptions.AuthenticationError):
            await wrong.ping()
        await wrong.aclose()

"""The task API against its own OpenAPI document, fuzzed by schemathesis (an independent tool).

Covers: `agent-runtime api` as a process on loopback (a real redis-server behind it) and the
schemathesis CLI run against its `/openapi.json` with every check (`--checks all`: status codes,
content types, headers, response schemas, 405 with `Allow` for undocumented methods, negative
data refused, resources available after creation and gone after deletion), a fixed seed and a
bounded number of examples per operation, in its stateful phase too: 0 failures. The deprecated
`DELETE /v1/tasks/{id}` (an alias of `POST .../cancel` kept for one release; it cancels and the
task stays readable, so it is not a deletion) is left out with `--exclude-deprecated`, and the cost
report runs without the "schema-valid data is accepted" check (a valid pair of times can be a bad
range, refused with 422 by design).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from agentops_dev.localredis import LocalRedis, free_port
from agentops_dev.runtimeprocesses import ForkedRuntime, write_config

from agent_runtime import constants
from agent_runtime.config import RuntimeConfig

TOKEN = "fuzz-token"
SEED = 35
MAX_EXAMPLES = 25
COSTS = "/v1/costs"

pytestmark = pytest.mark.timeout(600)


async def test_schemathesis_finds_no_failure(tmp_path: Path, config: RuntimeConfig, redis_server: LocalRedis) -> None:
    path = write_config(tmp_path, config.model_dump(mode="json"))
    port = free_port()
    api = ForkedRuntime(
        ["api", "--host", "127.0.0.1", "--port", str(port)],
        config_path=path,
        redis_url=redis_server.url,
        env={constants.AUTH_TOKEN_ENV: TOKEN},
    )
    await api.start()
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            for _ in range(400):
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
        st = Path(sys.executable).parent / "st"
        common = [
            f"{base}/openapi.json",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--exclude-deprecated",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--request-timeout",
            "10",
            "--no-color",
        ]
        runs = [
            # every operation but the cost report, every check
            [*common, "--checks", "all", "--exclude-path", COSTS],
            # the cost report, every check but "schema-valid data is accepted": its `from` and `to`
            # are free text in the schema, and a pair of valid times can still be a bad range
            # (`from` after `to`, before the retention), which the report refuses with 422 by design
            [*common, "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--include-path", COSTS],
        ]
        for arguments in runs:
            result = await asyncio.to_thread(
                subprocess.run,
                [str(st), "run", *arguments],
                capture_output=True,
                text=True,
                timeout=270,
                check=False,
                cwd=tmp_path,
            )
            assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    finally:
        await api.kill()

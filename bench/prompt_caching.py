"""The same tasks with and without prompt caching: cost side by side, priced as the provider prices it.

Usage (from the repository root): `PYTHONPATH=. python bench/prompt_caching.py [--tasks 20] [--tools 12]`.

One redis-server (no persistence), the local model server in this process (it bills a request whose
system prompt or tools carry `cache_control` the way the Messages API does: the prefix as a cache
write the first time, a cache read after, the rest as input). `--tasks` four-step tasks ("Compute
1+2, then 3+4, then 5+6."), a 2,000-character system prompt and `--tools` tool definitions (the
three built-in ones and filler tools, as a real agent's tool list is long), run by one burst worker
(concurrency 4) with `promptCaching` off, then on, at claude-sonnet-5-5's list prices ($2 / $10 per
Mtok; cache writes 1.25x and reads 0.1x the input price). Printed: the cost, input / cache-write /
cache-read / output tokens, and the saving.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from agentops_dev.localmodel import LocalModelServer
from agentops_dev.localredis import LocalRedis
from prometheus_client import CollectorRegistry

from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.config import ProviderConfig, RuntimeConfig
from agent_runtime.queue import TaskQueue

FILLER = '''"""Filler tools: the length of a real agent's tool list, for the prompt-caching bench."""

from agent_runtime.tools import Tool


async def _noop(tool_input):
    return "ok"


TOOLS = [
    Tool(
        name=f"lookup_{n}",
        description="Looks up a record of kind %d in the company's systems and returns it as JSON. " * 4 % ((n,) * 4),
        input_schema={"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        func=_noop,
    )
    for n in range(COUNT)
]
'''


async def run_once(cfg: RuntimeConfig, client: object, tasks: int) -> tuple[int, int, int, int, int]:
    queue = TaskQueue.from_config(cfg, client)  # type: ignore[arg-type]
    ids = [(await queue.submit("Compute 1+2, then 3+4, then 5+6.", max_steps=8)).task_id for _ in range(tasks)]
    parts = build_worker(cfg, redis_client=client, registry=CollectorRegistry(), burst=True, concurrency=4)  # type: ignore[arg-type]
    try:
        await parts.worker.run()
    finally:
        await parts.aclose()
    records = [await queue.get(task_id) for task_id in ids]
    assert all(r.status == "succeeded" for r in records), [r.error for r in records]
    calls = [c for r in records for c in r.checkpoint.calls]
    return (
        sum(r.checkpoint.cost_micros() for r in records),
        sum(c.input_tokens for c in calls),
        sum(c.cache_write_tokens for c in calls),
        sum(c.cache_read_tokens for c in calls),
        sum(c.output_tokens for c in calls),
    )


async def run(args: argparse.Namespace) -> None:
    server = LocalRedis(durable=False)
    server.start()
    client = connect_redis(server.url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-caching-") as tmp:
            module = Path(tmp) / "bench_filler_tools.py"
            module.write_text(FILLER.replace("COUNT", str(max(args.tools - 3, 0))))
            sys.path.insert(0, tmp)  # the filler tools' module, named in the config's `tools`
            async with LocalModelServer() as model:
                base = RuntimeConfig(
                    providers=[ProviderConfig(name="local", model="claude-sonnet-5-5", base_url=model.url)],
                    system_prompt=(
                        "You are a careful agent. Use the tools when they help, then answer concisely. " * 26
                    )[:2000],
                    tools=["bench_filler_tools"],
                    provider_max_retries=0,
                    requests_per_minute=600_000,
                    tokens_per_minute=1_000_000_000,
                    per_task_budget_usd=None,
                )
                rows = {}
                for caching in (False, True):
                    cfg = base.model_copy(update={"service": f"caching-{caching}".lower(), "prompt_caching": caching})
                    rows[caching] = await run_once(cfg, client, args.tasks)
        print(
            f"{args.tasks} tasks x 4 calls, {args.tools} tools, 2,000-character system prompt, claude-sonnet-5-5 prices"
        )
        for caching, (cost, fresh, written, read, output) in rows.items():
            print(
                f"  promptCaching {str(caching).lower():5}: ${cost / 1e6:.6f}  input {fresh}, cache write {written},"
                f" cache read {read}, output {output}"
            )
        print(f"  saving: {1 - rows[True][0] / rows[False][0]:.1%}")
    finally:
        await client.aclose()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--tools", type=int, default=12)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

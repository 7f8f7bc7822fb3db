"""The local model's hold fault, over HTTP: the replies after the first N calls wait until it is lifted.

Covers: with `hold_after=1` the first call is answered while the second waits (still pending at the
server once the first has been answered), and lifting the hold with `PUT /_local/faults` answers it;
calls are numbered in arrival order.
"""

from __future__ import annotations

import asyncio

import httpx
from agentops_dev import waiting
from agentops_dev.localmodel import LocalModelServer

BODY = {"model": "claude-sonnet-5-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}


async def test_calls_after_the_first_n_wait_until_the_hold_is_lifted(model_server: LocalModelServer) -> None:
    async with httpx.AsyncClient(base_url=model_server.url, timeout=30) as http:
        await http.put("/_local/faults", json={"hold": True, "hold_after": 1})
        first = await http.post("/v1/messages", json=BODY)
        assert first.status_code == 200
        second = asyncio.create_task(http.post("/v1/messages", json=BODY))
        await waiting.eventually(lambda: len(model_server.calls) == 2)
        # Held: no reply in half a second (an answered call takes milliseconds). A broken hold fails
        # this; a slow machine cannot (it only delays a reply that must not come).
        done, _ = await asyncio.wait({second}, timeout=0.5)
        assert not done
        assert [c.number for c in model_server.calls] == [1, 2]
        assert [c.outcome for c in model_server.calls] == ["ok", "pending"]
        await http.put("/_local/faults", json={"hold": False})
        reply = await second
        assert reply.status_code == 200
        assert [c.outcome for c in model_server.calls] == ["ok", "ok"]

"""Load for the dev stack: tasks submitted at a steady rate to the API pods the kubelet runs.

`LoadGenerator` sends to the API pods of both tracks in turn (the Service's replica-ratio split),
counting the answers; the end-to-end tests, `bench/canary.py` and part 4 of `agentctl demo` use it.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from agent_runtime import constants
from agentops_dev.kubelet import Kubelet, Pod

__all__ = ["LoadGenerator"]


class LoadGenerator:
    """Submits tasks at `rate` per second to the API pods in turn, counting the answers."""

    def __init__(self, kubelet: Kubelet, token: str, *, rate: float, prompt: str = "Say hello.") -> None:
        self.kubelet = kubelet
        self.token = token
        self.rate = rate
        self.prompt = prompt
        self.accepted = 0
        self.refused = 0
        self._http = httpx.AsyncClient(timeout=5.0, headers={"authorization": f"Bearer {token}"})
        self._pending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        turn = itertools.count()
        period = 1.0 / self.rate
        next_at = time.monotonic()
        try:
            while True:
                pods = self.kubelet.api_pods()
                if pods:
                    pod = pods[next(turn) % len(pods)]
                    task = asyncio.create_task(self._submit(pod))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            for task in list(self._pending):
                task.cancel()
            await asyncio.gather(*self._pending, return_exceptions=True)
            await self._http.aclose()

    async def _submit(self, pod: Pod) -> None:
        try:
            response = await self._http.post(f"http://{pod.address}{constants.TASKS_PATH}", json={"input": self.prompt})
        except httpx.HTTPError:
            self.refused += 1  # a pod being stopped: a real client would retry elsewhere
            return
        if response.status_code in {202, 200, 201}:
            self.accepted += 1
        else:
            self.refused += 1

"""Start and stop runtime processes (`python -m agent_runtime.cli ...`) in tests, without leaking any.

Processes are asyncio subprocesses, so the test's event loop keeps serving the in-process local model
server while they run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_runtime import constants

__all__ = ["RuntimeProcess", "write_config"]


def write_config(directory: Path, config: Mapping[str, Any]) -> Path:
    """Write a runtime config file (as the operator's ConfigMap would mount it)."""
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    return path


class RuntimeProcess:
    """One `agent-runtime` process; its stderr (JSON logs) goes to a file next to the config."""

    def __init__(
        self, args: list[str], *, config_path: Path, redis_url: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = args
        self.log_path = config_path.parent / f"{args[0]}-{id(self)}.log"
        self.env = {
            **os.environ,
            constants.CONFIG_PATH_ENV: str(config_path),
            constants.REDIS_URL_ENV: redis_url,
            **(env or {}),
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent_runtime.cli", *self.args,
                env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        """SIGKILL and reap (no-op if it already exited)."""
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

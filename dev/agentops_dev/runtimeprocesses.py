"""Start and stop runtime processes (`agent_runtime.cli` as its own OS process), without leaking any.

The tests and the demo's kubelet (`agentops_dev.kubelet`) run pods this way. The caller's event loop
keeps serving the in-process local model server while they run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_runtime import constants

__all__ = ["ForkedRuntime", "RuntimeProcess", "write_config"]


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


def _run_cli(args: list[str], env: dict[str, str], log_path: str) -> None:
    """Child side of `ForkedRuntime`: send output to the log file, then run the CLI's main."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(env)
    # Imported here, not at the top: the fork server preloads it, and an importer of this module that
    # never starts a process should not pay for the runtime (the anthropic SDK takes ~1.7 s).
    from agent_runtime import cli  # noqa: PLC0415

    sys.exit(cli.main(args))


class ForkedRuntime:
    """An `agent-runtime` process forked from a fork server that has the runtime already imported.

    Crash tests restart workers twenty times; a fresh interpreter spends ~1.7 s importing the
    anthropic SDK each time. A fork server (multiprocessing "forkserver", runtime preloaded) makes a
    start cost milliseconds. The child is still its own OS process running `agent_runtime.cli.main`,
    killed with a real SIGKILL. The fork server exits with the test process.
    """

    _context: multiprocessing.context.ForkServerContext | None = None

    def __init__(
        self, args: list[str], *, config_path: Path, redis_url: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = args
        self.log_path = config_path.parent / f"{args[0]}-{id(self)}.log"
        self.env = {constants.CONFIG_PATH_ENV: str(config_path), constants.REDIS_URL_ENV: redis_url, **(env or {})}
        self.process: multiprocessing.process.BaseProcess | None = None

    @classmethod
    def context(cls) -> multiprocessing.context.ForkServerContext:
        if cls._context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["agent_runtime.cli", "agentops_dev.runtimeprocesses"])
            cls._context = context
        return cls._context

    async def start(self) -> None:
        """Fork the process. Cancelled meanwhile, it still waits for the fork, so `kill()` can reach it.

        The fork runs in a thread that cancellation cannot stop: without the wait, a caller cancelled
        here (a test's teardown) would leave a process running that nothing knows, and the
        interpreter's exit would wait for it forever.
        """
        self.process = self.context().Process(target=_run_cli, args=(self.args, self.env, str(self.log_path)))
        forking = asyncio.ensure_future(asyncio.to_thread(self.process.start))
        try:
            await asyncio.shield(forking)
        except asyncio.CancelledError:
            await forking
            raise

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.exitcode is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while self.process.exitcode is None:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.args[0]} (pid {self.pid}) still running after {timeout} s")
            await asyncio.sleep(0.01)
        return self.process.exitcode

    async def kill(self) -> None:
        """SIGKILL, reap and release (no-op if it already exited)."""
        if self.process is None:
            return
        if self.process.pid is None:  # never forked (the fork itself failed)
            self.process = None
            return
        if self.process.exitcode is None:
            self.process.kill()
        await self.wait(10)
        self.process.close()
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

"""`kubectl agentservice get --watch` in a real pseudo-terminal (80 x 40), as a person runs it.

Covers: the first frame is drawn; a change reported by the watch API (a canary worker becoming
ready) redraws it; every line fits 80 columns (long queries and messages are wrapped, not cut);
verdicts and phases are coloured on a terminal; Ctrl-C (the terminal's interrupt character, so
SIGINT to the foreground process group) exits 130 without a traceback. `get` on a terminal with
NO_COLOR set prints no colour.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
import threading
from pathlib import Path

import httpx
from agentops_dev import devcluster

from tests.integration.operator.conftest import eventually
from tests.integration.operator.plugin.test_plugin_snapshots import world  # noqa: F401 - the snapshot objects, as a fixture
from tests.support.interrupt import as_foreground_job

PLUGIN = Path(sys.executable).parent / "kubectl-agentservice"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CLEAR = "\x1b[H\x1b[2J"
COLUMNS, ROWS = 80, 40


class Terminal:
    """A process on the slave side of a pty (its controlling terminal); the output is collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal, then become the plugin, as a foreground job
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
            as_foreground_job()
            os.execve(args[0], args, env)
        self.pid, self.fd = pid, fd
        self.output = ""
        self.status: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            self.output += chunk.decode("utf-8", "replace")

    def frames(self) -> list[str]:
        return [ANSI.sub("", frame) for frame in self.output.split(CLEAR)[1:]]

    def exited(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status is not None

    def close(self) -> None:
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self._reader.join(timeout=5)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return {**env, "TERM": "xterm", **extra}


async def test_watch_redraws_on_change_fits_80_columns_and_exits_on_ctrl_c(
    world: datetime.datetime,  # noqa: F811
    cluster: tuple[devcluster.DevCluster, str],
    kubeconfig: Path,
) -> None:
    _, url = cluster
    terminal = Terminal(
        [str(PLUGIN), "--kubeconfig", str(kubeconfig), "get", "support-agent", "--watch"], environment()
    )

    # The pty hands a frame over in chunks: the newest frame may be half read (or a redraw may have
    # begun), so a frame is only looked at once it has arrived through its events (the last section).
    def drawn(frame: str) -> bool:
        return "Events:" in frame and "AnalysisFailed" in frame

    try:
        first = await eventually(lambda: next((f for f in terminal.frames() if drawn(f)), None), timeout=30)
        assert re.search(r"worker\s+canary\s+0\s+1", first), first

        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.patch(
                "/apis/apps/v1/namespaces/default/deployments/support-agent-worker-canary/status",
                json={"status": {"replicas": 1, "readyReplicas": 1}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            response.raise_for_status()
        last = await eventually(
            lambda: next(
                (f for f in reversed(terminal.frames()) if drawn(f) and re.search(r"worker\s+canary\s+1\s+1", f)),
                None,
            ),
            timeout=15,
        )
        assert len(terminal.frames()) >= 2

        too_wide = [line for line in last.splitlines() if len(line.rstrip("\r")) > COLUMNS]
        assert not too_wide, too_wide
        assert "error-rate query:" in last and 'status="failed"}[2m]))' in last  # wrapped, not cut
        assert "\x1b[31mfailure\x1b[0m" in terminal.output  # coloured on a terminal

        os.write(terminal.fd, b"\x03")  # Ctrl-C
        await eventually(terminal.exited, timeout=15)
        assert terminal.status in (0, 130), terminal.output
        assert "Traceback" not in terminal.output, terminal.output[-3000:]
    finally:
        terminal.close()


async def test_no_color_is_honoured_on_a_terminal(world: datetime.datetime, kubeconfig: Path) -> None:  # noqa: F811
    terminal = Terminal(
        [str(PLUGIN), "--kubeconfig", str(kubeconfig), "get", "support-agent"], environment(NO_COLOR="1")
    )
    try:
        await eventually(terminal.exited, timeout=30)
        await asyncio.to_thread(terminal._reader.join, 5)
        assert terminal.status == 0, terminal.output
        assert "Last analysis: failure" in terminal.output
        assert "\x1b[3" not in terminal.output  # no colour
    finally:
        terminal.close()

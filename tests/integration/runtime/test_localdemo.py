"""The runtime demo (`run_runtime_demo`), as `agentctl demo` runs it.

Covers: it starts redis-server, the local model server, the API and a worker, runs a task that uses
the calculator through them over HTTP and one that calls `mcp-server-time` (stdio), writes the
answers, the usage and metric lines, and leaves no process (the MCP server's included) or listening
port behind.
"""

from __future__ import annotations

import io
import os
import re
import socket
from pathlib import Path

from agentops_dev.localdemo import run_runtime_demo


def child_processes() -> list[str]:
    me = str(os.getpid())
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue
        if fields[3] == me:
            names.append(fields[1])
    return names


def listening(url: str) -> bool:
    host, port = re.search(r"//([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


async def test_demo_runs_a_tool_task_and_cleans_up() -> None:
    before = child_processes()
    out = io.StringIO()
    await run_runtime_demo(out)
    text = out.getvalue()
    assert "-> succeeded" in text
    assert "answer: The answer: 12*7+3 = 87; 2**10 = 1024." in text
    assert re.search(r"usage:  \d+ input tokens, \d+ output tokens, \$0\.\d{6}", text)
    assert re.search(
        r'agent_requests_total\{intent="default",service="demo",status="succeeded",track="stable"\} 2\.0', text
    )
    assert 'agent_tool_calls_total{service="demo",status="ok",tool_name="calculator",track="stable"} 2.0' in text
    assert re.search(r'answer: The answer: time__get_current_time returned \{\s+"timezone": "Asia/Tokyo"', text)
    assert (
        'agent_tool_calls_total{service="demo",status="ok",tool_name="time__get_current_time",track="stable"} 1.0'
        in text
    )
    assert 'agent_queue_depth{service="demo",track="stable"} 0.0' in text
    urls = set(re.findall(r"(?:redis|http)://[\d.]+:\d+", text))
    assert len(urls) == 4
    assert not any(listening(url) for url in urls)
    assert child_processes() == before  # redis-server is gone

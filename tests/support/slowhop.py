"""An HTTP hop in front of the Prometheus API that answers the queries of chosen namespaces late.

It stands for expensive PromQL: a query whose `namespace` parameter (the one the operator sends to
prom-label-proxy) names a slow namespace is held `delay` seconds, then forwarded to the upstream
(prom-label-proxy, then a real Prometheus) and its answer relayed as it came. Every other query is
forwarded at once. One thread per request, as a server under load answers them side by side.
Used by the analysis fairness test and `bench/analysis_fairness.py`.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from types import TracebackType
from typing import Any

from agentops_dev.localredis import free_port

__all__ = ["SlowHop"]


class SlowHop:
    """A forwarding HTTP server on loopback (see the module docstring); stopped on exit."""

    def __init__(self, upstream: str, slow: Collection[str], delay: float, *, param: str = "namespace") -> None:
        self.upstream = upstream.rstrip("/")
        self.slow = frozenset(slow)
        self.delay = delay
        self.param = param
        self.held = 0  # queries held so far
        self._lock = threading.Lock()
        hop = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                if set(query.get(hop.param, [])) & hop.slow:
                    with hop._lock:
                        hop.held += 1
                    time.sleep(hop.delay)
                status, body, kind = hop.forward(self.path, dict(self.headers))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (its timeout): as a slow server sees it

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: thousands of queries

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="slow-hop", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def forward(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        wanted = {k: v for k, v in headers.items() if k.lower() in {"authorization", "accept"}}
        request = urllib.request.Request(self.upstream + path, headers=wanted)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "application/json")
        except (urllib.error.URLError, OSError) as error:  # the upstream is gone (the scenario is ending)
            return 502, str(error).encode(), "text/plain"

    def __enter__(self) -> SlowHop:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

"""`agent-runtime api | worker | eval | localmodel | demo`: the processes the operator's Deployments and Jobs run.

`eval` is `agentctl eval` (`evaluation/command.py`): the operator's evaluation Jobs run it.

Configuration comes from the mounted file (`AGENT_CONFIG_PATH`) and the environment
(`AGENT_REDIS_URL`, `AGENT_AUTH_TOKEN`, provider keys, `AGENT_TRACK`); see `config.py`.
`localmodel` and `demo` run the development package (`agentops_dev`), imported only by them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
import uvloop
from prometheus_client import CollectorRegistry

from agent_runtime import config as runtime_config
from agent_runtime import constants, errors, redisconn, tracing
from agent_runtime import logging as runtime_logging
from agent_runtime.api import create_app
from agent_runtime.composition import build_worker, connect_redis
from agent_runtime.evaluation import command as evaluation_command
from agent_runtime.worker import serve_probes

_log = runtime_logging.get_logger(__name__)

DEV_PACKAGE_MISSING = (
    "agent-runtime: {command} needs the development package agentops_dev: pip install ./dev (from the source tree)"
)


def _dev_module(name: str, command: str) -> Any:
    """A module of the development package, which the image does not ship; SystemExit(2) without it."""
    try:
        return importlib.import_module(f"agentops_dev.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("agentops_dev", f"agentops_dev.{name}"):
            raise
        print(DEV_PACKAGE_MISSING.format(command=command), file=sys.stderr)
        raise SystemExit(2) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent-runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("AGENT_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="serve the task API, /health, /ready and /metrics")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=constants.API_PORT)

    worker = sub.add_parser("worker", help="run tasks from the queue")
    worker.add_argument("--host", default="0.0.0.0")
    worker.add_argument("--metrics-port", type=int, default=constants.WORKER_METRICS_PORT, help="0: no probe server")
    worker.add_argument("--concurrency", type=int, default=None, help="overrides worker_concurrency")
    worker.add_argument("--burst", action="store_true", help="drain the queue, then exit")

    evaluate = sub.add_parser("eval", help="run an evaluation suite against a task API (as agentctl eval)")
    evaluation_command.add_arguments(evaluate)

    sub.add_parser("demo", help="run Redis, the local model, the API and a worker locally; one task through them")

    local = sub.add_parser("localmodel", help="serve the local Anthropic-compatible model (offline demo, tests)")
    local.add_argument("--host", default="127.0.0.1")
    local.add_argument("--port", type=int, default=8765)
    local.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    local.add_argument("--error-ratio", type=float, default=0.0)
    local.add_argument("--error-status", type=int, default=500, choices=[429, 500, 503, 529])
    local.add_argument("--malformed-ratio", type=float, default=0.0)
    local.add_argument("--wrong-per-ten", type=int, default=0, help="final answers in every 10 that are wrong")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runtime_logging.configure(args.log_level)
    try:
        if args.command == "api":
            return _run_api(args)
        if args.command == "worker":
            # uvloop: the worker's CPU goes to sockets (Redis, the providers) and event-loop turns,
            # which uvloop does in C; ~10 % less CPU per model call (bench/RESULTS.md).
            return uvloop.run(_run_worker(args))
        if args.command == "eval":
            return evaluation_command.run(args, prog="agent-runtime eval")
        if args.command == "demo":
            localdemo = _dev_module("localdemo", "demo")
            asyncio.run(
                localdemo.run_runtime_demo(
                    sys.stdout, log_level=args.log_level if args.log_level != "info" else "warning"
                )
            )
            return 0
        return uvloop.run(_run_localmodel(args))
    except errors.ConfigError as exc:
        print(f"agent-runtime: configuration error: {exc}", file=sys.stderr)
        return 2


def _redis_url() -> str:
    return os.environ.get(constants.REDIS_URL_ENV, constants.DEFAULT_REDIS_URL)


def _redis_location(url: str) -> str:
    """The URL without credentials: the URL may carry a password, a log line must not."""
    return redisconn.location(url)


def _address(sockname: Any) -> str:
    """`http://host:port` of a bound socket (IPv6 hosts bracketed)."""
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"


def _run_api(args: argparse.Namespace) -> int:
    config = runtime_config.load()
    token = os.environ.get(constants.AUTH_TOKEN_ENV)
    if not token:
        raise errors.ConfigError(f"{constants.AUTH_TOKEN_ENV} is not set: the API refuses to serve without a token")
    _configure_tracing(config, "api")
    redis_client = connect_redis(_redis_url(), config.redis)
    app = create_app(config, redis=redis_client, registry=CollectorRegistry(), auth_token=token)
    server = _ApiServer(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=20,
            loop="uvloop",  # as the worker: the API's CPU goes to sockets and event-loop turns too
        )
    )
    try:
        server.run()
    finally:
        tracing.shutdown()
    return 0


def _configure_tracing(config: runtime_config.RuntimeConfig, component: str) -> None:
    resource = {"agent.service": config.service, "agent.track": config.track.value, "agent.component": component}
    tracing.configure(f"{config.service}-{component}", resource=resource)


class _ApiServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown (exit 143); the API exits 0 like the worker.

    uvicorn's own "Uvicorn running on" line goes to the standard logging it is told not to configure
    (`log_config=None`), so the API says where it listens itself, once, in the runtime's JSON logs.
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            addresses = [_address(s.getsockname()) for server in self.servers for s in server.sockets]
            _log.info("listening", component="api", addresses=addresses)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # private in uvicorn >= 0.29: what it would re-raise


async def _run_worker(args: argparse.Namespace) -> int:
    config = runtime_config.load()
    _configure_tracing(config, "worker")
    redis_client = connect_redis(_redis_url(), config.redis)
    parts = build_worker(
        config, redis_client=redis_client, registry=CollectorRegistry(), burst=args.burst, concurrency=args.concurrency
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, parts.worker.stop)
    probes = None
    addresses: list[str] = []
    if args.metrics_port:
        probes = await serve_probes(parts.queue, parts.metrics, parts.worker, host=args.host, port=args.metrics_port)
        addresses = [_address(address) for address in probes.addresses]
    _log.info("started", component="worker", probes=addresses, redis=_redis_location(_redis_url()))
    try:
        await parts.worker.run()
    finally:
        if probes is not None:
            await probes.cleanup()
        await parts.aclose()
        await redis_client.aclose()
        tracing.shutdown()
    return 0


async def _run_localmodel(args: argparse.Namespace) -> int:
    localmodel = _dev_module("localmodel", "localmodel")
    faults = localmodel.Faults(
        latency_seconds=args.latency,
        error_ratio=args.error_ratio,
        error_status=args.error_status,
        malformed_ratio=args.malformed_ratio,
        wrong_per_ten=args.wrong_per_ten,
    )
    server = localmodel.LocalModelServer(host=args.host, port=args.port, faults=faults)
    await server.start()
    print(f"local model server on {server.url} (POST /v1/messages)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`agentctl operator`: the composition root that wires kopf, the API client and the metrics.

Everything configurable is read here, once, at start-up (flags, then kopf settings); handlers
get their collaborators through kopf's `memo`. Choices made for kopf:
- standalone (no peering objects) by default: the chart's single replica, whose Deployment's
  `Recreate` strategy keeps two operators from overlapping; with `--peering NAME` (the chart's
  `replicaCount` 2 or more) kopf's peering elects one active replica, the others stand by and the
  operator's own loops follow (`leadership`); `--peering-lifetime` bounds the takeover;
- kopf's own bookkeeping (handler progress, the last handled spec) lives in `agentops.dev/*`
  annotations, never in the status, whose schema belongs to the AgentService API;
- no finalizer on AgentServices: deletion is the garbage collector's job (why: `handlers`);
- kopf posts no Events from log lines; the operator posts its own, for significant steps only;
- finite API timeouts, so a hung connection turns into a retry instead of a stuck handler.

Canary analyses need a Prometheus: `--prometheus-url` (or `PROMETHEUS_URL`). Without it the
operator still runs, and a canary rollout holds, then pauses, with a condition saying so.
`--prometheus-scrape-interval` is the scrape interval of the runtime's metrics, which sets the
shortest analysis window (four scrapes). The same Prometheus gives `status.budget` of services with
a daily budget, refreshed at most every `--budget-interval` seconds (default 60; docs/budgets.md).
With `--prometheus-namespace-param namespace` the URL is a prom-label-proxy (the chart's sidecar)
and every query carries the namespace of its AgentService (docs/security.md). Credentials for
Prometheus come from the environment (`PROMETHEUS_BEARER_TOKEN`, or `PROMETHEUS_USERNAME` and
`PROMETHEUS_PASSWORD`: the chart fills them from a Secret), never from a status or a log; the
URL is shown with its user and password cut out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Final

import aiohttp.web
import kopf
import structlog
import uvloop

from agent_operator import __version__, budget, budgetreport, handlers, leadership, opmetrics, policy, reconcile
from agent_operator.api import defaults as api_defaults
from agent_operator.canary import prometheus as prom
from agent_operator.canary import rollouts
from agent_operator.canary.prometheus import Prometheus
from agent_operator.kube import client as kube_client
from agent_operator.kube import watch

log = structlog.get_logger(__name__)

ANNOTATIONS_PREFIX: Final = "agentops.dev"
DEFAULT_HEALTH_PORT: Final = 8080
DEFAULT_METRICS_PORT: Final = 9090
DEFAULT_RESYNC_INTERVAL: Final = 60.0
# A replica not heard of for this long is dead. kopf's default is 60 s; 20 s keeps the takeover
# under 30 s, and the keep-alive (every lifetime minus 5-10 s, kopf's jitter) still has 5 s to land.
DEFAULT_PEERING_LIFETIME: Final = 20
# AgentServices kopf processes at once (a worker each, holding its body and diff while it waits for
# the reconcile gate). kopf's default is unbounded: 1,000 services created at once start 1,000
# workers. Past the limit kopf stops reading the watch, so the rest wait as bytes in the socket.
DEFAULT_WORKER_LIMIT: Final = 128
# How long a kopf worker waits for its object's next event before it exits and frees its slot
# (kopf's default: 5 s). The events a reconcile causes (its status patch, kopf's annotations) come
# back within a second; held 5 s, 128 slots let at most ~25 services a second through a burst, which
# was the wall at 2,000 and 10,000 services created at once (bench/RESULTS.md), not the CPU.
WORKER_IDLE_TIMEOUT: Final = 1.0


@dataclasses.dataclass(frozen=True)
class Config:
    """The operator's start-up configuration."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    health_port: int | None = DEFAULT_HEALTH_PORT
    metrics_port: int | None = DEFAULT_METRICS_PORT
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    server: str | None = None  # an API server URL without credentials (the dev cluster)
    operator_version: str | None = None  # the version of the default runtime image (None: the operator's own)
    host: str = "0.0.0.0"
    prometheus_url: str | None = None  # where canary analyses query; None: analyses cannot run
    prometheus_scrape_interval: float = rollouts.DEFAULT_SCRAPE_INTERVAL
    # the URL is a prom-label-proxy taking the tenant's namespace in this query parameter; None: plain Prometheus
    prometheus_namespace_param: str | None = None
    prometheus_query_timeout: float = prom.DEFAULT_TIMEOUT_SECONDS  # seconds, one query
    analysis_time_limit: float = prom.DEFAULT_TIME_LIMIT_SECONDS  # seconds, all queries of one analysis
    prometheus_bearer_token: str | None = dataclasses.field(default=None, repr=False)
    prometheus_basic_auth: tuple[str, str] | None = dataclasses.field(default=None, repr=False)
    analysis_tick: float = reconcile.ANALYSIS_TICK
    budget_interval: float = budget.DEFAULT_INTERVAL  # seconds between refreshes of one status.budget
    budget_tick: float = reconcile.BUDGET_TICK
    peering: str | None = None  # the peering object's name; None: standalone
    priority: int | None = None  # None: `leadership.default_priority()`, the earliest replica leads
    peering_lifetime: int = DEFAULT_PEERING_LIFETIME
    worker_limit: int | None = DEFAULT_WORKER_LIMIT  # None: unbounded
    # The platform's rules (the chart's `policy.*` values); the default enforces none of them.
    admission: policy.Policy = dataclasses.field(default_factory=policy.Policy)
    defaults: api_defaults.Defaults = (
        api_defaults.NONE
    )  # added to every AgentService (the chart's agentPods, monitoring)

    @property
    def all_namespaces(self) -> bool:
        return not self.namespaces

    def prometheus(self) -> Prometheus | None:
        """A client of the configured Prometheus (None without a URL); each caller its own pool."""
        if not self.prometheus_url:
            return None
        return Prometheus(
            self.prometheus_url,
            namespace_param=self.prometheus_namespace_param,
            timeout_seconds=self.prometheus_query_timeout,
            time_limit_seconds=self.analysis_time_limit,
            bearer_token=self.prometheus_bearer_token,
            basic_auth=self.prometheus_basic_auth,
        )


def _worker_limit(value: str) -> int:
    limit = int(value)
    if limit < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (unbounded) or more, not {limit}")
    return limit


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return number


def _prometheus_credentials() -> tuple[str | None, tuple[str, str] | None]:
    """Prometheus credentials from the environment (the chart's Secret): a bearer token, or basic auth."""
    token = os.environ.get("PROMETHEUS_BEARER_TOKEN") or None
    username, password = os.environ.get("PROMETHEUS_USERNAME"), os.environ.get("PROMETHEUS_PASSWORD")
    return token, (username, password or "") if username else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentctl operator", description="Run the AgentService operator.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], metavar="NS", help="watch this namespace")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--health-port", type=int, default=int(os.environ.get("HEALTH_PORT", DEFAULT_HEALTH_PORT)))
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=DEFAULT_RESYNC_INTERVAL,
        metavar="SECONDS",
        help="full pass over every AgentService, the safety net (children are watched; docs/operator.md)",
    )
    parser.add_argument("--server", default=None, help="API server URL without credentials (development)")
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("PROMETHEUS_URL") or None,
        metavar="URL",
        help="Prometheus HTTP API for canary analyses (default: $PROMETHEUS_URL; without it rollouts pause)",
    )
    parser.add_argument(
        "--prometheus-namespace-param",
        default=os.environ.get("PROMETHEUS_NAMESPACE_PARAM") or None,
        metavar="NAME",
        help="the URL is prom-label-proxy: send each query with NAME=<the AgentService's namespace> "
        "(the chart's sidecar: namespace; docs/security.md)",
    )
    parser.add_argument(
        "--prometheus-query-timeout",
        type=_positive,
        default=prom.DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="time limit of one query (default: %(default)s)",
    )
    parser.add_argument(
        "--analysis-time-limit",
        type=_positive,
        default=prom.DEFAULT_TIME_LIMIT_SECONDS,
        metavar="SECONDS",
        help="time limit of all the queries of one analysis; the rest are not sent (default: %(default)s)",
    )
    parser.add_argument(
        "--prometheus-scrape-interval",
        type=float,
        default=rollouts.DEFAULT_SCRAPE_INTERVAL,
        metavar="SECONDS",
        help="scrape interval of the runtime metrics (an analysis window spans at least four)",
    )
    parser.add_argument(
        "--budget-interval",
        type=float,
        default=budget.DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="refresh status.budget (today's spend, from Prometheus) at most this often (default: %(default)s)",
    )
    parser.add_argument(
        "--peering",
        default=None,
        metavar="NAME",
        help="run as one of several replicas: kopf's peering object NAME elects the active one "
        "(ClusterKopfPeering, or a KopfPeering in each --namespace; docs/operator.md)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority, the highest live one is active (default: from the start time, the earliest leads)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=DEFAULT_PEERING_LIFETIME,
        metavar="SECONDS",
        help="a replica not heard of for this long is dead and a standby takes over (default: %(default)s)",
    )
    parser.add_argument(
        "--worker-limit",
        type=_worker_limit,
        default=DEFAULT_WORKER_LIMIT,
        metavar="N",
        help="AgentServices kopf processes at once, the rest wait in the watch (0: unbounded; default: %(default)s)",
    )
    rules = parser.add_argument_group(
        "policy", "the platform's rules for AgentServices (the chart's policy.* values; docs/security.md)"
    )
    rules.add_argument(
        "--policy-enforced",
        action="store_true",
        help="refuse specs that break the rules below (PolicyViolation condition, no children)",
    )
    rules.add_argument(
        "--policy-allowed-image",
        action="append",
        default=[],
        metavar="REPOSITORY",
        help="an image repository spec.image may name, with any tag or digest; ending in '/': a registry path",
    )
    rules.add_argument(
        "--policy-allowed-service-account",
        action="append",
        default=[],
        metavar="NAME",
        help="a name spec.serviceAccountName may take",
    )
    rules.add_argument(
        "--policy-allow-token-automount",
        action="store_true",
        help="let spec.automountServiceAccountToken be true",
    )
    rules.add_argument(
        "--policy-allowed-pod-annotation",
        action="append",
        default=[],
        metavar="PREFIX",
        help="a prefix every key of spec.podAnnotations must start with (one of them)",
    )
    rules.add_argument(
        "--allowed-provider-host",
        action="append",
        default=[],
        metavar="HOST",
        help="a closed list: provider baseURLs may name only these hosts (default: any but link-local and metadata)",
    )
    api_defaults.add_arguments(parser)
    parser.add_argument("--log-format", choices=("json", "text"), default=os.environ.get("AGENT_LOG_FORMAT", "json"))
    parser.add_argument("--verbose", action="store_true")
    return parser


def settings_for(config: Config) -> kopf.OperatorSettings:
    """kopf's settings, fixed once at start-up."""
    settings = kopf.OperatorSettings()
    settings.peering.standalone = config.peering is None
    if config.peering is not None:
        settings.peering.name = config.peering
        # Paused until the peering object has been read: a replica never starts writing before it
        # knows whether another one is active.
        settings.peering.mandatory = True
        settings.peering.priority = config.priority if config.priority is not None else leadership.default_priority()
        settings.peering.lifetime = config.peering_lifetime
    settings.peering.clusterwide = config.all_namespaces
    # Watching given namespaces needs no namespace scan: kopf would otherwise list and watch every
    # namespace cluster-wide, which a namespaced install's RBAC rightly forbids (a 403 at start).
    settings.scanning.disabled = not config.all_namespaces
    settings.posting.loggers = False
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATIONS_PREFIX}/finalizer"
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.queueing.worker_limit = config.worker_limit
    settings.queueing.idle_timeout = WORKER_IDLE_TIMEOUT
    settings.execution.max_workers = 4  # every handler is async; the pool only serves kopf's internals
    return settings


async def login(config: Config, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials: the dev server as given, else the pod's service account, else the kubeconfig."""
    if config.server is not None:
        return kopf.ConnectionInfo(server=config.server, default_namespace="default")
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no credentials: neither a service account token nor a kubeconfig was found")
    return info


async def _metrics_server(metrics: opmetrics.Metrics, host: str, port: int) -> aiohttp.web.AppRunner:
    async def serve(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", serve)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port).start()
    return runner


async def operate(
    config: Config,
    *,
    metrics: opmetrics.Metrics | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or a signal arrives, when in the main thread).

    kopf cancels every task created in its event loop after it started, so an embedding program
    (the tests, the demo) runs this in a thread of its own with `threading.Event` flags.
    """
    metrics = metrics if metrics is not None else opmetrics.create()
    settings = settings_for(config)

    async def credentials() -> kopf.ConnectionInfo:
        return await login(config, settings)

    client = kube_client.Client(credentials, metrics)
    prometheus = config.prometheus()
    canary_rollouts = rollouts.Rollouts(
        client,
        metrics,
        prometheus=prometheus,
        scrape_interval_seconds=config.prometheus_scrape_interval,
    )
    # Its own client: the budget loop's queries never wait behind an analysis's in one connection pool.
    budget_prometheus = config.prometheus()
    budgets = budgetreport.BudgetReporter(
        client, metrics, prometheus=budget_prometheus, interval=config.budget_interval
    )
    reconciler = reconcile.Reconciler(
        client,
        metrics,
        operator_version=config.operator_version,
        canary=canary_rollouts,
        budgets=budgets,
        admission=config.admission,
        defaults=config.defaults,
    )
    # Children are watched in the scope the operator serves: the whole cluster, or its namespaces.
    children = watch.Children(client, reconciler.poke, metrics, namespaces=config.namespaces)
    reconciler.follow_children(children.owned)  # new services' children from the watches, not LISTs
    registry = kopf.OperatorRegistry()
    handlers.register(
        registry,
        resync_interval=config.resync_interval,
        analysis_tick=config.analysis_tick,
        budget_tick=config.budget_tick,
        peering=config.peering,
    )

    @kopf.on.login(registry=registry)
    async def agentservice_login(**_: Any) -> kopf.ConnectionInfo:
        return await credentials()

    runner = None
    if config.metrics_port is not None:
        runner = await _metrics_server(metrics, config.host, config.metrics_port)
    liveness = f"http://{config.host}:{config.health_port}/healthz" if config.health_port is not None else None
    log.info(
        "operator_starting",
        version=__version__,
        namespaces=list(config.namespaces) or "all",
        resync_interval=config.resync_interval,
        prometheus=prom.redact_url(config.prometheus_url)
        if config.prometheus_url
        else "not configured: canary rollouts cannot be analysed",
        prometheus_namespace_param=config.prometheus_namespace_param
        or "none: spec.canary.checks queries are not confined to their namespace",
        peering=config.peering or "standalone",
        priority=settings.peering.priority if config.peering is not None else None,
        peering_lifetime=config.peering_lifetime if config.peering is not None else None,
    )
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=config.peering is None,
            peering_name=config.peering,
            clusterwide=config.all_namespaces,
            namespaces=list(config.namespaces),
            liveness_endpoint=liveness,
            memo=kopf.Memo(reconciler=reconciler, children=children),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await client.close()
        for connected in (prometheus, budget_prometheus):
            if connected is not None:
                connected.close()
        if runner is not None:
            await runner.cleanup()


class Background:
    """The operator in a thread with its own event loop, for embedding programs (demo, bench)."""

    def __init__(self, config: Config, metrics: opmetrics.Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else opmetrics.create()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="agentservice-operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(operate(self.config, metrics=self.metrics, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as exc:  # surfaced by start()/stop()
            self._errors.append(exc)
            self._ready.set()

    async def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, timeout)
        if self._errors or not self._ready.is_set():
            raise RuntimeError(f"the operator did not start: {self._errors or 'timeout'}")

    @property
    def alive(self) -> bool:
        """Whether the operator's thread is still running."""
        return self._thread.is_alive()

    async def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, timeout)
        if self._errors:
            raise RuntimeError(f"the operator failed: {self._errors[0]!r}") from self._errors[0]


def _configure_logging(log_format: str, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL)
    renderer: Any = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def config_from(args: argparse.Namespace) -> Config:
    namespaces = tuple(getattr(args, "namespace", None) or ())
    token, basic = _prometheus_credentials()
    return Config(
        namespaces=() if getattr(args, "all_namespaces", False) else namespaces,
        health_port=getattr(args, "health_port", DEFAULT_HEALTH_PORT),
        metrics_port=getattr(args, "metrics_port", DEFAULT_METRICS_PORT),
        resync_interval=getattr(args, "resync_interval", DEFAULT_RESYNC_INTERVAL),
        server=getattr(args, "server", None),
        prometheus_url=getattr(args, "prometheus_url", None) or None,
        prometheus_scrape_interval=getattr(args, "prometheus_scrape_interval", rollouts.DEFAULT_SCRAPE_INTERVAL),
        prometheus_namespace_param=getattr(args, "prometheus_namespace_param", None) or None,
        prometheus_query_timeout=getattr(args, "prometheus_query_timeout", prom.DEFAULT_TIMEOUT_SECONDS),
        analysis_time_limit=getattr(args, "analysis_time_limit", prom.DEFAULT_TIME_LIMIT_SECONDS),
        prometheus_bearer_token=token,
        prometheus_basic_auth=basic,
        budget_interval=getattr(args, "budget_interval", budget.DEFAULT_INTERVAL),
        peering=getattr(args, "peering", None) or None,
        priority=getattr(args, "priority", None),
        peering_lifetime=getattr(args, "peering_lifetime", DEFAULT_PEERING_LIFETIME),
        worker_limit=getattr(args, "worker_limit", DEFAULT_WORKER_LIMIT) or None,
        admission=policy.Policy(
            enforced=getattr(args, "policy_enforced", False),
            allowed_images=tuple(getattr(args, "policy_allowed_image", None) or ()),
            allowed_service_accounts=tuple(getattr(args, "policy_allowed_service_account", None) or ()),
            allow_token_automount=getattr(args, "policy_allow_token_automount", False),
            allowed_pod_annotations=tuple(getattr(args, "policy_allowed_pod_annotation", None) or ()),
            allowed_provider_hosts=tuple(getattr(args, "allowed_provider_host", None) or ()),
        ),
        defaults=api_defaults.from_args(args),
    )


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Entry point of `agentctl operator` (argv, or the namespace `agentctl` already parsed)."""
    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    _configure_logging(getattr(args, "log_format", "json"), getattr(args, "verbose", False))
    try:
        config = config_from(args)
    except ValueError as exc:  # a chart value the spec's own rules refuse: stop before serving anything
        structlog.get_logger(__name__).error("invalid operator-wide default", error=str(exc))
        return 2
    try:
        # uvloop: the operator's CPU goes to its API connections (watch streams, reads, applies) and
        # event-loop turns, which uvloop does in C (bench/RESULTS.md: 10,000 services).
        uvloop.run(operate(config))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

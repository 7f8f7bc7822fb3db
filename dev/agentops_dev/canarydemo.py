"""Part 4 of `agentctl demo`: a canary rollout judged by a real Prometheus.

It runs on the dev stack of the end-to-end tests (`agentops_dev.stack`): the dev cluster, the real
operator with `--prometheus-url`, the kubelet running every pod as an `agent-runtime` process, a
real `prometheus` scraping them every second, and load on the API pods. Three local model servers
stand for three versions of the model: v1 (stable), v2 (faulty: 3 calls in 10 end in a final
error) and v3 (good). v2 is rolled out and rolled back, and the failing checks are printed with
their query, value and threshold; v3 is promoted step by step, shown after every step through
the `kubectl agentservice get` view (mid-rollout: the plugin's view function on the dev cluster's
objects of that instant; once promoted: the plugin itself, run against the dev cluster), and the
rollouts end in `kubectl agentservice history`. Nothing is waited for by the clock: each line
follows an event the stack reports (an analysis in the status, pods ready, targets scraped).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TextIO

import yaml
from agent_operator import objects
from agent_operator.api import models
from agent_operator.manifests import naming, templatehash
from agent_operator.plugin import cli as plugin
from agent_operator.plugin import views

from agentops_dev import devcluster, localprometheus, waiting
from agentops_dev.localmodel import Faults, LocalModelServer, fault_script
from agentops_dev.localprometheus import DiscoveringPrometheus
from agentops_dev.localredis import LocalRedis
from agentops_dev.stack import NAMESPACE, Stack, running_stack, service_body

__all__ = ["MISSING_PROMETHEUS", "NAME", "run_canary_demo"]

NAME: Final = "support-agent"
WORKERS: Final = 4  # enough workers that each step below 100 moves pods: 1 of 4 canary, then 2 of 4
RATE: Final = 12.0  # tasks per second submitted to the API pods
FAULTY_ERRORS_PER_TEN: Final = 3
ROLLOUT_TIMEOUT: Final = 90.0
STEPS_PER_TASK: Final = (
    'sum(rate(agent_steps_count_sum{service="{{service}}", namespace="{{namespace}}", track="{{track}}"}[10s]))'
    ' / sum(rate(agent_steps_count_count{service="{{service}}", namespace="{{namespace}}", track="{{track}}"}[10s]))'
)
CANARY: Final[dict[str, Any]] = {
    "steps": [25, 50, 100],
    "interval": "3s",
    "minRequests": 5,
    "maxErrorRate": 0.05,
    "maxP95LatencySeconds": 10,
    "maxErrorRatio": 2,
    "failureLimit": 2,
    "checks": [{"name": "steps-per-task", "query": STEPS_PER_TASK, "max": 4}],
}
MISSING_PROMETHEUS: Final = (
    "part 4 needs prometheus (the Debian package), which is not installed here:\n"
    "  run `sudo apt-get install prometheus` (or `make setup` as root), then `make demo` again\n"
)


class _Narrator:
    """Writes the narrative, and the rollout's progress as the status reports it (analyses, steps)."""

    def __init__(self, out: TextIO, stack: Stack) -> None:
        self.out = out
        self.stack = stack
        self.since = time.monotonic()
        self._analyses: set[tuple[str, int, str]] = set()
        self._position: tuple[str, int] | None = None

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def mark(self) -> None:
        """Count time from now, and report only what happens from now on."""
        self.since = time.monotonic()
        canary = self.stack.canary(NAME)
        self._analyses |= {_key(entry) for entry in canary.get("history") or []}
        self._position = (str(canary.get("phase", "")), int(canary.get("weight", 0)))

    def report(self) -> None:
        """Print what is new in the status since the last call: analyses, then the phase and weight."""
        canary = self.stack.canary(NAME)
        for entry in canary.get("history") or []:
            key = _key(entry)
            if key not in self._analyses:
                self._analyses.add(key)
                self._line(f"analysis at weight {key[1]}%: {key[2]:<12} {_analysis_detail(entry)}")
        position = (str(canary.get("phase", "")), int(canary.get("weight", 0)))
        if position != self._position:
            self._position = position
            self._line(_position_text(position, canary, self.stack.deployments(NAME)))

    async def until(self, done: Callable[[], Any], timeout: float = ROLLOUT_TIMEOUT) -> Any:
        """Report progress until `done()` is truthy."""

        def check() -> Any:
            self.report()
            return done()

        return await waiting.eventually(check, timeout=timeout)

    def _line(self, text: str) -> None:
        self.say(f"  {time.monotonic() - self.since:5.1f}s  {text}")


def _key(entry: Mapping[str, Any]) -> tuple[str, int, str]:
    return (str(entry.get("time")), int(entry.get("weight", 0)), str(entry.get("verdict")))


def _analysis_detail(entry: Mapping[str, Any]) -> str:
    """One analysis in a line: every figure when it passed, else the checks that decided it, by reason."""
    checks = entry.get("checks") or []
    verdict = entry.get("verdict")
    if verdict == "success":
        figures = ", ".join(f"{c['name']} {views.number(c.get('value'))} ({c.get('threshold')})" for c in checks)
        requests = next((float(c["samples"]) for c in checks if c.get("samples") is not None), 0.0)
        return f"{figures}; about {requests:.0f} canary requests in the window"
    reasons: dict[str, list[str]] = {}
    for check in checks:
        if check.get("verdict") == verdict:
            reasons.setdefault(str(check.get("message", "")), []).append(str(check["name"]))
    return "; ".join(f"{', '.join(names)}: {message}" for message, names in reasons.items())


def _position_text(position: tuple[str, int], canary: Mapping[str, Any], deployments: Mapping[str, Any]) -> str:
    phase, weight = position
    if phase == "Progressing":

        def pods(component: naming.Component, track: naming.Track) -> int:
            deployment = deployments.get(naming.deployment_name(NAME, component, track)) or {"spec": {"replicas": 0}}
            return int(deployment["spec"].get("replicas", 1))

        api, worker = naming.Component.API, naming.Component.WORKER
        canary_track, stable_track = naming.Track.CANARY, naming.Track.STABLE
        return (
            f"Progressing at weight {weight}%: canary {pods(api, canary_track)} API + {pods(worker, canary_track)}"
            f" worker pods, stable {pods(api, stable_track)} API + {pods(worker, stable_track)} worker pods"
        )
    # the message's first two parts ("revision X rolled back, Y kept: 2 of failureLimit 2 failed
    # analyses"); the rest repeats the queries, printed once below
    return f"{phase}: {': '.join(str(canary.get('message', '')).split(': ')[:2])}".rstrip(": ")


def _set_model(url: str) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        body["spec"]["model"]["providers"][0]["baseURL"] = url

    return change


def _failing_checks(say: Callable[[str], None], analysis: Mapping[str, Any]) -> None:
    for check in analysis.get("checks") or []:
        if check.get("verdict") != "failure":
            continue
        say(f"failing check {check['name']}:")
        say(f"  query:      {check.get('query')}")
        say(f"  value:      {views.number(check.get('value'))} ({views.number(check.get('samples'))} requests)")
        say(f"  threshold:  {check.get('threshold')}")


def _get_view_now(out: TextIO, stack: Stack) -> None:
    """The plugin's `get` view of the service as the dev cluster holds it at this instant.

    The plugin's own view function and output (colour and width as on a terminal), fed the objects
    the plugin reads (the AgentService, its Deployments, its Events) straight from the dev cluster:
    running the plugin (HTTP from a thread) could read them after the next analysis on a busy
    machine, and show a later step than the one being narrated.
    """
    events = [e for e in stack.events(NAME) if (e.get("involvedObject") or {}).get("kind") == models.KIND]
    view = views.get_view(stack.service(NAME), stack.deployments(NAME), events, plugin.utcnow())
    out.write(f"\n$ kubectl agentservice get {NAME}\n")
    plugin.Output(out).write(view)


async def _plugin(out: TextIO, kubeconfig: Path, *args: str) -> None:
    """`kubectl agentservice ARGS` against the dev cluster, its output into the narrative.

    In a thread: the plugin's client blocks, and the dev cluster serves from this event loop.
    """
    out.write(f"\n$ kubectl agentservice {' '.join(args)}\n")
    out.flush()
    errors = io.StringIO()
    code = await asyncio.to_thread(
        plugin.main, ["--kubeconfig", str(kubeconfig), "-n", NAMESPACE, *args], stdout=out, stderr=errors
    )
    if code != 0:
        raise RuntimeError(f"kubectl agentservice {' '.join(args)} failed: {errors.getvalue().strip()}")


def _reached(stack: Stack, weight: int) -> bool:
    """Whether the rollout serves at `weight` with its pods running, or has ended."""
    return bool(_settled(stack)) or _serving_at(stack, weight)


def _at_rest(stack: Stack) -> bool:
    """Whether every pod runs on its current template and the status counts them all ready.

    The counts matter: a status written from the Deployments as they were before the last change
    still says Ready, with the old number of replicas.
    """
    status = stack.status(NAME)
    desired = sum(int(d["spec"].get("replicas", 1)) for d in stack.deployments(NAME).values())
    return (
        stack.kubelet.in_step()
        and status.get("phase") == "Ready"
        and status.get("replicas") == status.get("readyReplicas") == desired
    )


def _serving_at(stack: Stack, weight: int) -> bool:
    """Whether the rollout is at `weight` with every pod of it running, and reported so by its Deployments."""
    canary = stack.canary(NAME)
    return (
        canary.get("phase") == "Progressing"
        and canary.get("weight") == weight
        and stack.kubelet.in_step()
        and all(objects.workload(d).rolled_out for d in stack.deployments(NAME).values())
    )


async def _scraped(prometheus: DiscoveringPrometheus, stack: Stack) -> int:
    """Wait until Prometheus has scraped every pod the kubelet runs; their number."""
    pods = len(stack.kubelet.pods)

    def up() -> bool:
        result = prometheus.query(f'count(up{{namespace="{NAMESPACE}"}} == 1)')
        return bool(result) and int(float(result[0]["value"][1])) == pods

    await waiting.eventually(lambda: asyncio.to_thread(up), timeout=30.0, interval=0.25)
    return pods


async def run_canary_demo(out: TextIO, workdir: Path, *, prometheus: str = localprometheus.BINARY) -> bool:
    """Run part 4, writing to `out`; False (having said what to install) when `prometheus` is missing.

    Redis, Prometheus, the pods and their logs live under `workdir`; everything started is stopped
    before returning.
    """
    if not localprometheus.installed(prometheus):
        out.write(MISSING_PROMETHEUS)
        out.flush()
        return False
    async with contextlib.AsyncExitStack() as exits:
        (workdir / "redis").mkdir(parents=True, exist_ok=True)
        redis = LocalRedis(durable=False, directory=workdir / "redis")
        await asyncio.to_thread(redis.start)
        exits.callback(redis.close)
        (workdir / "prometheus").mkdir(parents=True, exist_ok=True)
        server = DiscoveringPrometheus(workdir / "prometheus", binary_name=prometheus)
        server.start()
        exits.callback(server.stop)
        await asyncio.to_thread(server.wait_ready)
        v1 = await exits.enter_async_context(LocalModelServer())
        v2 = await exits.enter_async_context(
            LocalModelServer(faults=Faults(script=fault_script(FAULTY_ERRORS_PER_TEN)))
        )
        v3 = await exits.enter_async_context(LocalModelServer())
        (workdir / "pods").mkdir(parents=True, exist_ok=True)
        stack = await exits.enter_async_context(running_stack(workdir / "pods", redis.url, server))
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(devcluster.kubeconfig(stack.url, NAMESPACE))
        await _rollouts(_Narrator(out, stack), stack, server, kubeconfig, (v1, v2, v3))
    return True


async def _rollouts(
    narrator: _Narrator,
    stack: Stack,
    server: DiscoveringPrometheus,
    kubeconfig: Path,
    models: tuple[LocalModelServer, LocalModelServer, LocalModelServer],
) -> None:
    say, (v1, v2, v3) = narrator.say, models
    say(f"prometheus        {server.url}   scrapes every pod every 1s (targets kept by the kubelet)")
    say(f"dev cluster       {stack.url}   the operator runs with --prometheus-url {server.url}")
    say(f"kubelet           every pod runs as an agent-runtime process (logs: {stack.kubelet.directory})")
    say(f"model v1          {v1.url}   the stable version")
    say(f"model v2          {v2.url}   faulty: {FAULTY_ERRORS_PER_TEN} calls in 10 fail (HTTP 400, final)")
    say(f"model v3          {v3.url}   a good new version")

    body = service_body(NAME, v1.url, stack.redis_url, **CANARY)
    body["spec"]["worker"]["replicas"] = WORKERS
    say(f"\n$ kubectl apply -f {NAME}.yaml   # 1 API and {WORKERS} worker pods on model v1, with a canary:")
    for line in _canary_yaml(body["spec"]["canary"]).splitlines():
        say(f"    {line}")
    await stack.serve(body)
    pods = await _scraped(server, stack)
    say(f"Ready: {pods} pods running, each one a Prometheus target scraped every second")

    async with stack.load(NAME, RATE) as load:
        say(f"load: {RATE:g} tasks/s submitted to the API pods (both tracks in turn)")
        await _faulty_version(narrator, stack, v1, v2)
        await _good_version(narrator, stack, kubeconfig, v3)
        say(f"\nload: {load.accepted} tasks accepted during the two rollouts")


def _canary_yaml(canary: Mapping[str, Any]) -> str:
    """`spec.canary` as YAML: the steps on one line, each check a block, nothing wrapped."""
    settings = {k: v for k, v in canary.items() if k != "checks"}
    text = yaml.safe_dump({"canary": settings}, sort_keys=False, default_flow_style=None, width=10_000)
    checks = yaml.safe_dump({"checks": canary.get("checks") or []}, sort_keys=False, width=10_000)
    return text + "".join(f"  {line}\n" for line in checks.splitlines())


def _templates(stack: Stack) -> dict[str, str]:
    """The digest of each Deployment's pod template, by name."""
    return {n: templatehash.template_hash(d["spec"]["template"]) for n, d in stack.deployments(NAME).items()}


async def _roll_out(narrator: _Narrator, stack: Stack, model: LocalModelServer, version: str) -> None:
    """Move the service to `model` (a new pod template) and wait until the operator starts its rollout."""
    previous = stack.canary(NAME).get("canaryRevision")
    narrator.say(f"$ kubectl edit agsvc {NAME}   # spec.model.providers[0].baseURL -> model {version}")
    narrator.mark()
    await stack.edit(NAME, _set_model(model.url))

    def started() -> bool:
        canary = stack.canary(NAME)
        return canary.get("phase") == "Progressing" and canary.get("canaryRevision") not in (None, previous)

    await narrator.until(started)


def _settled(stack: Stack) -> str:
    """The rollout's phase once it has ended or stopped on its own ("" while it progresses)."""
    phase = str(stack.canary(NAME).get("phase", ""))
    return phase if phase in ("RolledBack", "Promoted", "Paused") else ""


async def _faulty_version(narrator: _Narrator, stack: Stack, v1: LocalModelServer, v2: LocalModelServer) -> None:
    """(a): v2 is rolled out and rolled back; the failing checks, and what the stable track kept."""
    say = narrator.say
    say("\n(a) model v2 is faulty: rolled out, judged, rolled back")
    stable = _templates(stack)
    await _roll_out(narrator, stack, v2, "v2")
    phase = await narrator.until(lambda: _settled(stack))
    if phase != "RolledBack":
        raise RuntimeError(f"the faulty version ended {phase}, not RolledBack: {stack.canary(NAME).get('message')}")
    _failing_checks(say, stack.canary(NAME).get("lastAnalysis") or {})
    await narrator.until(lambda: stack.kubelet.in_step() and set(stack.deployments(NAME)) == set(stable))
    config = (stack.cluster.live("v1/configmaps", NAMESPACE, f"{NAME}-config") or {}).get("data") or {}
    if _templates(stack) != stable or v1.url not in config.get("config.json", ""):
        raise RuntimeError("the rollback changed the stable track's pod template")
    say("the canary pods are gone; the stable pods kept their template (model v1) all along")


async def _good_version(narrator: _Narrator, stack: Stack, kubeconfig: Path, v3: LocalModelServer) -> None:
    """(b): v3 is promoted step by step, shown through the plugin's `get` after each step."""
    say = narrator.say
    say("\n(b) model v3 is good: promoted step by step")
    await _roll_out(narrator, stack, v3, "v3")
    steps = [s for s in CANARY["steps"] if s < 100]
    for passed, following in itertools.pairwise(steps):
        # After the analysis at `passed`, the canary serves at `following` for one interval, counted
        # from when its pods run: shown then, without waiting for the status to catch up (the next
        # analysis may come first). A rollout already past it on a starved machine is not waited for.
        await narrator.until(functools.partial(_reached, stack, following))
        if _settled(stack):
            break
        say(f"  the analysis at {passed}% passed; the canary now serves at {following}%:")
        _get_view_now(narrator.out, stack)
    phase = await narrator.until(lambda: _settled(stack))
    if phase != "Promoted":
        raise RuntimeError(f"the good version ended {phase}, not Promoted: {stack.canary(NAME).get('message')}")
    await narrator.until(lambda: _at_rest(stack))
    say("  promoted: the stable pods restarted on model v3, the canary pods are gone")
    await _plugin(narrator.out, kubeconfig, "get", NAME)
    await _plugin(narrator.out, kubeconfig, "history", NAME)

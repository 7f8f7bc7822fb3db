"""`kubectl agentservice`: day-2 operations on AgentServices from kubectl (a kubectl plugin).

kubectl runs any `kubectl-agentservice` on the PATH for `kubectl agentservice ...`, handing it the
arguments after the plugin's name. The cluster is reached with the official `kubernetes` client:
the kubeconfig (`--kubeconfig`, else `$KUBECONFIG`, else ~/.kube/config, else the in-cluster
service account), its context (`--context`) and namespace (`-n`, else the context's, else
`default`).

    get NAME [--watch]      the rollout: phase, revisions, step and weight, replicas per track,
                            the last analysis (query, value, threshold, verdict), conditions, Events
    list [-A]               a table of AgentServices with their rollout's step
    status NAME [--timeout D]  wait until the spec is served (exit 0), refused or rolled back (3),
                            or the timeout passes (4): a CI gate (`plugin/progress.py`)
    promote NAME [--full]   one step (agentops.dev/promote=step:<weight>), or all (=true)
    abort NAME              roll the canary back (agentops.dev/abort=true)
    retry NAME              roll a rolled-back revision out again (agentops.dev/retry=true)
    undo NAME               spec.image back to the stable track's image, or to the one before it
    restart NAME            roll every pod (spec.podAnnotations agentops.dev/restartedAt)
    set image NAME IMAGE    spec.image
    pause NAME / resume NAME  spec.canary.paused true / false
    history NAME            how past rollouts ended (status.canary.rollouts)
    version, completion bash|zsh

`get`, `list`, `history`, `status` and `version` take `-o json|yaml`. Errors are one line on
stderr and exit 1 (usage errors: argparse's, exit 2). Colour only on a
terminal, and never with NO_COLOR set. `get --watch` redraws when the watch API reports a change to
the AgentService, its Deployments or its Events; Ctrl-C ends it (exit 130).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn, TextIO

import shtab
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from agent_operator import __version__
from agent_operator.api import models
from agent_operator.manifests import naming
from agent_operator.plugin import progress, views

PROG: Final = "kubectl agentservice"
EXECUTABLE: Final = "kubectl-agentservice"
RESTARTED_AT_ANNOTATION: Final = "agentops.dev/restartedAt"
REVISION_ANNOTATION: Final = "deployment.kubernetes.io/revision"  # set by the Deployment controller
MERGE_PATCH: Final = "application/merge-patch+json"
EXIT_ERROR: Final = 1
EXIT_INTERRUPTED: Final = 130
WATCH_TIMEOUT_SECONDS: Final = 300  # each watch request; then it is simply made again
SIGNAL_POLL_SECONDS: Final = 0.2  # how soon `get --watch` notices Ctrl-C (see `_watch`)
CLEAR: Final = "\x1b[H\x1b[2J"

Clock = Callable[[], datetime.datetime]


class PluginError(Exception):
    """A failure worth one line to the user (not found, forbidden, no rollout in progress, ...)."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


# --- the cluster ----------------------------------------------------------------------------------


class Cluster:
    """The few reads and writes the plugin makes, as plain JSON dicts, with errors in words."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
        # The kubernetes package ships without annotations for its config loaders and watch.
        try:
            if kubeconfig or context or _has_kubeconfig():
                api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context
                )
                contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig
                )
                if context:
                    active = next((c for c in contexts if c.get("name") == context), active)
                default_namespace = ((active or {}).get("context") or {}).get("namespace") or "default"
            else:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
                api = client.ApiClient()
                default_namespace = _incluster_namespace()
        except (ConfigException, OSError) as exc:
            raise PluginError(f"cannot load the kubeconfig: {exc}") from None
        return cls(api, namespace or default_namespace)

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            response = function(*args, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise PluginError(_api_error(what, exc, self.namespace)) from None
        except urllib3.exceptions.HTTPError as exc:
            host = self.api.configuration.host
            raise PluginError(f"cannot reach the cluster at {host}: {_reason(exc)}") from None
        return views.printable_tree(json.loads(response.data or b"{}"))  # tenants wrote these strings

    def service(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            f'agentservice "{name}"',
            self.custom.get_namespaced_custom_object,
            models.GROUP,
            models.VERSION,
            self.namespace,
            models.PLURAL,
            name,
        )
        return result

    def services(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            found = self._call(
                "agentservices", self.custom.list_cluster_custom_object, models.GROUP, models.VERSION, models.PLURAL
            )
        else:
            found = self._call(
                "agentservices",
                self.custom.list_namespaced_custom_object,
                models.GROUP,
                models.VERSION,
                self.namespace,
                models.PLURAL,
            )
        return list(found.get("items") or [])

    def deployments(self, name: str) -> dict[str, dict[str, Any]]:
        """The service's Deployments (both tracks) by name."""
        selector = _instance_selector(name)
        found = self._call("deployments", self.apps.list_namespaced_deployment, self.namespace, label_selector=selector)
        return {d["metadata"]["name"]: d for d in found.get("items") or []}

    def events(self, svc: dict[str, Any]) -> list[dict[str, Any]]:
        """Events about this AgentService (the field selector narrows it; the filter makes sure)."""
        meta = svc["metadata"]
        selector = f"involvedObject.kind={models.KIND},involvedObject.name={meta['name']}"
        found = self._call("events", self.core.list_namespaced_event, self.namespace, field_selector=selector)
        uid = meta.get("uid")
        return [
            event
            for event in found.get("items") or []
            if (event.get("involvedObject") or {}).get("kind") == models.KIND
            and (event.get("involvedObject") or {}).get("name") == meta["name"]
            and (not uid or (event.get("involvedObject") or {}).get("uid") in (None, uid))
        ]

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            f'agentservice "{name}"',
            self.custom.patch_namespaced_custom_object,
            models.GROUP,
            models.VERSION,
            self.namespace,
            models.PLURAL,
            name,
            body,
            _content_type=MERGE_PATCH,
        )
        return result

    def deployment(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            f'deployment "{name}"', self.apps.read_namespaced_deployment, name, self.namespace
        )
        return result

    def replica_sets(self, selector: str) -> list[dict[str, Any]]:
        found = self._call(
            "replicasets", self.apps.list_namespaced_replica_set, self.namespace, label_selector=selector
        )
        return list(found.get("items") or [])

    def next_version(self, name: str, after: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The AgentService once it changes after `after`, or `after` itself when `timeout` passes first."""
        version = (after.get("metadata") or {}).get("resourceVersion")
        stream: Callable[..., Any] = watch.Watch(return_type="object").stream  # type: ignore[no-untyped-call]
        try:
            for event in stream(
                self.custom.list_namespaced_custom_object,
                models.GROUP,
                models.VERSION,
                self.namespace,
                models.PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=max(1, math.ceil(timeout)),
            ):
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "DELETED":
                    raise PluginError(f'agentservice "{name}" was deleted')
                if kind in ("ADDED", "MODIFIED") and (body.get("metadata") or {}).get("resourceVersion") != version:
                    return dict(body)
        except ApiException as exc:
            if exc.status == 410:  # the version expired: read the object afresh
                return self.service(name)
            raise PluginError(_api_error(f'agentservice "{name}"', exc, self.namespace)) from None
        except urllib3.exceptions.HTTPError as exc:
            raise PluginError(f"the watch lost the cluster: {_reason(exc)}") from None
        return after

    def watches(self, name: str) -> list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]:
        """(list function, args, kwargs) of what `get --watch` follows."""
        return [
            (
                self.custom.list_namespaced_custom_object,
                (models.GROUP, models.VERSION, self.namespace, models.PLURAL),
                {"field_selector": f"metadata.name={name}"},
            ),
            (self.apps.list_namespaced_deployment, (self.namespace,), {"label_selector": _instance_selector(name)}),
            (
                self.core.list_namespaced_event,
                (self.namespace,),
                {"field_selector": f"involvedObject.kind={models.KIND},involvedObject.name={name}"},
            ),
        ]


def _has_kubeconfig() -> bool:
    paths = os.environ.get("KUBECONFIG", "")
    candidates = [p for p in paths.split(os.pathsep) if p] or [os.path.expanduser("~/.kube/config")]
    return any(os.path.exists(p) for p in candidates)


def _incluster_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def _instance_selector(name: str) -> str:
    return f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={naming.MANAGED_BY}"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).splitlines()[0]


def _api_error(what: str, exc: ApiException, namespace: str) -> str:
    message = ""
    try:
        message = str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    if exc.status == 404 and what.startswith("agentservice "):
        return f'{what} not found in namespace "{namespace}"'
    if exc.status == 404:
        return f"the cluster has no {models.PLURAL}.{models.GROUP} (is the AgentService CRD installed?)"
    if exc.status == 401:  # who you are is not known: another error than being refused (403)
        return f"unauthorized: the API server did not accept the kubeconfig's credentials ({message or exc.reason})"
    if exc.status == 403:
        return f"forbidden: {message or exc.reason}"
    return f"{what}: the API server answered {exc.status} {exc.reason}: {message}".rstrip(": ")


# --- commands -------------------------------------------------------------------------------------


class Output:
    """Where the text goes, how wide it may be, and whether it may be coloured."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.colour = self.tty and not os.environ.get("NO_COLOR")

    @property
    def width(self) -> int | None:
        return shutil.get_terminal_size().columns if self.tty else None

    def text(self, text: str) -> str:
        fitted = views.fit(views.printable(text, lines=True), self.width)
        return views.colourise(fitted) if self.colour else fitted

    def write(self, text: str) -> None:
        self.stream.write(self.text(text))
        self.stream.flush()


def _emit(out: Output, document: Any, fmt: str) -> None:
    """`document` as JSON or YAML (never coloured or cut to the terminal's width)."""
    if fmt == "json":
        out.stream.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    else:
        out.stream.write(yaml.safe_dump(document, sort_keys=False))
    out.stream.flush()


def _get_text(cluster: Cluster, name: str, now: Clock) -> str:
    svc = cluster.service(name)
    return views.get_view(svc, cluster.deployments(name), cluster.events(svc), now())


def cmd_get(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    if args.output:
        _emit(out, cluster.service(args.name), args.output)
        return 0
    if not args.watch:
        out.write(_get_text(cluster, args.name, now))
        return 0
    return _watch(cluster, args.name, out, now)


def _watch(cluster: Cluster, name: str, out: Output, now: Clock) -> int:
    """Draw, then redraw whenever a watch reports a change that alters the view."""
    changes: queue.Queue[BaseException | None] = queue.Queue()
    shown = _get_text(cluster, name, now)
    _draw(out, shown)
    for function, args, kwargs in cluster.watches(name):
        threading.Thread(target=_follow, args=(function, args, kwargs, changes), daemon=True).start()
    while True:
        try:
            # Never an unbounded wait: the kernel may hand Ctrl-C's SIGINT to a watch thread, and
            # Python runs signal handlers in the main thread only when it next runs bytecode; a
            # main thread asleep on a lock with no timeout would not see Ctrl-C until a change came.
            item = changes.get(timeout=SIGNAL_POLL_SECONDS)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise item
        while not changes.empty():  # a burst of events is one redraw
            item = changes.get_nowait()
            if isinstance(item, BaseException):
                raise item
        text = _get_text(cluster, name, now)
        if text != shown:
            shown = text
            _draw(out, text)


def _draw(out: Output, text: str) -> None:
    if out.tty:
        out.stream.write(CLEAR)
    else:
        out.stream.write("\n")
    out.write(text)


def _follow(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    changes: queue.Queue[BaseException | None],
) -> None:
    """One watch, made again whenever it ends; every event is a possible change.

    The events are only a signal (the view is read afresh), so they stay plain JSON: the client's
    models would refuse objects they consider incomplete. Any failure goes to the main thread,
    which reports it in one line; a thread must not die with a traceback while the view hangs.
    """
    while True:
        try:
            # return_type "object": the client hands the JSON over as it came
            stream: Callable[..., Any] = watch.Watch(return_type="object").stream  # type: ignore[no-untyped-call]
            for _ in stream(function, *args, timeout_seconds=WATCH_TIMEOUT_SECONDS, **kwargs):
                changes.put(None)
        except ApiException as exc:
            if exc.status == 410:  # the resourceVersion expired: list and watch again
                continue
            changes.put(PluginError(_api_error("watch", exc, "")))
            return
        except urllib3.exceptions.HTTPError as exc:
            changes.put(PluginError(f"the watch lost the cluster: {_reason(exc)}"))
            return
        except Exception as exc:  # reported by the main thread, in one line
            changes.put(
                PluginError(f"the watch failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            )
            return


def cmd_list(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    services = cluster.services(args.all_namespaces)
    if args.output:
        _emit(out, {"apiVersion": "v1", "kind": "List", "items": services}, args.output)
        return 0
    if not services:
        where = "in any namespace" if args.all_namespaces else f'in namespace "{cluster.namespace}"'
        out.write(f"no AgentServices {where}\n")
        return 0
    out.write(views.list_view(services, now(), all_namespaces=args.all_namespaces))
    return 0


def cmd_history(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    svc = cluster.service(args.name)
    if args.output:
        _emit(out, list(views.canary_of(svc).get("rollouts") or []), args.output)
        return 0
    out.write(views.history_view(svc, now()))
    return 0


def cmd_status(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    """Follow the AgentService until its verdict is final or `--timeout` passes (exit codes: `progress`)."""
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else math.inf
    svc = cluster.service(args.name)
    shown = ""
    while True:
        verdict = progress.verdict(svc)
        if not args.output and verdict.message != shown:
            out.write(f"{verdict.message}\n")
            shown = verdict.message
        remaining = deadline - time.monotonic()
        if verdict.done or remaining <= 0:
            code = verdict.exit_code if verdict.done else progress.EXIT_TIMEOUT
            if not verdict.done and not args.output:
                out.write(f"timed out after {_duration_text(args.timeout)}: {verdict.message}\n")
            if args.output:
                meta = svc.get("metadata") or {}
                document = {
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "state": verdict.state.value if verdict.done else "TimedOut",
                    "message": verdict.message,
                    "exitCode": code,
                }
                _emit(out, document, args.output)
            return code
        svc = cluster.next_version(args.name, svc, min(remaining, WATCH_TIMEOUT_SECONDS))


def cmd_version(args: argparse.Namespace, out: Output) -> int:
    if args.output:
        _emit(out, {"plugin": EXECUTABLE, "version": __version__}, args.output)
    else:
        out.write(f"{EXECUTABLE} {__version__}\n")
    return 0


def cmd_completion(args: argparse.Namespace, out: Output) -> int:
    parser = build_parser(prog=EXECUTABLE)
    out.stream.write(shtab.complete(parser, shell=args.shell))
    out.stream.flush()
    return 0


def _rollout(svc: dict[str, Any]) -> dict[str, Any]:
    canary = views.canary_of(svc)
    if canary.get("phase") not in views.ACTIVE:
        name = svc["metadata"]["name"]
        phase = canary.get("phase") or models.CanaryPhase.IDLE.value
        raise PluginError(f'agentservice "{name}" has no rollout in progress (rollout phase {phase})')
    return canary


def _annotate(cluster: Cluster, name: str, key: str, value: str) -> None:
    cluster.patch(name, {"metadata": {"annotations": {key: value}}})


def cmd_promote(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    svc = cluster.service(args.name)
    canary = _rollout(svc)
    revision, stable = canary.get("canaryRevision", "?"), canary.get("stableRevision", "?")
    steps, index = views.steps_of(svc), int(canary.get("stepIndex", 0))
    weight = int(canary.get("weight", 0))
    if args.full or index + 1 >= len(steps) - 1:
        value = "true" if args.full else f"step:{weight}"
        what = f"promote revision {revision} in full (replaces {stable})"
    else:
        value = f"step:{weight}"
        what = f"promote revision {revision} one step: weight {weight}% -> {steps[index + 1]}%"
    _annotate(cluster, args.name, naming.PROMOTE_ANNOTATION, value)
    out.write(f"agentservice/{args.name}: {what} ({naming.PROMOTE_ANNOTATION}={value})\n")
    return 0


def cmd_abort(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    svc = cluster.service(args.name)
    canary = _rollout(svc)
    _annotate(cluster, args.name, naming.ABORT_ANNOTATION, "true")
    revision, stable = canary.get("canaryRevision", "?"), canary.get("stableRevision", "?")
    out.write(
        f"agentservice/{args.name}: abort: revision {revision} rolled back, {stable} kept "
        f"({naming.ABORT_ANNOTATION}=true)\n"
    )
    return 0


def _set_paused(cluster: Cluster, args: argparse.Namespace, out: Output, paused: bool) -> int:
    svc = cluster.service(args.name)
    current = bool(((svc.get("spec") or {}).get("canary") or {}).get("paused", False))
    verb = "paused" if paused else "resumed"
    if current == paused:
        canary = views.canary_of(svc)
        note = ""
        if not paused and canary.get("phase") == models.CanaryPhase.PAUSED.value:
            note = "; the rollout is paused by its analyses (inconclusive): promote or abort to settle it"
        out.write(f"agentservice/{args.name}: already {verb} (spec.canary.paused is {str(current).lower()}){note}\n")
        return 0
    cluster.patch(args.name, {"spec": {"canary": {"paused": paused}}})
    out.write(
        f"agentservice/{args.name}: {verb} (spec.canary.paused: {str(current).lower()} -> {str(paused).lower()})\n"
    )
    return 0


def cmd_retry(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    svc = cluster.service(args.name)
    canary = views.canary_of(svc)
    if canary.get("phase") != models.CanaryPhase.ROLLED_BACK.value:
        phase = canary.get("phase") or models.CanaryPhase.IDLE.value
        raise PluginError(f'agentservice "{args.name}" has no rolled-back rollout to retry (rollout phase {phase})')
    _annotate(cluster, args.name, naming.RETRY_ANNOTATION, "true")
    revision = canary.get("canaryRevision", "?")
    out.write(
        f"agentservice/{args.name}: retry: revision {revision} rolled out again from the first step "
        f"({naming.RETRY_ANNOTATION}=true)\n"
    )
    return 0


def _worker_image(template_owner: dict[str, Any]) -> str:
    containers = ((template_owner.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    worker = next((c for c in containers if c.get("name") == naming.Component.WORKER.value), None)
    return str((worker or {}).get("image") or "")


def _stable_history(cluster: Cluster, name: str) -> tuple[str, list[tuple[int, str]]]:
    """The stable worker Deployment's image, and its ReplicaSets' (revision, image), newest first."""
    deployment_name = naming.deployment_name(name, naming.Component.WORKER)
    current = _worker_image(cluster.deployment(deployment_name))
    selector = (
        f"{_instance_selector(name)},app.kubernetes.io/component={naming.Component.WORKER.value},"
        f"{naming.TRACK_LABEL}={naming.Track.STABLE.value}"
    )
    history = []
    for replica_set in cluster.replica_sets(selector):
        meta = replica_set.get("metadata") or {}
        owners = {o.get("name") for o in meta.get("ownerReferences") or [] if o.get("kind") == "Deployment"}
        revision = str((meta.get("annotations") or {}).get(REVISION_ANNOTATION) or "")
        if deployment_name in owners and revision.isdigit():
            history.append((int(revision), _worker_image(replica_set)))
    return current, sorted(history, reverse=True)


def cmd_undo(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    """spec.image back: to the stable track's image when the spec asks for another, else to the one before it."""
    svc = cluster.service(args.name)
    wanted = (svc.get("spec") or {}).get("image")
    stable, history = _stable_history(cluster, args.name)
    if not stable:
        raise PluginError(f'agentservice "{args.name}" has no stable worker Deployment yet: nothing to undo')
    if wanted and wanted != stable:
        target, why = stable, "the image the stable track runs"
    else:
        earlier = next(((r, image) for r, image in history if image and image != stable), None)
        if earlier is None:
            deployment_name = naming.deployment_name(args.name, naming.Component.WORKER)
            raise PluginError(
                f'no earlier image in the history of deployment "{deployment_name}" '
                "(it keeps the ReplicaSets of its last revisions only)"
            )
        target, why = earlier[1], f"the image of deployment revision {earlier[0]}"
    cluster.patch(args.name, {"spec": {"image": target}})
    out.write(
        f"agentservice/{args.name}: undo: spec.image {wanted or '(default)'} -> {target} ({why}); "
        "other spec changes are not undone\n"
    )
    return 0


def cmd_restart(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    cluster.service(args.name)
    stamp = now().astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.patch(args.name, {"spec": {"podAnnotations": {RESTARTED_AT_ANNOTATION: stamp}}})
    out.write(
        f"agentservice/{args.name}: restart: every pod is replaced "
        f"(spec.podAnnotations {RESTARTED_AT_ANNOTATION}={stamp}; a canary rollout when spec.canary.enabled)\n"
    )
    return 0


def cmd_set_image(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    image = args.image.strip()
    if not image or len(image) > models.AgentServiceSpec.model_fields["image"].metadata[0].max_length:
        raise PluginError(f"not an image reference: {args.image!r}")
    svc = cluster.service(args.name)
    before = (svc.get("spec") or {}).get("image") or "(default)"
    cluster.patch(args.name, {"spec": {"image": image}})
    out.write(f"agentservice/{args.name}: spec.image {before} -> {image}\n")
    return 0


def cmd_pause(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    return _set_paused(cluster, args, out, paused=True)


def cmd_resume(cluster: Cluster, args: argparse.Namespace, out: Output, now: Clock) -> int:
    return _set_paused(cluster, args, out, paused=False)


# --- arguments ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """kubectl's own flags; on the subcommands too, so they may come before or after it."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--kubeconfig", default=default, metavar="FILE", help="kubeconfig file (else $KUBECONFIG)")
    parser.add_argument("--context", default=default, help="kubeconfig context (else the current one)")
    parser.add_argument("-n", "--namespace", default=default, help="namespace (else the context's, else default)")


def _duration(text: str) -> float:
    """A `--timeout` such as 90s, 10m or 1h30m (0: no limit)."""
    if text.strip() in {"0", "0s"}:
        return 0.0
    try:
        return models.duration_seconds(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_text(seconds: float) -> str:
    return f"{seconds:g}s"


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=("json", "yaml"), default=None, help="print JSON or YAML instead of text"
    )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog, description="Day-2 operations on AgentServices: watch, gate CI, promote, abort, undo, history."
    )
    parser.add_argument("--version", action="version", version=f"{EXECUTABLE} {__version__}")
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str,
        func: Callable[..., int],
        help_text: str,
        *,
        named: bool = True,
        group: Any = commands,
        offline: bool = False,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
        if not offline:
            _connection_options(sub, suppress=True)
        if named:
            sub.add_argument("name", metavar="NAME", help="the AgentService")
        sub.set_defaults(func=func, offline=offline)
        return sub

    get = command(
        "get",
        cmd_get,
        "show the rollout: phase, revisions, step and weight, replicas per track, last analysis, conditions, Events",
    )
    watch_or_output = get.add_mutually_exclusive_group()
    watch_or_output.add_argument("-w", "--watch", action="store_true", help="redraw on every change (Ctrl-C to stop)")
    watch_or_output.add_argument(
        "-o", "--output", choices=("json", "yaml"), default=None, help="print the AgentService as JSON or YAML"
    )
    listing = command("list", cmd_list, "list AgentServices with their rollout's step and weight", named=False)
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    _output_option(listing)
    status = command(
        "status",
        cmd_status,
        "wait until the spec is served: exit 0 Ready, 3 refused or rolled back, 4 timed out (1: an error)",
    )
    status.add_argument(
        "--timeout",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="give up after this long, e.g. 10m (exit 4); 0: wait without limit (the default)",
    )
    _output_option(status)
    promote = command(
        "promote", cmd_promote, "promote the canary one step (agentops.dev/promote=step:<weight>), or all of them"
    )
    promote.add_argument(
        "--full", action="store_true", help="skip the remaining steps: promote now (agentops.dev/promote=true)"
    )
    command("abort", cmd_abort, "roll the canary back now, keeping the stable track (agentops.dev/abort=true)")
    command("retry", cmd_retry, "roll a rolled-back revision out again from the first step (agentops.dev/retry=true)")
    command(
        "undo",
        cmd_undo,
        "set spec.image back to the stable track's image, or to the image before it (other changes stay)",
    )
    command("restart", cmd_restart, "replace every pod (spec.podAnnotations agentops.dev/restartedAt=<now>)")
    setter = commands.add_parser("set", help="change a field of the spec", description="change a field of the spec")
    setters = setter.add_subparsers(dest="field", required=True, metavar="FIELD", parser_class=_Parser)
    image = command("image", cmd_set_image, "set spec.image (a new revision: a canary when enabled)", group=setters)
    image.add_argument("image", metavar="IMAGE", help="the runtime image, e.g. registry.example.com/agent-runtime:1.2")
    command("pause", cmd_pause, "hold the rollout at its weight; analyses stop (spec.canary.paused=true)")
    command("resume", cmd_resume, "let a rollout paused by spec.canary.paused go on (spec.canary.paused=false)")
    history = command("history", cmd_history, "how past rollouts ended: revision, outcome, reason, time")
    _output_option(history)
    version = command("version", cmd_version, "print the plugin's version", named=False, offline=True)
    _output_option(version)
    completion = command(
        "completion",
        cmd_completion,
        "print a shell completion script for kubectl-agentservice",
        named=False,
        offline=True,
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    now: Clock = utcnow,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The console script; `now` and the streams are injectable so tests can freeze ages and read output."""
    args = build_parser().parse_args(argv)
    out = Output(stdout or sys.stdout)
    if args.offline:  # version, completion: no cluster needed
        offline: int = args.func(args, out)
        return offline
    try:
        cluster = Cluster.connect(args.kubeconfig, args.context, args.namespace)
        code: int = args.func(cluster, args, out, now)
    except PluginError as exc:
        print(f"error: {views.printable(str(exc))}", file=stderr or sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # Ctrl-C ends `get --watch`: a clean exit, no traceback
        out.stream.write("\n")
        out.stream.flush()
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kubectl agentservice list | head`
        sys.stderr.close()
        return 0
    return code


def run() -> None:
    """The console script's entry: `main`, then the exit.

    After Ctrl-C ends `get --watch`, the process ends at once (`os._exit`, output flushed first):
    its watch threads sit in blocking socket reads, and an interpreter shutdown waiting on them
    could keep the terminal from returning.
    """
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    run()

"""Watches of the operator's children: a change to an owned child asks for its AgentService's reconcile.

Without them, a child deleted or edited by hand waits for the next resync pass (a minute by
default). With them, the change reaches the operator as it happens, and the reconcile (level-based,
as ever) repairs it. The resync stays as the safety net for what is not watched and for what a
watch may miss.

Each watch is a thin list+watch on the operator's own API session (`client.Client.stream`), not
kopf's `on.event`: kopf filters labels client-side, so it would stream every ConfigMap and
Deployment of the cluster through the operator. Here the API server selects by the managed-by
label, and only the operator's children travel. Per watched kind and scope (the whole cluster, or
each namespace the operator serves):
- list with the label selector (in pages), noting each child's owner and fingerprint; the first
  list pokes nothing (kopf's resume handlers reconcile every AgentService at start-up);
- watch from the list's resourceVersion, with bookmarks, and resume from the last version seen
  whenever the server ends the call; `410 Gone` means changes were lost: list again, and poke the
  owner of every child that appeared, changed or went meanwhile;
- a kind the cluster does not serve (a CRD not installed: 404) is logged once at info level and
  tried again every `UNSERVED_RETRY` seconds (it may be installed later); any other failure logs
  one warning per streak and backs off, `BACKOFF_MIN` doubling to `BACKOFF_MAX`.

What pokes: an event about a child whose controller is an AgentService (a controller
ownerReference) when the child is new, gone, or its fingerprint changed. The fingerprint ignores
what the API server moves by itself (resourceVersion, managedFields) and, except for the kinds
whose status the AgentService reports (Deployments), the status: HPA, PDB and ScaledObject
statuses move every few seconds and never need a repair. The operator's own applies come back as
events too: an event carrying the very resourceVersion the operator's last apply of that object
produced (`client.Client.own_write`, which waits for the apply's answer when the event comes
first) is its echo and pokes nobody: a repair would find nothing to do, and at a burst of
creations these repairs tripled the reconciles. Any other version of the object pokes.

Not watched: Secrets. RBAC cannot narrow `list` or `watch` by label, so watching the auth Secret
would let the operator read every Secret of the cluster, where today it only `get`s the ones an
AgentService names. A deleted or edited auth Secret is repaired by the resync.

In memory per watched child: its owner's uid (interned: one string per AgentService), an integer
fingerprint, which is what the comparisons above need, and its name; nothing of the object itself.

What the watches know is also the prune inventory's first source (`Children.owned`): the names of
an AgentService's children of a kind come from its stream, not from a LIST with the service's
label selector. Those lists cost the API server a scan of every object of the kind in the
namespace each, seven per service on its first reconcile: quadratic in the services of one
namespace, the dev cluster's wall at 3,000 services (bench/RESULTS.md). As controller-runtime
waits for its caches to sync, a reconcile at start-up waits for the stream's first list to answer
(`SYNC_WAIT` at most); when that list failed, it LISTs as before. A kind the cluster does not serve
(404) has no objects: it answers empty until it is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import orjson
import structlog
from agent_operator import opmetrics
from agent_operator.api import models
from agent_operator.kube import client
from agent_operator.manifests import naming

log = structlog.get_logger(__name__)

SELECTOR: Final = f"app.kubernetes.io/managed-by={naming.MANAGED_BY}"
WATCH_TIMEOUT: Final = 300.0  # seconds the API server keeps one watch call open (timeoutSeconds)
READ_MARGIN: Final = 30.0  # silence beyond the call's own timeout after which the client gives up on it
UNSERVED_RETRY: Final = 60.0
BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 30.0
SYNC_WAIT: Final = 30.0  # seconds `Children.owned` waits for a stream's first list before saying "unknown"
PAGE: Final = 500  # objects per list page: a thousand services' dashboards never sit in memory at once
VOLATILE_METADATA: Final = frozenset({"resourceVersion", "managedFields"})

Poke = Callable[[str], None]


class Child(NamedTuple):
    """What a stream keeps of a watched child."""

    owner: str  # the controlling AgentService's uid
    fingerprint: int
    name: str
    namespace: str  # the child's own namespace: an owner's children are only ever those of its namespace


@dataclasses.dataclass(frozen=True)
class Kind:
    """A watched child kind; `reports_status`: the AgentService's status reads this kind's status."""

    api_version: str
    kind: str
    reports_status: bool = False


# Every kind the builders emit, but Secrets (see the module's docstring); a test checks that each
# child kind is in exactly one of WATCHED and UNWATCHED, and rbac.py grants list/watch from WATCHED.
WATCHED: Final = (
    Kind("apps/v1", "Deployment", reports_status=True),
    Kind("v1", "Service"),
    Kind("v1", "ConfigMap"),
    Kind("autoscaling/v2", "HorizontalPodAutoscaler"),
    Kind("policy/v1", "PodDisruptionBudget"),
    Kind("networking.k8s.io/v1", "NetworkPolicy"),
    Kind("monitoring.coreos.com/v1", "PrometheusRule"),
    Kind("monitoring.coreos.com/v1", "ServiceMonitor"),
    Kind("keda.sh/v1alpha1", "ScaledObject"),
    Kind("keda.sh/v1alpha1", "TriggerAuthentication"),
)
UNWATCHED: Final[Mapping[tuple[str, str], str]] = {
    (
        "v1",
        "Secret",
    ): "RBAC cannot narrow list/watch by label: it would grant reading every Secret; the resync repairs it",
}


class Gone(Exception):
    """The resourceVersion is older than the API server remembers (410): list again."""


class NotServed(Exception):
    """The cluster does not serve this kind (404): its CRD is not installed."""


def owner_of(obj: Mapping[str, Any]) -> str | None:
    """The uid of the AgentService that controls `obj`, or None."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        group = str(ref.get("apiVersion", "")).partition("/")[0]
        if (
            ref.get("controller") is True
            and ref.get("kind") == models.KIND
            and group == models.GROUP
            and ref.get("uid")
        ):
            return sys.intern(str(ref["uid"]))
    return None


def fingerprint(obj: Mapping[str, Any], *, with_status: bool) -> int:
    """What a change must move to be worth a reconcile; equal for a list item and its watch event.

    apiVersion and kind are left out: the items of a list of built-in kinds do not carry them.
    """
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in VOLATILE_METADATA}
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
    if not with_status:
        rest.pop("status", None)
    return hash(orjson.dumps([meta, rest], option=orjson.OPT_SORT_KEYS))


class Stream:
    """One kind in one scope (a namespace, or the whole cluster): list, then watch, for ever."""

    def __init__(
        self,
        api: client.Client,
        kind: Kind,
        namespace: str | None,
        poke: Poke,
        metrics: opmetrics.Metrics,
        *,
        watch_timeout: float = WATCH_TIMEOUT,
        unserved_retry: float = UNSERVED_RETRY,
        backoff: tuple[float, float] = (BACKOFF_MIN, BACKOFF_MAX),
    ) -> None:
        self._api = api
        self._kind = kind
        self._namespace = namespace
        self._poke = poke
        self._metrics = metrics
        self._watch_timeout = watch_timeout
        self._unserved_retry = unserved_retry
        self._backoff = backoff
        self._path = client.object_path(kind.api_version, kind.kind, namespace)
        self._children: dict[str, Child] = {}  # by the child's uid
        # (namespace, owner uid) -> child uid -> name (`owned`). Keyed by namespace too: an
        # ownerReference is written by whoever writes the object, so a child in another namespace
        # naming this owner's uid is a forgery (owner references never cross namespaces), and must
        # never put a name into this owner's inventory.
        self._owned: dict[tuple[str, str], dict[str, str]] = {}
        self._listed = False
        self._unserved = False  # the last answer was 404: the kind has no objects
        # Set once the first list has had its answer, whatever it was: `Children.owned` waits for it.
        self.tried = asyncio.Event()
        self._version: str | None = None
        # Retry state: the current back-off, and what has been logged (once per streak).
        self._delay = backoff[0]
        self._failing = self._announced = self._expired = False

    @property
    def scope(self) -> str:
        return self._namespace or "all namespaces"

    @property
    def kind(self) -> Kind:
        return self._kind

    @property
    def namespace(self) -> str | None:
        return self._namespace

    def owned(self, owner: str, namespace: str) -> frozenset[str] | None:
        """Names of the children of this kind in `namespace` that `owner` (a uid) controls, as far as
        the watch knows; None until the stream has listed (the caller must ask the API server)."""
        if self._unserved:
            return frozenset()
        if not self._listed:
            return None
        return frozenset(self._owned.get((namespace, owner), {}).values())

    def _keep(self, uid: str, child: Child) -> None:
        previous = self._children.get(uid)
        if previous is not None and (previous.owner, previous.namespace) != (child.owner, child.namespace):
            self._disown(uid, previous)
        self._children[uid] = child
        self._owned.setdefault((child.namespace, child.owner), {})[uid] = child.name

    def _drop(self, uid: str) -> None:
        previous = self._children.pop(uid, None)
        if previous is not None:
            self._disown(uid, previous)

    def _disown(self, uid: str, child: Child) -> None:
        key = (child.namespace, child.owner)
        names = self._owned.get(key)
        if names is not None:
            names.pop(uid, None)
            if not names:
                del self._owned[key]

    async def run_forever(self) -> None:
        """List and watch until cancelled; every failure is retried (see the module's docstring)."""
        while True:
            try:
                if self._version is None:
                    try:
                        await self._list()
                    finally:
                        self.tried.set()
                    self._running()
                if not await self._watch():
                    await asyncio.sleep(self._backoff[0])  # a call that ended empty: never hammer the server
            except Gone:
                log.debug("child_watch_expired", kind=self._kind.kind, scope=self.scope)
                self._version = None  # list again; the comparison finds what was missed
                if self._expired:  # gone again straight after a fresh list: something is wrong, back off
                    await self._pause()
                self._expired = True
            except NotServed:
                self._unserved = True
                if not self._announced:
                    log.info(
                        "child_watch_not_served", kind=self._kind.kind, scope=self.scope, retry=self._unserved_retry
                    )
                    self._announced = True
                self._version = None
                await asyncio.sleep(self._unserved_retry)
            except Exception as exc:  # an API fault, a lost connection, a garbled line: retried
                if not self._failing:
                    log.warning(
                        "child_watch_failed", kind=self._kind.kind, scope=self.scope, error=str(exc) or repr(exc)
                    )
                    self._failing = True
                await self._pause()

    def _running(self) -> None:
        """A list or a watch answered: say so if it had not, and start the back-off afresh."""
        if self._failing or self._announced:
            log.info("child_watch_running", kind=self._kind.kind, scope=self.scope)
        self._failing = self._announced = False
        self._delay = self._backoff[0]

    async def _pause(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._backoff[1])

    async def _list(self) -> None:
        """List the kind's labelled objects; after a gap, poke the owners of whatever differs."""
        children, version = await self._fetch()
        if self._listed:
            for uid in self._children.keys() | children.keys():
                before, after = self._children.get(uid), children.get(uid)
                if before != after:
                    for owner in {entry[0] for entry in (before, after) if entry is not None}:
                        self._changed(owner)
        self._children = children
        self._owned = {}
        for uid, child in children.items():
            self._owned.setdefault((child.namespace, child.owner), {})[uid] = child.name
        self._listed = True
        self._unserved = False
        self._version = version

    async def _fetch(self) -> tuple[dict[str, Child], str]:
        """The owned children, page by page, and the list's resourceVersion."""
        children: dict[str, Child] = {}
        params = {"labelSelector": SELECTOR, "limit": str(PAGE)}
        while True:
            try:
                page = await self._api.request("GET", self._path, params=params)
            except client.ApiError as exc:
                if exc.status == 410:  # the continue token expired: start over
                    raise Gone from None
                raise
            if page is None:
                self._unserved = True  # before the raise: `tried` wakes the waiters on its way out
                raise NotServed
            for obj in page.get("items") or []:
                if (owner := owner_of(obj)) is not None:
                    children[str(obj["metadata"]["uid"])] = self._child(owner, obj)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            params = {**params, "continue": str(meta["continue"])}
        version = str(meta.get("resourceVersion") or "")
        if not version:
            raise client.ApiError(500, "NoResourceVersion", f"the list of {self._path} has no resourceVersion")
        return children, version

    async def _watch(self) -> int:
        """Follow the changes after `self._version` until the server ends the call; how many events came."""
        params = {
            "watch": "true",
            "resourceVersion": self._version or "",
            "labelSelector": SELECTOR,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(self._watch_timeout)),
        }
        received = 0
        try:
            async for event in self._api.stream(self._path, params, read_timeout=self._watch_timeout + READ_MARGIN):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 500)
                    raise client.ApiError(code, str(obj.get("reason") or "WatchError"), str(obj.get("message") or ""))
                if not received:
                    self._running()
                    self._expired = False
                received += 1
                self._version = str((obj.get("metadata") or {}).get("resourceVersion") or self._version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    await self._seen(kind, obj)
        except client.ApiError as exc:
            if exc.status == 410:
                raise Gone from None
            if exc.status == 404:
                raise NotServed from None
            raise
        return received

    async def _seen(self, kind: str, obj: Mapping[str, Any]) -> None:
        uid = str(obj.get("metadata", {}).get("uid", ""))
        known = self._children.get(uid)
        owner = owner_of(obj)
        if kind == "DELETED" or owner is None:  # gone, or no longer an AgentService's: its owner should look
            self._drop(uid)
            owner = owner or (known.owner if known is not None else None)
            if owner is not None:
                self._changed(owner)
            return
        entry = self._child(owner, obj)
        self._keep(uid, entry)
        if await self._api.own_write(self._kind.kind, obj):
            return  # the echo of the operator's own apply: the reconcile that wrote it wanted exactly this
        if entry != known:
            self._changed(owner)
            if known is not None and known.owner != owner:
                self._changed(known.owner)  # the controller changed hands: both should look

    def _child(self, owner: str, obj: Mapping[str, Any]) -> Child:
        meta = obj.get("metadata", {})
        name = sys.intern(str(meta.get("name", "")))
        namespace = sys.intern(str(meta.get("namespace", "")))
        return Child(owner, fingerprint(obj, with_status=self._kind.reports_status), name, namespace)

    def _changed(self, owner: str) -> None:
        self._metrics.child_events.labels(kind=self._kind.kind).inc()
        self._poke(owner)


class Children:
    """The watches of every watched kind, in every scope the operator serves."""

    def __init__(
        self,
        api: client.Client,
        poke: Poke,
        metrics: opmetrics.Metrics,
        *,
        namespaces: Sequence[str] = (),
        kinds: Sequence[Kind] = WATCHED,
        sync_wait: float = SYNC_WAIT,
        **options: Any,
    ) -> None:
        self._sync_wait = sync_wait
        scopes: Sequence[str | None] = tuple(namespaces) or (None,)
        self.streams = [Stream(api, kind, ns, poke, metrics, **options) for kind in kinds for ns in scopes]
        self._serving: dict[tuple[str, str, str | None], Stream] = {
            (s.kind.api_version, s.kind.kind, s.namespace): s for s in self.streams
        }

    async def owned(self, api_version: str, kind: str, namespace: str, owner: str) -> frozenset[str] | None:
        """Names of the children of one kind in `namespace` that `owner` controls, from the stream
        that watches them; None when the stream cannot say: the caller asks the API server.

        Before the stream's first list has answered, this waits for it (`sync_wait` at most); a
        first list that failed is not waited for again (the stream retries with its back-off).
        """
        stream = self._serving.get((api_version, kind, namespace)) or self._serving.get((api_version, kind, None))
        if stream is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stream.tried.wait(), self._sync_wait)
        return stream.owned(owner, namespace)

    async def run_forever(self) -> None:
        """Run every stream until cancelled."""
        async with asyncio.TaskGroup() as group:
            for stream in self.streams:
                group.create_task(stream.run_forever())

"""A local development cluster: kmock's Kubernetes emulator taught the API server's bookkeeping.

Used by the operator's tests, by `agentctl demo` and by `bench/operator_scale.py`, always over
real HTTP on loopback. kmock stores objects as plain JSON and merges patches naively; the operator
relies on a few behaviours of a real API server, which this subclass adds (and nothing more):

- `metadata.uid`, `creationTimestamp`, a monotonic `resourceVersion` on every change, and a
  `generation` that moves only when something other than metadata and status changes;
- the `status` subresource: writes to `/status` change only the status, writes to the object
  itself leave the status alone (for the resources that declare the subresource);
- a patch that changes nothing is a no-op: no new resourceVersion, no watch event;
- creates answer `201 Created` with `Content-Type: application/json` (kmock says 200 with a
  charset, which makes the official client's `create_*` calls return None);
- server-side apply (`application/apply-patch+yaml` with a `fieldManager`): creates the object
  when absent, otherwise merges, and drops the fields this manager applied before and no longer
  applies unless another applier still holds them. This is merge semantics per field manager,
  not the real structured-merge: lists are replaced whole. `metadata.managedFields` records
  each applier's fields (`f:` keys, lists as leaves), enough for the operator's replicas handover;
- `PUT` replaces an object; `DELETE` honours finalizers and then garbage-collects, in the
  background, every object whose ownerReferences name the deleted one (the kube GC's job);
- list requests honour equality-based `labelSelector`s;
- API errors (404, 409, 422) are answered as a `Status` without kmock's traceback, and are not
  kept as emulator faults (kmock keeps each with its frames until it stops);
- a watch misses no change: it is subscribed to the change feed in the same step (under the store's
  lock) as it reads the objects it starts with. kmock subscribes after sending those objects, so a
  change made meanwhile reached no watcher (a watch started, then a patch, and no event);
- watches honour `labelSelector` as the API server does: an object that starts or stops matching
  arrives as ADDED or DELETED; and `resourceVersion`: without one (or "0") the current objects come
  first as ADDED, with one the stream replays the changes after it from a bounded history (the API
  server's watch cache), or answers an ERROR event `410 Expired` when that version is older than the
  history holds. A DELETED event carries a new resourceVersion. `end_watches` and `compact` play the
  API server's watch timeout and etcd's compaction for tests.

Lookups are O(1) (kmock scans every object for each request), so a thousand AgentServices with
their children stay fast. The emulator runs no controllers: `simulate_rollouts` plays the
Deployment controller when a test or the demo wants pods "ready".
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import datetime
import itertools
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, Final

import aiohttp.web
import attrs
import jsonpatch  # kmock's own dependency
import kmock
import orjson
import uvloop
import yaml
from agent_operator.api import models
from kmock._internal import rendering  # Request type for the overridden hooks

APPLY_PATCH: Final = "application/apply-patch+yaml"
JSON_PATCH: Final = "application/json-patch+json"
WATCH_HISTORY: Final = 10_000  # changes per resource a watch can resume from (the watch cache)
_END: Final = "END"  # a bus item that ends every open watch of its resource (not an event type)

# (group, version, plural) -> (kind, namespaced, subresources)
RESOURCES: Final[dict[tuple[str, str, str], tuple[str, bool, tuple[str, ...]]]] = {
    ("", "v1", "namespaces"): ("Namespace", False, ("status",)),
    ("", "v1", "configmaps"): ("ConfigMap", True, ()),
    ("", "v1", "secrets"): ("Secret", True, ()),
    ("", "v1", "services"): ("Service", True, ("status",)),
    ("", "v1", "serviceaccounts"): ("ServiceAccount", True, ()),
    ("", "v1", "pods"): ("Pod", True, ("status",)),
    ("", "v1", "events"): ("Event", True, ()),
    ("events.k8s.io", "v1", "events"): ("Event", True, ()),
    ("apps", "v1", "deployments"): ("Deployment", True, ("status", "scale")),
    ("autoscaling", "v2", "horizontalpodautoscalers"): ("HorizontalPodAutoscaler", True, ("status",)),
    ("policy", "v1", "poddisruptionbudgets"): ("PodDisruptionBudget", True, ("status",)),
    ("networking.k8s.io", "v1", "networkpolicies"): ("NetworkPolicy", True, ()),
    ("monitoring.coreos.com", "v1", "prometheusrules"): ("PrometheusRule", True, ()),
    ("monitoring.coreos.com", "v1", "servicemonitors"): ("ServiceMonitor", True, ()),
    ("keda.sh", "v1alpha1", "scaledobjects"): ("ScaledObject", True, ("status",)),
    ("keda.sh", "v1alpha1", "triggerauthentications"): ("TriggerAuthentication", True, ("status",)),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): ("CustomResourceDefinition", False, ("status",)),
    (models.GROUP, models.VERSION, models.PLURAL): (models.KIND, True, ("status",)),
}
VERBS: Final = ("list", "watch", "get", "create", "update", "patch", "delete")
# The AgentService resource as `put_object`, `live` and `delete_object` name it.
AGSVC: Final = f"{models.GROUP}/{models.VERSION}/{models.PLURAL}"

Key = tuple[kmock.resource, str | None, str]


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What `generation` tracks: everything except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (None deletes; lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Leaf paths of a dict tree (lists and scalars are leaves)."""
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif prefix:
        yield prefix


def _fields_v1(obj: Any) -> dict[str, Any]:
    """The `fieldsV1` shape of an applied intent (`f:` per key, lists as leaves)."""
    if not isinstance(obj, dict):
        return {}
    return {f"f:{key}": _fields_v1(value) for key, value in obj.items()}


def _drop(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _selected(obj: dict[str, Any], selector: str) -> bool:
    """Whether `obj` matches an equality-based label selector (`a=b,c!=d,e`)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def _watched(event: dict[str, Any], request: rendering.Request, selector: str) -> dict[str, Any] | None:
    """The event as this watch sees it (scope, name, label selector), or None when it is not shown.

    With a selector, a change that makes an object match is ADDED and one that makes it stop is
    DELETED, as the API server reports them; `before` holds the labels before a MODIFIED change.
    """
    obj = event.get("object", {})
    meta = obj.get("metadata", {})
    if request.namespace is not None and meta.get("namespace") != request.namespace:
        return None
    if request.name is not None and meta.get("name") != request.name:
        return None
    kind = event["type"]
    if selector:
        matches = _selected(obj, selector)
        before = event.get("before")
        matched = matches if before is None else _selected({"metadata": {"labels": before}}, selector)
        if kind == "MODIFIED" and matched != matches:
            kind = "ADDED" if matches else "DELETED"
        elif not matches:
            return None
    return {"type": kind, "object": obj}


def _expired(since: str) -> dict[str, Any]:
    """The ERROR event of a watch that asks for a version older than the history holds."""
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {since}",
            "reason": "Expired",
            "code": 410,
        },
    }


def _json(payload: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _status(exc: kmock.KubernetesError) -> aiohttp.web.Response:
    """An API error as the API server answers it: a Status, without a traceback.

    kmock formats a traceback into each and keeps every such exception (frames included) until the
    emulator stops: at a burst of creations the 404s for children not created yet were a tenth of
    the emulator's time, and their frames its memory. They are answers, not emulator faults.
    """
    payload = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "code": exc.status,
        "status": "Failure",
        "reason": exc.reason or type(exc).__name__,
        "message": exc.message or repr(exc),
        "details": exc.details or {},
    }
    return _json(payload, status=exc.status)


@attrs.define(kw_only=True)
class DevCluster(kmock.KubernetesEmulator):
    """kmock's emulator with uid/generation/resourceVersion, status subresources, apply and GC."""

    _revision: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    # Per object, per field manager: the last applied intent (for apply's removal semantics).
    _applied: dict[Key, dict[str, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _builtin_payloads: int = attrs.field(default=0, init=False)
    # resource -> namespace -> name -> key, in creation order: lists without scanning every object.
    _index: dict[kmock.resource, dict[str | None, dict[str, Key]]] = attrs.field(factory=dict, init=False)
    _indexed: int = attrs.field(default=0, init=False)  # len(self.objects) the index accounts for
    # resource -> (resourceVersion, event, labels before the change) of its latest changes, oldest first.
    _history: dict[kmock.resource, collections.deque[tuple[int, dict[str, Any], dict[str, str] | None]]] = attrs.field(
        factory=dict, init=False
    )
    _forgotten: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)  # newest version dropped
    _gaps: dict[kmock.resource, asyncio.Event] = attrs.field(factory=dict, init=False)  # watches held back

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._builtin_payloads = len(self._payloads)
        for (group, version, plural), (kind, namespaced, subresources) in RESOURCES.items():
            self.resources[kmock.resource(group, version, plural)] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=namespaced,
                verbs=set(VERBS),
                subresources=set(subresources),
            )
        self.objects[kmock.resource("", "v1", "namespaces"), None, "default"] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "default", "uid": str(uuid.uuid4()), "resourceVersion": "1"},
        }

    # --- the request pipeline -------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            return await self._answer(request)
        except kmock.KubernetesError as exc:
            return _status(exc)

    async def _answer(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        created = False
        if request.resource is not None and request.name is not None and request.method == "PUT":
            await self._replace(request)
        elif request.resource is not None and request.action in (
            kmock.action.CREATE,
            kmock.action.UPDATE,
            kmock.action.DELETE,
        ):
            created = await self._mutate(request)
        else:
            fast = await self._fast_read(request)
            if fast is not None:
                return fast
            response = await super()._handle(request)  # watch and discovery: kmock's own
            return self._normalised(response, created=False)
        if not self._reactions():
            serve = {
                kmock.action.CREATE: self._serve_create,
                kmock.action.DELETE: self._serve_delete,
            }.get(request.action, self._serve_update)  # type: ignore[arg-type]
            return _json(await serve(request), status=201 if created else 200)
        # Someone added kmock reactions: let kmock's DSL pick the response (slower, see below).
        response = await kmock.KubernetesScaffold._handle(self, request)
        return self._normalised(response, created=created)

    def _reactions(self) -> bool:
        """Whether reactions beyond the emulator's own fallbacks were added (e.g. injected faults)."""
        return len(self._payloads) > self._builtin_payloads

    async def _fast_read(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        """Serve get, list and watch directly: kmock's DSL matches each request against every past
        request of every reaction (`request in view` iterates the view), quadratic over a run."""
        if request.resource is None or not request.resource.plural or request.subresource or self._reactions():
            return None  # discovery, subresources, or custom reactions
        if request.action == kmock.action.FETCH:
            return _json(await self._serve_fetch(request))
        if request.action == kmock.action.LIST:
            return _json(await self._serve_list(request))
        if request.action == kmock.action.WATCH:
            return await self._stream_watch(request)
        return None

    async def _stream_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Stream `_serve_watch` as JSON lines, without kmock's DSL (0.25 s per watch late in a test run)."""
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        events = self._serve_watch(request)
        try:
            with contextlib.suppress(ConnectionError):  # the client went away
                async for item in events:
                    if isinstance(item, dict):
                        await response.write(orjson.dumps(item) + b"\n")
                await response.write_eof()
        finally:
            await events.aclose()  # unsubscribes from the change feed now, not when collected
        return response

    @staticmethod
    def _normalised(response: aiohttp.web.StreamResponse, *, created: bool) -> aiohttp.web.StreamResponse:
        """Answer as a real API server does: 201 for creates, plain `application/json`."""
        if not response.prepared and response.content_type == "application/json":
            if created and response.status == 200:
                response.set_status(201)
            response.charset = None
        return response

    def _key(self, request: rendering.Request, name: str | None = None) -> Key:
        assert request.resource is not None
        namespace = request.namespace
        if namespace is None and self._namespaced(request.resource):
            namespace = (request.data or {}).get("metadata", {}).get("namespace") or "default"
        return (request.resource, namespace, name or request.name or "")

    def _namespaced(self, resource: kmock.resource) -> bool:
        if resource not in self.resources:
            return True
        return self.resources[resource].namespaced is not False

    def _has_status(self, resource: kmock.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _live(self, key: Key) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    async def _emit(
        self, resource: kmock.resource, kind: str, obj: dict[str, Any], before: dict[str, Any] | None = None
    ) -> None:
        """Publish a change to the watches, and keep it in the history they resume from.

        `before`: the object as it was, for a MODIFIED event (a label selector's enter and leave).
        """
        labels = _labels(before) if before is not None else None
        history = self._history.setdefault(resource, collections.deque())
        history.append(
            (int(obj.get("metadata", {}).get("resourceVersion") or 0), {"type": kind, "object": obj}, labels)
        )
        if len(history) > WATCH_HISTORY:
            self._forgotten[resource] = history.popleft()[0]
        await self._buses[resource].put({"type": kind, "object": obj, "before": labels})

    async def _mutate(self, request: rendering.Request) -> bool:
        """Apply one create/patch/delete to the store; True when it created the object."""
        assert request.resource is not None
        async with self._lock:
            if request.action == kmock.action.CREATE:
                await self._create(request, self._body(request))
                return True
            if request.action == kmock.action.DELETE:
                key = self._key(request)
                live = self._live(key)
                if live is None:
                    raise kmock.KubernetesObjectNotFoundError()
                _check_preconditions(live, request.data)
                await self._delete(key)
                return False
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            key = self._key(request)
            live = self._live(key)
            if content_type == APPLY_PATCH:
                manager = request.params.get("fieldManager")
                if not manager:
                    raise kmock.KubernetesError(422, "Invalid", "fieldManager is required for apply patches")
                if live is None:
                    body = self._body(request)
                    await self._create(request, body, manager=manager)
                    return True
                updated = self._applied_object(key, live, self._body(request), manager)
            elif live is None:
                raise kmock.KubernetesObjectNotFoundError()
            elif content_type == JSON_PATCH:
                try:
                    updated = jsonpatch.apply_patch(live, request.data, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise kmock.KubernetesError(
                        422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
                    ) from exc
            else:  # merge and strategic-merge patches: merge semantics
                updated = _merge(live, self._body(request))
            await self._update(key, live, updated, subresource=request.subresource)
            return False

    def _body(self, request: rendering.Request) -> dict[str, Any]:
        data = request.data
        if not isinstance(data, dict | list):
            data = yaml.safe_load(request.text) if request.text else None
        if not isinstance(data, dict):
            raise kmock.KubernetesError(400, "BadRequest", "the request body must be a JSON/YAML object")
        return data

    async def _create(self, request: rendering.Request, body: dict[str, Any], *, manager: str | None = None) -> None:
        assert request.resource is not None
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not meta.get("name"):
            raise kmock.KubernetesError(422, "Invalid", "metadata.name: Required value")
        key = self._key(request, meta["name"])
        if self._live(key) is not None:
            raise kmock.KubernetesError(
                409, "AlreadyExists", f"{request.resource.plural} {meta['name']!r} already exists"
            )
        if key[1] is not None:
            meta["namespace"] = key[1]
        if self._has_status(request.resource):
            obj.pop("status", None)
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
            resourceVersion=str(next(self._revision)),
        )
        if manager is not None:
            self._applied[key] = {manager: copy.deepcopy(body)}
            meta["managedFields"] = self._managed_fields(key)
        else:
            self._applied.pop(key, None)
        if key in self.objects:
            self.objects[key].create(obj)
        else:
            self._reindex()  # bring the index up to date before the object counts
            self.objects[key] = obj
            self._index.setdefault(key[0], {}).setdefault(key[1], {})[key[2]] = key
            self._indexed += 1
        await self._emit(request.resource, "ADDED", obj)

    def _applied_object(self, key: Key, live: dict[str, Any], intent: dict[str, Any], manager: str) -> dict[str, Any]:
        """Merge an applied intent, dropping what this manager alone applied before and no longer does."""
        appliers = self._applied.setdefault(key, {})
        previous = appliers.get(manager, {})
        others = {path for name, other in appliers.items() if name != manager for path in _paths(other)}
        wanted = set(_paths(intent))
        updated = copy.deepcopy(live)
        for path in set(_paths(previous)) - wanted - others:
            if not any(path[: len(p)] == p for p in wanted):  # a parent that is still applied as a leaf
                _drop(updated, path)
        appliers[manager] = copy.deepcopy(intent)
        merged: dict[str, Any] = _merge(updated, intent)
        merged.setdefault("metadata", {})["managedFields"] = self._managed_fields(key)
        return merged

    def _managed_fields(self, key: Key) -> list[dict[str, Any]]:
        return [
            {
                "manager": name,
                "operation": "Apply",
                "apiVersion": intent.get("apiVersion", ""),
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields_v1({k: v for k, v in intent.items() if k not in ("apiVersion", "kind")}),
            }
            for name, intent in sorted(self._applied.get(key, {}).items())
        ]

    async def _update(
        self, key: Key, live: dict[str, Any], updated: dict[str, Any], *, subresource: str | None
    ) -> None:
        resource = key[0]
        if subresource == "status":
            updated = {**live, "status": updated.get("status")} if "status" in updated else dict(live)
            if updated.get("status") is None:
                updated.pop("status", None)
        elif self._has_status(resource):
            updated = {k: v for k, v in updated.items() if k != "status"}
            if "status" in live:
                updated["status"] = live["status"]
        meta = updated.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "name", "namespace"):
            if fixed in live.get("metadata", {}):
                meta[fixed] = live["metadata"][fixed]
        meta["generation"] = live.get("metadata", {}).get("generation", 1)
        meta["resourceVersion"] = live.get("metadata", {}).get("resourceVersion")
        if updated == live:
            return  # a no-op write: no new version, no event (as a real API server)
        if _content(updated) != _content(live):
            meta["generation"] = int(meta["generation"] or 0) + 1
        meta["resourceVersion"] = str(next(self._revision))
        self.objects[key].history.append(updated)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._delete(key)
        else:
            await self._emit(resource, "MODIFIED", updated, before=live)

    async def _replace(self, request: rendering.Request) -> None:
        async with self._lock:
            key = self._key(request)
            live = self._live(key)
            if live is None:
                raise kmock.KubernetesObjectNotFoundError()
            body = self._body(request)
            sent = body.get("metadata", {}).get("resourceVersion")
            if sent and sent != live.get("metadata", {}).get("resourceVersion"):
                raise kmock.KubernetesError(409, "Conflict", "the object has been modified; please retry")
            await self._update(key, live, copy.deepcopy(body), subresource=request.subresource)

    async def _delete(self, key: Key) -> None:
        live = self._live(key)
        if live is None:
            return
        meta = live.get("metadata", {})
        if meta.get("finalizers") and not meta.get("deletionTimestamp"):
            self.objects[key].patch({"metadata": {"deletionTimestamp": _now()}})
            await self._emit(key[0], "MODIFIED", self.objects[key].raw)
            return
        if meta.get("finalizers"):
            return
        self.objects[key].delete()
        self._applied.pop(key, None)
        # As the API server: the DELETED event carries the version of the deletion.
        gone = {**live, "metadata": {**meta, "resourceVersion": str(next(self._revision))}}
        await self._emit(key[0], "DELETED", gone)
        uid = meta.get("uid")
        if uid:  # background cascading deletion, as the garbage collector does
            dependents = [
                other
                for other, obj in self.objects.items()
                if not obj.deleted
                and any(ref.get("uid") == uid for ref in obj.raw.get("metadata", {}).get("ownerReferences") or [])
            ]
            for other in dependents:
                await self._delete(other)

    # --- rendering: O(1) lookups instead of kmock's scans -----------------------------------------

    def _requested(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None
        name = request.name or (request.data or {}).get("metadata", {}).get("name")
        key = self._key(request, name)
        if key not in self.objects:
            raise kmock.KubernetesObjectNotFoundError()
        return self.objects[key].last.raw

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        key = self._key(request)
        live = self._live(key)
        if live is None:
            raise kmock.KubernetesObjectNotFoundError()
        return live

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return self._requested(request)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return self._requested(request)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return self._requested(request)

    def _collection(self, resource: kmock.resource, namespace: str | None) -> list[Key]:
        """Keys of one resource (in one namespace, or all when None), in creation order.

        kmock's own list scans every object of every resource and rebuilds the set of known
        resources from them on each request: with 1,000 services (13,000 children) that made the
        emulator, not the operator, the bottleneck of the scale bench. Objects enter the store
        through `_create`, which keeps this index; if anything else added or hard-deleted an
        object (a test writing `cluster.objects[...]` directly), the counts differ and the index
        is rebuilt from a scan.
        """
        self._reindex()
        by_namespace = self._index.get(resource, {})
        if namespace is not None:
            return list(by_namespace.get(namespace, {}).values())
        return [key for names in by_namespace.values() for key in names.values()]

    def _reindex(self) -> None:
        """Rebuild the index when something other than `_create` changed the store (see `_collection`).

        Apart from `_collection`: a create must not build a list of its namespace's keys (that made
        a burst of creations quadratic: 9 % of the emulator's time at 3,000 services).
        """
        if self._indexed != len(self.objects):
            self._index = {}
            for key in self.objects:
                self._index.setdefault(key[0], {}).setdefault(key[1], {})[key[2]] = key
            self._indexed = len(self.objects)

    async def _serve_watch(self, request: rendering.Request) -> AsyncGenerator[rendering.Payload, None]:
        """The current objects as ADDED (or the changes after `resourceVersion`), then every change."""
        yield b""  # the headers go out at once, even while nothing happens (as kmock does)
        assert request.resource is not None
        resource = request.resource
        selector = request.params.get("labelSelector") or ""
        since = request.params.get("resourceVersion") or "0"
        if (gap := self._gaps.get(resource)) is not None:
            await gap.wait()
        bus = self._buses[resource]
        async with self._lock:  # changes are put on the bus under this lock: none slips between
            marker = await bus.mark()
            first: list[dict[str, Any]]
            if since == "0":
                keys = self._collection(resource, request.namespace)
                first = [
                    {"type": "ADDED", "object": self.objects[key].raw} for key in keys if not self.objects[key].deleted
                ]
            elif not since.isdigit() or int(since) < self._forgotten.get(resource, 0):
                first = [_expired(since)]
            else:
                first = [
                    {**event, "before": before}
                    for version, event, before in self._history.get(resource, ())
                    if version > int(since)
                ]
        try:
            for event in first:
                if event["type"] == "ERROR":
                    yield event
                    return
                if (shown := _watched(event, request, selector)) is not None:
                    yield shown
            async for event in bus.stream(since=marker):
                if event.get("type") == _END:
                    return
                if (shown := _watched(event, request, selector)) is not None:
                    yield shown
        finally:
            await bus.unmark(marker)

    async def end_watches(self, plural: str) -> None:
        """End every open watch of a resource, as the API server does when a watch times out."""
        await self._buses[kmock.resource(plural)].put({"type": _END})

    @contextlib.asynccontextmanager
    async def watch_gap(self, plural: str) -> AsyncIterator[None]:
        """End the open watches of a resource and hold new ones back while the caller changes
        objects; then forget those changes (compaction), so that a watch resuming from before the
        gap is answered 410 and must list again: a lost connection, played deterministically."""
        resource = kmock.resource(plural)
        self._gaps[resource] = asyncio.Event()
        try:
            await self.end_watches(plural)
            yield
        finally:
            self.compact()
            self._gaps.pop(resource).set()

    def compact(self) -> None:
        """Forget every change so far (etcd's compaction): a watch resuming from before gets 410."""
        for resource, history in self._history.items():
            if history:
                self._forgotten[resource] = history[-1][0]
            history.clear()

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        async with self._lock:
            keys = self._collection(request.resource, request.namespace)
            if not keys and request.resource not in self.resources:
                raise kmock.KubernetesResourceNotFoundError()
            items = [obj.raw for obj in (self.objects[key] for key in keys) if not obj.deleted]
        selector = request.params.get("labelSelector")
        if selector:
            items = [item for item in items if _selected(item, selector)]
        return {"metadata": {"resourceVersion": str(next(self._revision))}, "items": items}

    # --- helpers for tests and the demo ---------------------------------------------------------

    def live(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The live object, or None (`plural` as `apps/v1/deployments` or `v1/secrets`)."""
        return self._live((kmock.resource(plural), namespace, name))

    def live_objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The live objects of one resource, optionally in one namespace, in creation order."""
        objects = (self.objects[key] for key in self._collection(kmock.resource(plural), namespace))
        return [obj.raw for obj in objects if not obj.deleted]

    async def put_object(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a user would (through the same bookkeeping)."""
        resource = kmock.resource(plural)
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace", "default") if self._namespaced(resource) else None
        key: Key = (resource, namespace, meta["name"])
        async with self._lock:
            live = self._live(key)
            if live is None:
                request = rendering.Request(resource=resource, namespace=namespace, name=meta["name"], data=obj)
                await self._create(request, obj)
            else:
                await self._update(key, live, {**copy.deepcopy(obj), "status": live.get("status")}, subresource=None)
            result = self._live(key)
        assert result is not None
        return result

    async def delete_object(self, plural: str, namespace: str | None, name: str) -> None:
        """Delete an object as a user would (finalizers and garbage collection included)."""
        async with self._lock:
            await self._delete((kmock.resource(plural), namespace, name))

    async def simulate_rollouts(self, namespace: str | None = None, *, ready: bool = True) -> int:
        """Play the Deployment controller: report every Deployment rolled out (or not ready)."""
        resource = kmock.resource("apps", "v1", "deployments")
        count = 0
        async with self._lock:
            for key, obj in list(self.objects.items()):
                if key[0] != resource or obj.deleted or (namespace is not None and key[1] != namespace):
                    continue
                live = obj.raw
                replicas = live.get("spec", {}).get("replicas", 1)
                status = {
                    "observedGeneration": live["metadata"].get("generation", 1),
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas if ready else 0,
                    "availableReplicas": replicas if ready else 0,
                    "conditions": [
                        {"type": "Available", "status": "True" if ready else "False", "reason": "Simulated"},
                        {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                    ],
                }
                if live.get("status") != status:
                    await self._update(key, live, {**live, "status": status}, subresource="status")
                    count += 1
        return count

    @property
    def request_count(self) -> int:
        """Requests served so far (a mark for `writes(since=...)`)."""
        return len(self._requests)

    def writes(self, since: int = 0) -> list[rendering.Request]:
        """Write requests (create, patch, put, delete) served since a `request_count` mark."""
        return [r for r in self._requests[since:] if r.method in ("POST", "PATCH", "PUT", "DELETE")]


class _Recent(list[rendering.Request]):
    """kmock's request log, holding only the latest requests: for long benchmarks.

    kmock keeps every request it served (for the tests' `writes(since=...)`): 1.1 GB after a bench
    of 1,000 services, ten times that at 10,000, and the garbage collector walks all of it. Its
    reactions (discovery, watches) look a request up in the log while serving it, so the newest
    ones stay; `len()` counts every request served, as kmock's ids and `request_count` expect.
    """

    KEEP = 1000

    def __init__(self) -> None:
        super().__init__()
        self._count = 0

    def append(self, request: rendering.Request) -> None:
        super().append(request)
        self._count += 1
        if super().__len__() > 2 * self.KEEP:
            del self[: self.KEEP]

    def __len__(self) -> int:
        return self._count


@contextlib.asynccontextmanager
async def running(
    host: str = "127.0.0.1", port: int | None = None, *, keep_requests: bool = True
) -> AsyncIterator[tuple[DevCluster, str]]:
    """Serve a fresh dev cluster over HTTP on loopback; yield it with its base URL.

    `keep_requests=False`: only the latest requests are kept (`writes()` is then meaningless).
    """
    cluster = DevCluster()
    if not keep_requests:
        cluster._requests = _Recent()
    async with cluster, kmock.Server(cluster, host=host, port=port) as server:
        yield cluster, str(server.url).rstrip("/")


def kubeconfig(url: str, namespace: str = "default") -> str:
    """A kubeconfig naming the dev cluster at `url`, for kubectl-like clients (the plugin); no credentials."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dev", "cluster": {"server": url}}],
        "users": [{"name": "dev", "user": {}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "dev", "namespace": namespace}}],
        "current-context": "dev",
    }
    return yaml.safe_dump(document, sort_keys=False)


async def _serve_forever(host: str, port: int, *, keep_requests: bool = True) -> None:
    async with running(host, port, keep_requests=keep_requests) as (_, url):
        print(json.dumps({"url": url}), flush=True)  # noqa: T201 - the one line a parent process reads
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m agentops_dev.devcluster --port N`: serve an empty dev cluster until stopped."""
    parser = argparse.ArgumentParser(prog="devcluster", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--forget-requests", action="store_true", help="keep only the latest requests (long benchmarks: memory)"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        # uvloop, as the operator: the benchmarks of 10,000 services keep this process busy too.
        uvloop.run(_serve_forever(args.host, args.port, keep_requests=not args.forget_requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _check_preconditions(live: Mapping[str, Any], options: Any) -> None:
    """As the API server: a DeleteOptions' preconditions (uid, resourceVersion) that differ are a 409."""
    preconditions = (options or {}).get("preconditions") if isinstance(options, dict) else None
    meta = live.get("metadata", {})
    for field in ("uid", "resourceVersion"):
        wanted = (preconditions or {}).get(field)
        if wanted is not None and wanted != meta.get(field):
            raise kmock.KubernetesError(
                409,
                "Conflict",
                f"Precondition failed: {field.capitalize() if field == 'uid' else field}"
                f" in precondition: {wanted}, {field} in object meta: {meta.get(field)}",
            )

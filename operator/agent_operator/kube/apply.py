"""The apply layer: the only module that writes to the Kubernetes API.

Client choice. The operator talks to the API with its own `aiohttp` session built from the same
`kopf.ConnectionInfo` kopf logs in with (service account in a pod, kubeconfig outside). Why not
the alternatives:
- kopf's API helpers are private (`kopf._cogs.clients`) and cover only what kopf itself needs;
- the official `kubernetes` client is synchronous: every call would cost a thread of kopf's pool,
  a thousand services would queue behind a handful of threads, and server-side apply needs a
  raw `PATCH` with `application/apply-patch+yaml` that its typed API does not offer anyway.
One async session with connection pooling serves every handler of the event loop; a 401 makes
it log in again (service-account tokens rotate).

Write discipline. Each child is compared with its live object on the fields the operator owns
and written only on a difference, so a reconcile with nothing changed makes zero write calls:
- every field of the desired manifest must be present and equal in the live object (defaults
  the API server adds are ignored; quantities compare by value, `1000m` == `1`; empty maps and
  lists equal absent ones, which the server drops);
- lists of named items (containers, env, ports, volumes) match by name, other lists by position
  and length;
- the hash of the whole desired manifest rides along as an annotation, so a field the operator
  stops setting (an env var, a label) is noticed although "desired ⊆ live" still holds.

Ownership. A child is written only when it is absent or already controlled by its AgentService
(a controller ownerReference with the same uid). An object of a child's name that someone else
created is left exactly as it is, never adopted: an apply with `force` would take its fields
over, and a controller ownerReference would have the garbage collector delete it with the
AgentService. `apply_all` reports it as a conflict (the `ChildConflict` condition), and the
next reconcile after its owner removes it creates the operator's own.

A write is a server-side apply (`PATCH ...?fieldManager=agentservice-operator&force=true`):
the API server merges what the operator owns and leaves other managers' fields alone. Replicas
under an autoscaler: the builders leave `spec.replicas` out, so the operator never writes it;
and when autoscaling is turned on for a Deployment whose replicas the operator applied before,
it first hands the field over (a replicas-only apply by a separate manager, as the Kubernetes
docs prescribe) so that dropping it from the operator's apply does not reset it to 1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import json
import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final, cast

import aiohttp
import kopf
import structlog
from agent_operator import opmetrics
from agent_operator.api import models
from agent_operator.build import naming

log = structlog.get_logger(__name__)

APPLIED_HASH_ANNOTATION: Final = "agentops.dev/applied-hash"
HANDOVER_MANAGER: Final = f"{naming.FIELD_MANAGER}-handover"
APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE: Final = "application/merge-patch+json"
REQUEST_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 10.0

# (apiVersion, kind) -> plural: every kind the builders emit, plus the AgentService itself.
PLURALS: Final[dict[tuple[str, str], str]] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrules",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    (models.API_VERSION, models.KIND): models.PLURAL,
}
NAMED_LIST_KEYS: Final = ("name", "containerPort", "port")
# Children that a spec change can make unwanted (autoscaling off, engine switched, budgets or policy
# or alerts disabled); they are deleted when owned and no longer desired. Deployments are never
# pruned here: the canary rollout owns the lifecycle of the canary track.
PRUNABLE: Final = (
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
)


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """Worth retrying later: throttling, conflicts, server-side faults."""
        return self.status in (409, 429) or self.status >= 500


class TransportError(ApiError):
    """The API server could not be reached (connection refused, reset, timed out)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "Unreachable", message)

    @property
    def transient(self) -> bool:
        return True


# --- pure: comparing desired with live ------------------------------------------------------------

_SUFFIXES: Final = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


# The quantity grammar of k8s.io/apimachinery (resource.Quantity): a signed decimal number with
# a binary suffix, a decimal suffix or a decimal exponent. Anything else (`NaN`, `1_000`, ` 1`,
# all of which Python's Decimal would accept) is not a quantity and compares as plain text.
_QUANTITY: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?")


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity (`250m`, `1Gi`, `1e3`), or None if it is not one."""
    if not _QUANTITY.fullmatch(text):
        return None
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix) and text[: -len(suffix)]:
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the grammar admits only decimals
        return None


def _empty(value: Any) -> bool:
    """A value the API server drops from its answer: null, `{}`, `[]`, and `""` (omitempty)."""
    return value is None or value in ({}, [], "")


def _same_scalar(desired: Any, live: Any) -> bool:
    """Equal, or the same quantity in two spellings (`0.5` and `500m`; `2` and "2")."""
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live  # True == 1 in Python, not in an API object
    if isinstance(desired, str | int | float) and isinstance(live, str | int | float):
        if isinstance(desired, str) or isinstance(live, str):
            a, b = quantity(str(desired)), quantity(str(live))
            return a is not None and a == b
        return bool(desired == live)
    return bool(desired == live)


def _list_key(items: Sequence[Any]) -> str | None:
    """The merge key of a list of named items, if every item has it."""
    if not items or not all(isinstance(i, Mapping) for i in items):
        return None
    for key in NAMED_LIST_KEYS:
        if all(key in i for i in items):
            return key
    return None


def drift(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths where `live` does not carry what `desired` says (empty: nothing to write)."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [path or "."] if not (_empty(desired) and live is None) else []
        found: list[str] = []
        for key, value in desired.items():
            if key not in live:
                if not _empty(value):
                    found.append(f"{path}.{key}")
                continue
            found.extend(drift(value, live[key], f"{path}.{key}"))
        return found
    if isinstance(desired, list):
        return _list_drift(desired, live, path)
    return [] if _same_scalar(desired, live) else [path]


def _list_drift(desired: list[Any], live: Any, path: str) -> list[str]:
    if not isinstance(live, list):
        return [] if (not desired and live is None) else [path]
    key = _list_key(desired)
    if key is not None and _list_key(live) == key:
        by_key = {item[key]: item for item in live}
        wanted = {item[key] for item in desired}
        if [i[key] for i in desired] != [i[key] for i in live if i[key] in wanted]:
            return [path]  # an item is missing or the order changed
        return [p for item in desired for p in drift(item, by_key[item[key]], f"{path}[{item[key]}]")]
    if len(desired) != len(live):
        return [path]
    return [p for i, (d, v) in enumerate(zip(desired, live, strict=True)) for p in drift(d, v, f"{path}[{i}]")]


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """A short, stable fingerprint of a desired manifest (without the fingerprint itself)."""
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    if APPLIED_HASH_ANNOTATION in annotations:
        meta = dict(manifest["metadata"])
        rest = {k: v for k, v in annotations.items() if k != APPLIED_HASH_ANNOTATION}
        if rest:
            meta["annotations"] = rest
        else:
            del meta["annotations"]
        manifest = {**manifest, "metadata": meta}
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamped(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of `manifest` carrying its own hash annotation."""
    copy: dict[str, Any] = json.loads(json.dumps(manifest))
    digest = manifest_hash(copy)
    copy.setdefault("metadata", {}).setdefault("annotations", {})[APPLIED_HASH_ANNOTATION] = digest
    return copy


def needs_write(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> list[str]:
    """Why `desired` (already stamped) must be applied; empty when the live object carries it."""
    if live is None:
        return ["absent"]
    return drift(desired, live)


def owns_field(live: Mapping[str, Any], manager: str, *path: str) -> bool:
    """Whether `manager` holds `path` (e.g. `spec`, `replicas`) in the live object's managedFields."""
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        node: Any = entry.get("fieldsV1") or {}
        for part in path:
            node = node.get(f"f:{part}") if isinstance(node, Mapping) else None
        if node is not None:
            return True
    return False


def controlled_by(live: Mapping[str, Any] | None, owner_uid: str | None) -> bool:
    """Whether `live` carries a controller ownerReference to the object with `owner_uid`."""
    if live is None or not owner_uid:
        return False
    refs = live.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") is True and ref.get("uid") == owner_uid for ref in refs)


def owned(live: Mapping[str, dict[str, Any] | None], owner_uid: str | None) -> dict[str, dict[str, Any] | None]:
    """`live` with every object the owner does not control replaced by None (as if absent).

    What the decisions of a reconcile (the auth token, the canary layout, the workloads' state)
    read: an object someone else controls says nothing about this AgentService.
    """
    return {k: v if v is not None and controlled_by(v, owner_uid) else None for k, v in live.items()}


def conflicts(
    desired: Sequence[Mapping[str, Any]], live: Mapping[str, Mapping[str, Any] | None], owner_uid: str | None
) -> tuple[str, ...]:
    """`Kind/name` of each desired child that exists but is not controlled by the owner."""
    return tuple(
        key(child)
        for child in desired
        if (current := live.get(key(child))) is not None and not controlled_by(current, owner_uid)
    )


# --- the client -----------------------------------------------------------------------------------


def _plural(api_version: str, kind: str) -> str:
    try:
        return PLURALS[api_version, kind]
    except KeyError:
        raise ValueError(f"the operator does not manage {kind} ({api_version})") from None


class InvalidName(ValueError):
    """A namespace or object name that is not one a Kubernetes object can have; never sent."""


def _segment(value: str, pattern: str, what: str) -> str:
    """`value` as exactly one URL path segment, or InvalidName.

    Quoting alone is not enough: the API server decodes the path before it splits it, so a `%2F`
    would still climb out, and `.`/`..` are not quoted at all. A name the API server itself would
    accept (a DNS subdomain; a namespace is a DNS label) has none of those, so anything else is
    refused before a request is made; the quoting is then a second fence, not the only one.
    """
    if len(value) > models.NAME_MAX_LENGTH or re.fullmatch(pattern, value) is None:
        raise InvalidName(f"{value!r} is not a valid {what}")
    return urllib.parse.quote(value, safe="")


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The URL path of an object (or of its collection when `name` is None); every segment quoted."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    scope = f"/namespaces/{_segment(namespace, models.DNS_LABEL, 'namespace')}" if namespace is not None else ""
    tail = f"/{_segment(name, models.DNS_SUBDOMAIN, f'{kind} name')}" if name is not None else ""
    return f"{base}{scope}/{_plural(api_version, kind)}{tail}"


Login = Callable[[], Awaitable[kopf.ConnectionInfo]]


@dataclasses.dataclass(frozen=True)
class Result:
    """What `apply_all` did."""

    written: tuple[str, ...] = ()  # `Kind/name` of each child written
    live: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # `Kind/name` -> live object
    skipped: tuple[str, ...] = ()  # kinds the cluster does not serve
    conflicts: tuple[str, ...] = ()  # `Kind/name` of children left alone: someone else's object


class Client:
    """An aiohttp session against the API server; counts every write in the operator's metrics."""

    def __init__(self, login: Login, metrics: opmetrics.Metrics, *, field_manager: str = naming.FIELD_MANAGER) -> None:
        self._login = login
        self._metrics = metrics
        self._field_manager = field_manager
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()
        # Owner uid -> the prunable children known to exist, once a list has established them.
        self._prunable: dict[str, set[tuple[str, str, str]]] = {}

    async def _ensure(self, *, renew: bool = False) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is not None and not renew:
                return self._session
            if self._session is not None:
                await self._session.close()
            info = await self._login()
            auth = None
            if info.username and info.password:
                auth = aiohttp.BasicAuth(info.username, info.password)
            headers = dict(info.as_http_headers())
            headers.setdefault("User-Agent", f"{naming.FIELD_MANAGER}")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ssl=info.as_ssl_context()),
                headers=headers,
                auth=auth,
                # Per socket operation, not per request: a request queued behind the pool's 64
                # connections during a burst (a thousand services created at once) is waiting,
                # not failing; a hung connection still times out.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=REQUEST_TIMEOUT),
            )
            self._server = info.server.rstrip("/")
            return self._session

    def known_prunable(self, owner_uid: str) -> set[tuple[str, str, str]] | None:
        """(apiVersion, kind, name) of the owner's prunable children, None until listed once."""
        return self._prunable.get(owner_uid)

    def remember_prunable(self, owner_uid: str, children: set[tuple[str, str, str]]) -> None:
        self._prunable[owner_uid] = children

    def note_prunable(self, child: Mapping[str, Any]) -> None:
        """Remember that `child` (adopted) exists, if its kind is prunable and its owner listed."""
        if (child["apiVersion"], child["kind"]) not in PRUNABLE:
            return
        for ref in child["metadata"].get("ownerReferences") or []:
            known = self._prunable.get(str(ref.get("uid"))) if ref.get("controller") else None
            if known is not None:
                known.add((child["apiVersion"], child["kind"], child["metadata"]["name"]))

    def forget(self, owner_uid: str) -> None:
        """Drop what the client remembers about an owner's children (the owner was deleted)."""
        self._prunable.pop(owner_uid, None)

    async def close(self) -> None:
        async with self._lock:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        kind: str = "",
    ) -> dict[str, Any] | None:
        """One API call; None for 404 on reads, ApiError otherwise; a 401 logs in again once."""
        if method != "GET":
            self._metrics.writes.labels(verb=method.lower(), kind=kind or "unknown").inc()
        for attempt in (1, 2):
            session = await self._ensure(renew=attempt == 2)
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": content_type} if body is not None else {}
            try:
                # No redirects: the API server never redirects a resource request, and following
                # one would take the operator's rights to a path nobody built.
                async with session.request(
                    method, self._server + path, data=data, params=params, headers=headers, allow_redirects=False
                ) as response:
                    if response.status == 401 and attempt == 1:
                        continue
                    if response.status == 404 and method == "GET":
                        return None
                    if response.status >= 300:  # a redirect (not followed) is a refusal too
                        raise await _api_error(response)
                    payload = await response.json(content_type=None)
                    return payload if isinstance(payload, dict) else None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise TransportError(f"{method} {path}: {exc!r}") from exc
        raise ApiError(401, "Unauthorized", "the API server rejected the operator's credentials twice")

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind == "Secret":
            raise TypeError("Secrets are read with read_secret, which keeps them to the AgentService's namespace")
        return await self.request("GET", object_path(api_version, kind, namespace, name))

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The one read of a Secret the operator makes: `name` in `namespace`, the AgentService's own.

        The operator may read Secrets cluster-wide, a tenant may not: whatever a spec names, the
        request must stay inside the tenant's namespace, or its conditions would tell the tenant
        about Secrets it cannot read. Checked on the path actually sent, not only on its inputs.
        """
        path = object_path("v1", "Secret", namespace, name)
        inside = f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/secrets/"
        if not path.startswith(inside) or "/" in path[len(inside) :]:
            raise InvalidName(f"Secret {name!r} is not an object of namespace {namespace!r}")
        return await self.request("GET", path)

    async def apply(self, manifest: Mapping[str, Any], *, manager: str | None = None) -> dict[str, Any]:
        """Server-side apply `manifest` (force: the operator owns these fields)."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": manager or self._field_manager, "force": "true"}
        result = await self.request(
            "PATCH", path, body=manifest, params=params, content_type=APPLY_CONTENT_TYPE, kind=manifest["kind"]
        )
        return result or {}

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects of one kind in a namespace matching an equality label selector ([] if not served)."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
        result = await self.request("GET", object_path(api_version, kind, namespace), params=params)
        return list((result or {}).get("items") or [])

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        try:
            await self.request("DELETE", object_path(api_version, kind, namespace, name), kind=kind)
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def patch_status(self, owner: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource of an object."""
        meta = owner["metadata"]
        path = object_path(owner["apiVersion"], owner["kind"], meta.get("namespace"), meta["name"]) + "/status"
        await self.request("PATCH", path, body={"status": status}, content_type=MERGE_CONTENT_TYPE, kind="status")

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        return (await self.request("POST", path, body=manifest, kind=manifest["kind"])) or {}

    async def event(self, owner: Mapping[str, Any], *, reason: str, message: str, warning: bool = False) -> None:
        """Post an Event about `owner`; a failure is logged, never raised (events are best effort)."""
        meta = owner["metadata"]
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": naming.MANAGED_BY},
            "reportingComponent": naming.MANAGED_BY,
            "reportingInstance": naming.MANAGED_BY,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.create(event)
        except ApiError as exc:
            log.warning("event_post_failed", reason=reason, error=str(exc))


async def _api_error(response: aiohttp.ClientResponse) -> ApiError:
    try:
        payload = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    retry = response.headers.get("Retry-After")
    return ApiError(
        response.status,
        str(payload.get("reason") or response.reason or ""),
        str(payload.get("message") or ""),
        retry_after=float(retry) if retry and retry.isdigit() else None,
    )


def adopt(children: Sequence[Mapping[str, Any]], owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Copies of `children` owned by `owner` (controller ownerReference), hash-stamped."""
    adopted = [json.loads(json.dumps(child)) for child in children]
    kopf.append_owner_reference(adopted, owner=kopf.Body(cast(kopf.RawBody, dict(owner))))
    for child in adopted:  # already private copies: stamp in place rather than copy again
        digest = manifest_hash(child)
        child.setdefault("metadata", {}).setdefault("annotations", {})[APPLIED_HASH_ANNOTATION] = digest
    return adopted


def key(manifest: Mapping[str, Any]) -> str:
    """`Kind/name` of a manifest (unique among one AgentService's children)."""
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


async def read_child(client: Client, child: Mapping[str, Any]) -> dict[str, Any] | None:
    """The live object of one child (None when absent); a Secret through `Client.read_secret`."""
    meta = child["metadata"]
    if child["kind"] == "Secret":
        return await client.read_secret(meta["namespace"], meta["name"])
    return await client.get(child["apiVersion"], child["kind"], meta.get("namespace"), meta["name"])


async def read_live(client: Client, children: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """The live object of every child (None when absent), read concurrently."""
    lives = await asyncio.gather(*(read_child(client, c) for c in children))
    return {key(c): live for c, live in zip(children, lives, strict=True)}


async def apply_all(
    client: Client,
    desired: Sequence[Mapping[str, Any]],
    live: Mapping[str, dict[str, Any] | None],
    *,
    owner_uid: str | None,
) -> Result:
    """Apply each desired child whose live object differs; in order, one write per changed child.

    A child is written only when it is absent or already controlled by the owner (`owner_uid`).
    An object of that name that someone else created is never touched (an apply with `force`
    would take its fields over and a controller ownerReference would hand it to the garbage
    collector with the AgentService): it is reported in `Result.conflicts` instead.
    """
    written: list[str] = []
    result_live: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    foreign: list[str] = []
    for child in desired:
        name = key(child)
        current = live.get(name)
        if current is not None and not controlled_by(current, owner_uid):
            log.warning("child_conflict", child=name, owners=current.get("metadata", {}).get("ownerReferences"))
            foreign.append(name)
            continue
        reasons = needs_write(child, current)
        if not reasons:
            assert current is not None
            result_live[name] = current
            continue
        log.info("apply", child=name, drift=reasons[:5])
        try:
            if current is not None and _handover_needed(child, current):
                await client.apply(_replicas_only(child, current), manager=HANDOVER_MANAGER)
            result_live[name] = await client.apply(child)
        except ApiError as exc:
            if exc.status == 404 and current is None:  # the cluster does not serve this kind (no CRD)
                skipped.append(child["kind"])
                continue
            raise
        written.append(name)
    for child in desired:
        if key(child) in result_live:
            client.note_prunable(child)
    return Result(
        written=tuple(written), live=result_live, skipped=tuple(sorted(set(skipped))), conflicts=tuple(foreign)
    )


async def prune(
    client: Client, owner: Mapping[str, Any], desired: Sequence[Mapping[str, Any]], selector: Mapping[str, str]
) -> tuple[str, ...]:
    """Delete owned children of the prunable kinds that are no longer desired; return `Kind/name`s.

    The first prune of an owner after start-up lists each prunable kind (five LIST calls); from
    then on the client remembers which of them exist (`apply_all` notes every one it applies or
    finds), so a resync pass over N services costs no LIST calls instead of 5 N.
    """
    meta = owner["metadata"]
    uid = str(meta.get("uid"))
    wanted = {key(c) for c in desired}
    known = client.known_prunable(uid)
    if known is None:
        known = set()
        for api_version, kind in PRUNABLE:
            for obj in await client.list_objects(api_version, kind, meta["namespace"], selector=selector):
                if controlled_by(obj, meta.get("uid")):  # never someone else's object
                    known.add((api_version, kind, obj["metadata"]["name"]))
        client.remember_prunable(uid, known)
    deleted = []
    for api_version, kind, name in sorted(known):
        if f"{kind}/{name}" in wanted:
            continue
        log.info("prune", child=f"{kind}/{name}")
        await client.delete(api_version, kind, meta["namespace"], name)
        known.discard((api_version, kind, name))
        deleted.append(f"{kind}/{name}")
    return tuple(deleted)


def _handover_needed(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """An autoscaler now owns replicas that the operator applied before (see the module doc)."""
    if desired.get("kind") != "Deployment" or "replicas" in desired.get("spec", {}):
        return False
    return "replicas" in live.get("spec", {}) and owns_field(live, naming.FIELD_MANAGER, "spec", "replicas")


def _replicas_only(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    meta = desired["metadata"]
    return {
        "apiVersion": desired["apiVersion"],
        "kind": desired["kind"],
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
        "spec": {"replicas": live["spec"]["replicas"]},
    }


def decode_secret_value(secret: Mapping[str, Any], key_name: str) -> str | None:
    """A Secret key's value (from `data` or `stringData`), or None when the key is absent."""
    data = secret.get("data") or {}
    if key_name in data:
        return base64.b64decode(data[key_name]).decode(errors="replace")
    string_data = secret.get("stringData") or {}
    value = string_data.get(key_name)
    return str(value) if value is not None else None

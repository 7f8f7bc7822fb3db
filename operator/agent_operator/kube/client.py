"""The Kubernetes API client: one aiohttp session, the error vocabulary, and object paths.

The operator talks to the API with its own `aiohttp` session built from the same
`kopf.ConnectionInfo` kopf logs in with (service account in a pod, kubeconfig outside). Why not
the alternatives:
- kopf's API helpers are private (`kopf._cogs.clients`) and cover only what kopf itself needs;
- the official `kubernetes` client is synchronous: every call would cost a thread of kopf's pool,
  a thousand services would queue behind a handful of threads, and server-side apply needs a
  raw `PATCH` with `application/apply-patch+yaml` that its typed API does not offer anyway.
One async session with connection pooling serves every handler of the event loop; a 401 makes
it log in again (service-account tokens rotate). The client keeps no cache of objects, only the
resourceVersion each of its latest applies produced, so that the child watches can tell the echo
of the operator's own write from someone else's change (`own_write`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp
import kopf
import orjson
import structlog
from agent_operator import objects, opmetrics
from agent_operator.api import models
from agent_operator.manifests import naming

log = structlog.get_logger(__name__)

APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE: Final = "application/merge-patch+json"
REQUEST_TIMEOUT: Final = 30.0
CONNECT_TIMEOUT: Final = 10.0
# Applies remembered until their watch event comes back; one whose event never comes (a kind
# nobody watches, a no-op) is forgotten once this many newer ones are held.
OWN_WRITES: Final = 4096
OWN_WRITE_WAIT: Final = 5.0  # longest a watch event waits for the answer of an apply under way

Key = tuple[str, str | None, str]  # kind, namespace, name

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
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentications",
    (models.API_VERSION, models.KIND): models.PLURAL,
}


@dataclasses.dataclass(frozen=True)
class Event:
    """An Event to post about an object: Normal, or Warning."""

    reason: str
    message: str
    warning: bool = False


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


class Client:
    """An aiohttp session against the API server; counts every write in the operator's metrics."""

    def __init__(self, login: Login, metrics: opmetrics.Metrics, *, field_manager: str = naming.FIELD_MANAGER) -> None:
        self._login = login
        self._metrics = metrics
        self._field_manager = field_manager
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()
        # (kind, namespace, name) -> the resourceVersion an apply produced (None: it failed), a future
        # while the apply is under way (its watch event may come back before its response).
        self._own: collections.OrderedDict[Key, asyncio.Future[str | None]] = collections.OrderedDict()

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
            data = None if body is None else orjson.dumps(body)
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
                    payload = await response.json(content_type=None, loads=orjson.loads)
                    return payload if isinstance(payload, dict) else None
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise TransportError(f"{method} {path}: {exc!r}") from exc
        raise ApiError(401, "Unauthorized", "the API server rejected the operator's credentials twice")

    async def stream(
        self, path: str, params: Mapping[str, str], *, read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch call, decoded line by line, until the server ends it.

        ApiError when the call is refused (a 404 too: a watch has no "absent" answer); a 401 logs
        in again once. `read_timeout` bounds the silence between two chunks, not the whole call,
        which lasts as long as the server keeps it open; a silence that long ends the call as the
        server's own timeout would (the caller resumes from the last version it saw). Lines are
        split here, not by aiohttp's `readline`, which refuses lines longer than its buffer (a
        dashboard ConfigMap can be).
        """
        for attempt in (1, 2):
            session = await self._ensure(renew=attempt == 2)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=read_timeout)
            try:
                async with session.get(
                    self._server + path, params=params, timeout=timeout, allow_redirects=False
                ) as response:
                    if response.status == 401 and attempt == 1:
                        continue
                    if response.status >= 300:
                        raise await _api_error(response)
                    buffer = bytearray()
                    chunks = response.content.iter_any()
                    while True:
                        try:
                            chunk = await anext(chunks)
                        except (StopAsyncIteration, TimeoutError):
                            return
                        buffer.extend(chunk)
                        while (end := buffer.find(b"\n")) >= 0:
                            line = bytes(buffer[:end])
                            del buffer[: end + 1]
                            if line.strip():
                                yield orjson.loads(line)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                raise TransportError(f"GET {path} (watch): {exc!r}") from exc
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

    async def read(self, ref: objects.ObjectRef) -> dict[str, Any] | None:
        """The live object `ref` names (None when absent); a Secret through `read_secret`."""
        if ref.kind == "Secret":
            if ref.namespace is None:
                raise InvalidName(f"Secret {ref.name!r} has no namespace")
            return await self.read_secret(ref.namespace, ref.name)
        return await self.get(ref.api_version, ref.kind, ref.namespace, ref.name)

    async def apply(self, manifest: Mapping[str, Any], *, manager: str | None = None) -> dict[str, Any]:
        """Server-side apply `manifest` (force: the operator owns these fields)."""
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": manager or self._field_manager, "force": "true"}
        key: Key = (manifest["kind"], meta.get("namespace"), meta["name"])
        version: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._own.pop(key, None)
        self._own[key] = version
        while len(self._own) > OWN_WRITES:
            self._own.popitem(last=False)[1].cancel()
        result: dict[str, Any] | None = None
        try:
            result = await self.request(
                "PATCH", path, body=manifest, params=params, content_type=APPLY_CONTENT_TYPE, kind=manifest["kind"]
            )
        finally:
            if not version.done():
                written = ((result or {}).get("metadata") or {}).get("resourceVersion")
                version.set_result(str(written) if written else None)
        return result or {}

    async def own_write(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` (a watch event's object) is the very version this client's last apply of it produced.

        Waits for that apply's answer when it is still under way (`OWN_WRITE_WAIT` at most); forgets
        the apply once matched.
        """
        meta = obj.get("metadata") or {}
        key: Key = (kind, meta.get("namespace"), str(meta.get("name", "")))
        version = self._own.get(key)
        if version is None or meta.get("resourceVersion") is None:
            return False
        try:
            produced = await asyncio.wait_for(asyncio.shield(version), OWN_WRITE_WAIT)
        except TimeoutError:
            return False  # a slow apply: the event is treated as someone else's (a needless repair at worst)
        except asyncio.CancelledError:
            if not version.cancelled():
                raise  # our own caller is cancelled
            return False  # forgotten: too many newer applies
        if produced != str(meta["resourceVersion"]):
            return False
        if self._own.get(key) is version:
            del self._own[key]
        return True

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, *, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Objects of one kind in a namespace matching an equality label selector ([] if not served)."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
        result = await self.request("GET", object_path(api_version, kind, namespace), params=params)
        return list((result or {}).get("items") or [])

    async def delete(
        self, api_version: str, kind: str, namespace: str | None, name: str, *, uid: str, resource_version: str
    ) -> bool:
        """Delete exactly the object read as `uid` at `resource_version`; whether it was deleted.

        The preconditions make the API server refuse (409) a delete that would hit another object of
        the same name (deleted and created again meanwhile) or the same object changed since it was
        read (its ownerReferences edited): what the caller checked is what goes. A 404 or a 409 is
        "not deleted"; the caller reads again on its next pass.
        """
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        try:
            await self.request("DELETE", object_path(api_version, kind, namespace, name), body=options, kind=kind)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
            return False
        return True

    async def patch_status(self, owner: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource of an object."""
        meta = owner["metadata"]
        path = object_path(owner["apiVersion"], owner["kind"], meta.get("namespace"), meta["name"]) + "/status"
        await self.request("PATCH", path, body={"status": status}, content_type=MERGE_CONTENT_TYPE, kind="status")

    async def remove_annotations(self, obj: Mapping[str, Any], keys: Sequence[str]) -> None:
        """Merge-patch `keys` out of an object's annotations (metadata only)."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        patch = {"metadata": {"annotations": dict.fromkeys(keys)}}
        await self.request("PATCH", path, body=patch, content_type=MERGE_CONTENT_TYPE, kind=obj["kind"])

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = object_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        return (await self.request("POST", path, body=manifest, kind=manifest["kind"])) or {}

    async def post_events(self, owner: Mapping[str, Any], events: Sequence[Event]) -> None:
        """Post each Event about `owner`, in order; a failure is logged, never raised (events are best effort)."""
        for event in events:
            await self._post_event(owner, event)

    async def _post_event(self, owner: Mapping[str, Any], posted: Event) -> None:
        reason, message, warning = posted.reason, posted.message, posted.warning
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
        else:
            log.info("event_posted", name=meta["name"], namespace=meta.get("namespace"), reason=reason)


async def _api_error(response: aiohttp.ClientResponse) -> ApiError:
    try:
        payload = await response.json(content_type=None, loads=orjson.loads)
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

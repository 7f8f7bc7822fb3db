"""The Prometheus edge of canary analysis: runs the queries of an `analysis.AnalysisPlan`.

The only module of the analysis that does I/O. It asks the Prometheus HTTP API through
prometheus-api-client and maps every outcome into an `analysis.Measurement`, in one place:

- one number (a one-series vector or a scalar)           → `Measurement(value)`
- an empty vector, or NaN (e.g. 0/0 over a quiet window) → `Measurement(None)`: no data
- several series, a range vector, a string, a non-number → `Measurement(error=...)`
- Prometheus unreachable, a timeout, an HTTP error, a rejected query (bad PromQL) or a body that
  is not the Prometheus API → `Measurement(error=...)`: an `error` verdict, never a success.

Once Prometheus is found unreachable the remaining queries of the same analysis are not tried
(they get the same error), so a blackholed server costs one timeout per analysis, not one per
query. Each query has its own timeout and the whole analysis a time limit (`time_limit_seconds`):
the queries left when it runs out are not sent and count as errors. The client is synchronous
(requests); `analyse_async` runs it in a thread for kopf.

Tenancy (docs/security.md): with `namespace_param` set, the URL is a prom-label-proxy enforcing
the `namespace` label, and every query carries the namespace of the AgentService it is for in that
parameter; the proxy rewrites the query so that every selector of it has `namespace="<ns>"`, and
refuses (400, `errorType: prom-label-proxy`) a query naming another namespace before it reaches
Prometheus. Such a refusal is `Measurement(error=..., refused=True)`. No message quotes series
labels Prometheus returned (several series, an execution error's label sets), nor the credentials
of the URL (`redact_url`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.parse
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, cast

import requests
import structlog
from agent_operator.api import models
from agent_operator.canary import analysis
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

logger = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_SECONDS: Final = 5
# Retried once, on connection failures and on the statuses a busy or restarting Prometheus returns.
DEFAULT_RETRIES: Final = 1
RETRY_STATUSES: Final = (502, 503, 504)
HTTP_STATUS = re.compile(r"HTTP Status Code (\d+)")
# Total time of one analysis's queries (several queries of up to DEFAULT_TIMEOUT_SECONDS each).
DEFAULT_TIME_LIMIT_SECONDS: Final = 20.0
NAMESPACE_PARAM: Final = "namespace"  # prom-label-proxy's parameter (its -label, by default)
LABEL_PROXY_ERROR: Final = "prom-label-proxy"  # the errorType of the proxy's own refusals
# A label set in an error message (`{namespace="a", service="b"}`): series Prometheus returned.
LABEL_SET = re.compile(r"\{[^{}]*\}")


class Unreachable(Exception):
    """Prometheus could not be reached at all (connection refused, DNS, timeout)."""


def redact_url(url: str) -> str:
    """`url` without its user and password (`http://***@host:9090/`), and without a query string.

    The one spelling of the Prometheus URL in statuses, Events and logs: credentials never leave
    the operator's configuration.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = ("***@" if parts.username is not None or parts.password is not None else "") + host
    if port is not None:
        netloc += f":{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def rfc3339(moment: datetime) -> str:
    """`2026-01-01T00:00:00Z`: the timestamp format of Kubernetes status fields."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(moment: datetime) -> str:
    """`2026-01-01T00:00:00.123Z`: milliseconds, for times compared with scrapes a second apart."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_result(result: Any) -> analysis.Measurement:
    """One `data.result` of an instant query as a measurement (see the module docstring)."""
    if isinstance(result, list) and not result:
        return analysis.Measurement(None)
    if _is_sample(result):
        return _number(result[1])  # a scalar result is a bare [timestamp, "value"] pair
    if isinstance(result, list) and all(isinstance(item, dict) for item in result):
        if any("values" in item for item in result):
            return analysis.Measurement(error="the query returned a range vector; a check needs an instant value")
        if len(result) > 1:
            # Never their labels: a status is readable by the tenant, the series may not be its own.
            return analysis.Measurement(
                error=f"the query returned {len(result)} series; a check needs exactly one: "
                "aggregate it with sum, max or avg"
            )
        sample = result[0].get("value")
        if _is_sample(sample):
            return _number(sample[1])
    return analysis.Measurement(error=f"unexpected query result of type {type(result).__name__}")


def _is_sample(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], int | float)


def _number(text: Any) -> analysis.Measurement:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return analysis.Measurement(error=f"the query returned {text!r}, not a number")
    return analysis.Measurement(None if math.isnan(value) else value)


def _api_error(exc: PrometheusApiClientException) -> analysis.Measurement:
    """Prometheus's own words (`errorType: error`) from the exception of a non-200 response.

    A refusal of prom-label-proxy is marked `refused`. Label sets in the message of an error other
    than a parse error (`bad_data`, which quotes the query as written) are cut out: an execution
    error ("found duplicate series ...") quotes series Prometheus holds.
    """
    text = str(exc)
    status = HTTP_STATUS.search(text)
    prefix = f"HTTP {status.group(1)}" if status else "Prometheus error"
    body = re.search(r"\{.*\}", text)
    if body:
        try:
            payload = json.loads(body.group(0).encode().decode("unicode_escape"))
        except ValueError:
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            kind = str(payload.get("errorType", "error"))
            message = str(payload["error"])[:500]
            if kind == LABEL_PROXY_ERROR:
                return analysis.Measurement(error=f"refused by the namespace enforcer: {message}", refused=True)
            if kind != "bad_data":
                message = LABEL_SET.sub("{...}", message)
            return analysis.Measurement(error=f"{prefix}: {kind}: {message}")
    detail = HTTP_STATUS.sub("", text).strip(" ()") if status else text
    if len(detail) >= 3 and detail[:2] in {"b'", 'b"'} and detail[-1] == detail[1]:
        detail = detail[2:-1]  # the exception carries repr(bytes) of the body
    return analysis.Measurement(error=f"{prefix}: {LABEL_SET.sub('{...}', detail)[:300] or 'no body'}")


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error (`[Errno 111] Connection refused`), not its whole chain."""
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return errno.group(0) if errno else f"{type(exc).__name__}: {str(exc)[:200]}"


class Prometheus:
    """A Prometheus HTTP API endpoint, queried with short timeouts and one retry.

    `namespace_param`: the URL is a prom-label-proxy taking the tenant's namespace in this query
    parameter (see the module docstring); a query without a namespace is then never sent.
    `bearer_token` / `basic_auth`: credentials sent in the Authorization header (the chart reads
    them from a Secret), never shown.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retries: int = DEFAULT_RETRIES,
        headers: dict[str, str] | None = None,
        namespace_param: str | None = None,
        time_limit_seconds: float = DEFAULT_TIME_LIMIT_SECONDS,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.shown_url = redact_url(self.url)
        self.namespace_param = namespace_param
        self.timeout_seconds = timeout_seconds
        self.time_limit_seconds = time_limit_seconds
        headers = dict(headers or {})
        if bearer_token:
            headers["Authorization"] = f"Bearer {bearer_token}"
        retry = Retry(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,  # the last response reaches the caller, with Prometheus's message
        )
        self._client = PrometheusConnect(
            # requests takes float seconds; the library's hints say int
            url=self.url,
            headers=headers,
            retry=retry,
            timeout=cast(int, timeout_seconds),
            auth=cast(tuple[str, str], basic_auth),
        )

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def query(self, promql: str, *, namespace: str | None = None, timeout: float | None = None) -> analysis.Measurement:
        """Run one instant query for a tenant's `namespace`; raise `Unreachable` only when the
        server cannot be reached. `timeout`: this query's, at most the client's own."""
        params: dict[str, str] = {}
        if self.namespace_param is not None:
            if not namespace:
                # never unconfined: the proxy would refuse it anyway, this says why
                return analysis.Measurement(error="no namespace to confine the query to", refused=True)
            params[self.namespace_param] = namespace
        limit = self.timeout_seconds if timeout is None else min(timeout, self.timeout_seconds)
        try:
            result = self._client.custom_query(query=promql, params=params, timeout=cast(int, limit))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(f"Prometheus at {self.shown_url} is unreachable: {_reason(exc)}") from exc
        except requests.RequestException as exc:
            return analysis.Measurement(error=f"request to Prometheus failed: {type(exc).__name__}")
        except PrometheusApiClientException as exc:
            return _api_error(exc)
        except (ValueError, KeyError, TypeError) as exc:  # a 200 that is not the Prometheus API
            return analysis.Measurement(
                error=f"not a Prometheus API response from {self.shown_url}: {type(exc).__name__}"
            )
        return parse_result(result)

    def measure(
        self, queries: list[str], *, namespace: str | None = None, deadline: float | None = None
    ) -> dict[str, analysis.Measurement]:
        """Run every query; once the server is unreachable, the rest share that error untried.

        `deadline` (monotonic): the queries not finished by then are not sent (an error each).
        """
        measured: dict[str, analysis.Measurement] = {}
        unreachable = ""
        for promql in queries:
            if unreachable:
                measured[promql] = analysis.Measurement(error=unreachable)
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                limit = analysis.number(self.time_limit_seconds)
                measured[promql] = analysis.Measurement(
                    error=f"not run: the analysis used up its time limit of {limit} s"
                )
                continue
            try:
                measured[promql] = self.query(promql, namespace=namespace, timeout=left)
            except Unreachable as exc:
                unreachable = str(exc)
                measured[promql] = analysis.Measurement(error=unreachable)
        return measured

    def analyse(
        self, plan: analysis.AnalysisPlan, *, weight: int, now: datetime | None = None, namespace: str | None = None
    ) -> models.Analysis:
        """Run the queries of `plan` for `namespace` and judge them into one `Analysis` at `weight`."""
        started = time.monotonic()
        moment = now or datetime.now(UTC)
        measured = self.measure(plan.queries(), namespace=namespace, deadline=started + self.time_limit_seconds)
        # to the millisecond: when the queries ran, against scrapes a second apart (bench/canary.py
        # tells the fault's age at the analysis from it)
        result = analysis.judge(plan, measured, time=rfc3339_ms(moment), weight=weight)
        logger.info(
            "canary analysis",
            prometheus=self.shown_url,
            namespace=namespace,
            weight=weight,
            verdict=result.verdict,
            checks={check.name: check.verdict for check in result.checks},
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    async def analyse_async(
        self, plan: analysis.AnalysisPlan, *, weight: int, now: datetime | None = None, namespace: str | None = None
    ) -> models.Analysis:
        """`analyse` in a worker thread, so an event loop (kopf) is never blocked by the HTTP calls."""
        return await asyncio.to_thread(self.analyse, plan, weight=weight, now=now, namespace=namespace)

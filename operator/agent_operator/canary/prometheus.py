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
query. The client is synchronous (requests); `analyse_async` runs it in a thread for kopf.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

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


class Unreachable(Exception):
    """Prometheus could not be reached at all (connection refused, DNS, timeout)."""


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
            labels = ", ".join(json.dumps(item.get("metric", {}), sort_keys=True) for item in result[:3])
            return analysis.Measurement(
                error=f"the query returned {len(result)} series ({labels}...); a check needs exactly one: "
                "aggregate it with sum, max or avg"
            )
        sample = result[0].get("value")
        if _is_sample(sample):
            return _number(sample[1])
    return analysis.Measurement(error=f"unexpected query result: {str(result)[:200]}")


def _is_sample(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], int | float)


def _number(text: Any) -> analysis.Measurement:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return analysis.Measurement(error=f"the query returned {text!r}, not a number")
    return analysis.Measurement(None if math.isnan(value) else value)


def _api_error(exc: PrometheusApiClientException) -> str:
    """Prometheus's own words (`errorType: error`) from the exception of a non-200 response."""
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
            return f"{prefix}: {payload.get('errorType', 'error')}: {payload['error']}"
    detail = HTTP_STATUS.sub("", text).strip(" ()") if status else text
    if len(detail) >= 3 and detail[:2] in {"b'", 'b"'} and detail[-1] == detail[1]:
        detail = detail[2:-1]  # the exception carries repr(bytes) of the body
    return f"{prefix}: {detail[:300] or 'no body'}"


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error (`[Errno 111] Connection refused`), not its whole chain."""
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return errno.group(0) if errno else f"{type(exc).__name__}: {str(exc)[:200]}"


class Prometheus:
    """A Prometheus HTTP API endpoint, queried with short timeouts and one retry."""

    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        retries: int = DEFAULT_RETRIES,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        retry = Retry(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            raise_on_status=False,  # the last response reaches the caller, with Prometheus's message
        )
        self._client = PrometheusConnect(
            url=self.url, headers=dict(headers or {}), retry=retry, timeout=timeout_seconds
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

    def query(self, promql: str) -> analysis.Measurement:
        """Run one instant query; raise `Unreachable` only when the server cannot be reached."""
        try:
            result = self._client.custom_query(query=promql)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Unreachable(f"Prometheus at {self.url} is unreachable: {_reason(exc)}") from exc
        except requests.RequestException as exc:
            return analysis.Measurement(error=f"request to Prometheus failed: {type(exc).__name__}: {exc}")
        except PrometheusApiClientException as exc:
            return analysis.Measurement(error=_api_error(exc))
        except (ValueError, KeyError, TypeError) as exc:  # a 200 that is not the Prometheus API
            return analysis.Measurement(error=f"not a Prometheus API response from {self.url}: {exc!r}")
        return parse_result(result)

    def measure(self, queries: list[str]) -> dict[str, analysis.Measurement]:
        """Run every query; once the server is unreachable, the rest share that error untried."""
        measured: dict[str, analysis.Measurement] = {}
        unreachable = ""
        for promql in queries:
            if unreachable:
                measured[promql] = analysis.Measurement(error=unreachable)
                continue
            try:
                measured[promql] = self.query(promql)
            except Unreachable as exc:
                unreachable = str(exc)
                measured[promql] = analysis.Measurement(error=unreachable)
        return measured

    def analyse(self, plan: analysis.AnalysisPlan, *, weight: int, now: datetime | None = None) -> models.Analysis:
        """Run the queries of `plan` and judge them into one `Analysis` at `weight`."""
        started = time.monotonic()
        moment = now or datetime.now(UTC)
        # to the millisecond: when the queries ran, against scrapes a second apart (bench/canary.py
        # tells the fault's age at the analysis from it)
        result = analysis.judge(plan, self.measure(plan.queries()), time=rfc3339_ms(moment), weight=weight)
        logger.info(
            "canary analysis",
            prometheus=self.url,
            weight=weight,
            verdict=result.verdict,
            checks={check.name: check.verdict for check in result.checks},
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    async def analyse_async(
        self, plan: analysis.AnalysisPlan, *, weight: int, now: datetime | None = None
    ) -> models.Analysis:
        """`analyse` in a worker thread, so an event loop (kopf) is never blocked by the HTTP calls."""
        return await asyncio.to_thread(self.analyse, plan, weight=weight, now=now)

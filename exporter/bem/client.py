"""Async client of bem's Calls API (v3, and v2 for legacy accounts).

Every request goes through one place (`_get`) that applies the concurrency and rate limits,
retries connect errors, 429 and 5xx with jittered exponential backoff (honouring
`Retry-After`), and reports each attempt to the observer. Errors raised from here name the
endpoint and status, never the key, a URL's query or a body.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar
from urllib.parse import quote

import httpx

from exporter import __version__
from exporter.bem.decode import CallPage, DecodeError, decode_call_page, decode_trace, decode_v2_trace
from exporter.bem.http import AiohttpClient
from exporter.bem.models import Trace
from exporter.config import ApiSettings
from exporter.pipeline import NullObserver, Observer

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
MAX_ATTEMPTS = 5
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 120.0

T = TypeVar("T")


class ApiError(Exception):
    """A request to bem that failed for good (after retries, or not retryable)."""

    def __init__(self, endpoint: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Parameters of `GET /v{2,3}/calls`; arrays are sent comma-separated."""

    limit: int = MAX_PAGE_SIZE
    call_ids: Sequence[str] = ()
    statuses: Sequence[str] = ()
    workflow_names: Sequence[str] = ()
    workflow_ids: Sequence[str] = ()
    reference_ids: Sequence[str] = ()
    call_types: Sequence[str] = ()
    function_ids: Sequence[str] = ()
    function_names: Sequence[str] = ()
    reference_id_substring: str | None = None
    sort_order: str = "asc"
    starting_after: str | None = None
    ending_before: str | None = None

    def params(self) -> dict[str, str]:
        params = {"limit": str(self.limit), "sortOrder": self.sort_order}
        arrays = {
            "callIDs": self.call_ids,
            "statuses": self.statuses,
            "workflowNames": self.workflow_names,
            "workflowIDs": self.workflow_ids,
            "referenceIDs": self.reference_ids,
            "callTypes": self.call_types,
            "functionIDs": self.function_ids,
            "functionNames": self.function_names,
        }
        params.update({name: ",".join(values) for name, values in arrays.items() if values})
        optional = {
            "referenceIDSubstring": self.reference_id_substring,
            "startingAfter": self.starting_after,
            "endingBefore": self.ending_before,
        }
        params.update({name: value for name, value in optional.items() if value})
        return params


class RateLimiter:
    """At most `rate` request starts per second, smoothed (a token bucket of one)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            await asyncio.sleep(wait)


class BemClient:
    """One per process. Use as `async with BemClient(settings) as client:`."""

    def __init__(
        self,
        settings: ApiSettings,
        observer: Observer | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self._settings = settings
        self._observer = observer or NullObserver()
        self._max_attempts = max_attempts
        self._limit = asyncio.Semaphore(settings.max_concurrency)
        self._rate = RateLimiter(settings.max_rps)
        headers = {"user-agent": f"bem-exporter/{__version__}", "accept": "application/json"}
        if settings.key is not None:
            headers["x-api-key"] = settings.key.get()
        # aiohttp rather than httpx: httpx costs ~8x the CPU per request (docs/performance.md).
        self._http = AiohttpClient(
            settings.url + "/",
            headers,
            timeout=settings.timeout,
            connect_timeout=min(settings.timeout, 10.0),
            max_connections=settings.max_concurrency,
        )
        self._version = settings.version

    async def __aenter__(self) -> BemClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def version(self) -> str:
        return self._version

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint templates this client requests (the `endpoint` label of its metrics)."""
        if self._version == "v2":
            return ("/v2/calls", "/v2/calls/{callID}")
        return ("/v3/calls", "/v3/calls/{callID}/trace")

    async def list_calls(self, query: ListQuery, *, attempts: int | None = None) -> CallPage:
        """One page of calls. `attempts` overrides the number of tries (1: a single probe)."""
        endpoint = f"/{self._version}/calls"
        page = await self._get(endpoint, f"{self._version}/calls", query.params(), decode_call_page, attempts)
        for _ in range(page.rejected):
            self._observer.rejected_record("call")
        if page.rejected:
            # Counted (bem_exporter_rejected_records_total) and summed in the cycle's log line.
            log.debug("skipped undecodable call records", extra={"endpoint": endpoint, "count": page.rejected})
        return page

    async def get_trace(self, call_id: str) -> Trace:
        """The function calls and events of one call (v3 trace endpoint, or v2's embedded trace)."""
        if self._version == "v2":
            endpoint = "/v2/calls/{callID}"
            trace = await self._get(endpoint, f"v2/calls/{_path_segment(call_id)}", None, decode_v2_trace)
        else:
            endpoint = "/v3/calls/{callID}/trace"
            trace = await self._get(endpoint, f"v3/calls/{_path_segment(call_id)}/trace", None, decode_trace)
        for _ in range(trace.rejected):
            self._observer.rejected_record("trace_record")
        return trace

    async def _get(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str] | None,
        decode: Callable[[bytes], T],
        attempts: int | None = None,
    ) -> T:
        """GET and decode, with limits and retries. `endpoint` is the template used in metrics
        and errors. A body that is not the expected JSON (truncated, garbled) is retried too."""
        delay = BACKOFF_BASE
        max_attempts = attempts or self._max_attempts
        for attempt in range(1, max_attempts + 1):
            retry_after: float | None = None
            async with self._limit:
                await self._rate.acquire()
                started = time.monotonic()
                try:
                    response = await self._http.get(path, params=params)
                    body = await response.aread()
                except httpx.TransportError as error:
                    self._observer.api_request(endpoint, "error", time.monotonic() - started)
                    reason = _transport_reason(error)
                    if attempt == max_attempts:
                        raise ApiError(endpoint, f"{reason} (after {attempt} attempts)") from None
                else:
                    status = response.status_code
                    self._observer.api_request(endpoint, str(status), time.monotonic() - started)
                    if 200 <= status < 300:
                        try:
                            return decode(body)
                        except DecodeError as error:
                            self._observer.rejected_record("response")
                            if attempt == max_attempts:
                                raise ApiError(endpoint, f"{error} (after {attempt} attempts)", status) from None
                            log.debug("malformed response, retrying", extra={"endpoint": endpoint})
                    if status != 429 and status < 500:
                        raise ApiError(endpoint, _client_error(status), status)
                    if attempt == max_attempts:
                        raise ApiError(endpoint, f"HTTP {status} (after {attempt} attempts)", status)
                    retry_after = _retry_after(response.headers.get("retry-after"))
            # Sleep outside the concurrency slot so other requests can go on meanwhile.
            wait = retry_after if retry_after is not None else random.uniform(0, delay)
            delay = min(delay * 2, BACKOFF_CAP)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def _path_segment(value: str) -> str:
    return quote(value, safe="")


def _transport_reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return "cannot connect"
    return f"transport error ({type(error).__name__})"


def _client_error(status: int) -> str:
    if status == 401:
        return "HTTP 401: the API key was rejected (check BEM_API_KEY)"
    if status == 403:
        return "HTTP 403: the API key may not read calls"
    if status == 404:
        return "HTTP 404: not found (check BEM_API_URL and BEM_API_VERSION)"
    return f"HTTP {status}: request rejected"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)

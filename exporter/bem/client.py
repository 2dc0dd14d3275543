"""Async client of bem's Calls API (v3, and v2 for legacy accounts), over `httpx.AsyncClient`.

Every request goes through one place (`_request`) that applies the concurrency limit and the
adaptive request rate (`exporter.bem.ratelimit`, told of each 429 and success),
bounds the whole request (connect, headers and body) by one timeout and the body by a size
limit, retries connect errors, timeouts, 429, 5xx and malformed bodies with the exporter's one
backoff (honouring `Retry-After`, capped), and reports each attempt through the hooks it is
given. It knows nothing of settings or of what reads the records. Errors raised from here name
the endpoint and status, never the key, a URL's query or a body.

HTTP is httpx's, as its users know it: one `AsyncClient` with a pool of `max_concurrency`
keep-alive connections (`httpx.Limits`), `httpx.Timeout`, the body streamed for the size bound
(`exporter.bem.answer`), and proxies, `NO_PROXY` and `SSL_CERT_FILE` from the environment
(`trust_env`). OpenTelemetry's httpx instrumentation sees its requests. httpx's event hooks
are not used for the self-metrics: an attempt is reported with the time to its last body byte,
and a transport failure, which no hook sees, as `error`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Final, Literal, TypeVar
from urllib.parse import quote

import httpx

from exporter import __version__
from exporter.backoff import Backoff
from exporter.bem.answer import Answer, TooLargeError, read_answer
from exporter.bem.create import (
    V2_ENDPOINT,
    V3_ENDPOINT,
    CreatedCall,
    CreateError,
    CreateRequest,
    decode_created,
    refusal,
    request_body,
)
from exporter.bem.decode import CallPage, DecodeError, decode_call_page, decode_trace, decode_v2_trace
from exporter.bem.models import Trace
from exporter.bem.ratelimit import AdaptiveRate, RateDecision, Ticket

log = logging.getLogger(__name__)

ApiVersion = Literal["v3", "v2"]

MAX_PAGE_SIZE = 100
MAX_ATTEMPTS = 5
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""Largest response body read, counted after gzip/deflate/brotli decoding: a real page of 100
calls is ~100 kB and the largest real traces a few MB; past this the request fails (not
retried: the same answer would come again) and `too_large` is reported."""
CONNECT_TIMEOUT_CAP = 10.0
"""Longest wait for a connection (the whole-request timeout bounds it too)."""
DEFAULT_RETRY_AFTER_CAP = 120.0
"""Longest wait a `Retry-After` header can impose, seconds; a longer one waits this long."""
LONG_THROTTLE = 30.0
"""A `Retry-After` asking for at least this many seconds is logged as a warning."""

T = TypeVar("T")
ErrorKind = Literal["unreachable", "rejected", "malformed", "too_large"]


class ApiError(Exception):
    """A request to bem that failed for good (after retries, or not retryable).

    `kind` says what failed: no answer (`unreachable`), an HTTP error status (`rejected`), an
    answer that is not the expected JSON (`malformed`) or larger than the limit (`too_large`)."""

    def __init__(
        self, endpoint: str, message: str, status: int | None = None, *, kind: ErrorKind | None = None
    ) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.status = status
        self.kind: ErrorKind = kind or ("unreachable" if status is None else "rejected")


def _nothing(*_: object) -> None:
    return None


@dataclass(frozen=True, slots=True)
class ClientHooks:
    """What the client reports about itself; each hook defaults to doing nothing."""

    request: Callable[[str, str, float], None] = _nothing
    """Each attempt: endpoint template, status code or `error`, seconds."""
    rejected: Callable[[str, int], None] = _nothing
    """Records skipped as undecodable: `call`, `trace_record` or `response`, and how many."""
    too_large: Callable[[str], None] = _nothing
    """A response past the size limit: the endpoint template."""
    throttled: Callable[[float], None] = _nothing
    """A wait the API imposed with `Retry-After`, seconds (after the cap)."""
    throttle_cleared: Callable[[], None] = _nothing
    """The first request start after that wait: the API is no longer throttling."""
    rate: Callable[[float], None] = _nothing
    """The request rate now allowed (requests per second), each time it changes."""
    rate_decision: Callable[[RateDecision], None] = _nothing
    """Each decision of the adaptive rate (a cut, a verdict, a probe), with its reason."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Parameters of `GET /v{2,3}/calls` the exporter uses; arrays are sent comma-separated."""

    limit: int = MAX_PAGE_SIZE
    call_ids: Sequence[str] = ()
    workflow_names: Sequence[str] = ()
    sort_order: Literal["asc", "desc"] = "asc"
    starting_after: str | None = None

    def params(self) -> dict[str, str]:
        params = {"limit": str(self.limit), "sortOrder": self.sort_order}
        if self.call_ids:
            params["callIDs"] = ",".join(self.call_ids)
        if self.workflow_names:
            params["workflowNames"] = ",".join(self.workflow_names)
        if self.starting_after:
            params["startingAfter"] = self.starting_after
        return params


def _client_error(status: int) -> str:
    if status == 401:
        return "HTTP 401: the API key was rejected (check BEM_API_KEY)"
    if status == 403:
        return "HTTP 403: the API key may not read calls"
    if status == 404:
        return "HTTP 404: not found (check BEM_API_URL and BEM_API_VERSION)"
    return f"HTTP {status}: request rejected"


_JSON_BODY: Final = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class _Call:
    """One request as `_request` sends it: `endpoint` is the template used in metrics and errors."""

    endpoint: str
    path: str
    params: dict[str, str] | None = None
    body: bytes | None = None
    """A JSON body, POSTed; None: a GET."""
    refused: Callable[[int], str] = field(default=_client_error)
    """What a final 4xx answer means, for the error message."""

    @property
    def method(self) -> Literal["GET", "POST"]:
        return "GET" if self.body is None else "POST"

    @property
    def headers(self) -> dict[str, str] | None:
        return None if self.body is None else _JSON_BODY


class BemClient:
    """One per process. Use as `async with BemClient(url, key, "v3", ...) as client:`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        version: ApiVersion,
        *,
        timeout: float,
        max_concurrency: int,
        max_rps: float,
        max_attempts: int = MAX_ATTEMPTS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        hooks: ClientHooks | None = None,
    ) -> None:
        self._version: ApiVersion = version
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_bytes = max_response_bytes
        self._retry_after_cap = retry_after_cap
        self._hooks = hooks or ClientHooks()
        self._limit = asyncio.Semaphore(max_concurrency)
        self._rate = AdaptiveRate(max_rps, decided=self._hooks.rate_decision)
        self._shown_rate = 0.0
        self._throttle_shown = False
        headers = {"user-agent": f"bem-exporter/{__version__}", "accept": "application/json"}
        if api_key is not None:
            headers["x-api-key"] = api_key
        self._http = httpx.AsyncClient(
            base_url=base_url,  # httpx keeps a path prefix: it ends the base with a slash
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_CAP)),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    async def __aenter__(self) -> BemClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint templates this client requests (the `endpoint` label of its metrics)."""
        if self._version == "v2":
            return ("/v2/calls", "/v2/calls/{callID}")
        return ("/v3/calls", "/v3/calls/{callID}/trace")

    async def list_calls(self, query: ListQuery, *, attempts: int | None = None) -> CallPage:
        """One page of calls. `attempts` overrides the number of tries (1: a single probe)."""
        endpoint = f"/{self._version}/calls"
        page = await self.get(endpoint, f"{self._version}/calls", query.params(), decode_call_page, attempts)
        if page.rejected:
            self._hooks.rejected("call", page.rejected)
            # Counted (bem_exporter_rejected_records_total) and summed in the cycle's log line.
            log.debug("skipped undecodable call records", extra={"endpoint": endpoint, "count": page.rejected})
        return page

    async def get_trace(self, call_id: str) -> Trace:
        """The function calls and events of one call (v3 trace endpoint, or v2's embedded trace)."""
        if self._version == "v2":
            endpoint = "/v2/calls/{callID}"
            trace = await self.get(endpoint, f"v2/calls/{_path_segment(call_id)}", None, decode_v2_trace)
        else:
            endpoint = "/v3/calls/{callID}/trace"
            trace = await self.get(endpoint, f"v3/calls/{_path_segment(call_id)}/trace", None, decode_trace)
        if trace.rejected:
            self._hooks.rejected("trace_record", trace.rejected)
            log.debug("skipped undecodable trace records", extra={"call_id": call_id, "count": trace.rejected})
        return trace

    async def create_call(self, request: CreateRequest) -> CreatedCall:
        """Create one call (the canary's): `POST /v3/workflows/{workflowName}/call`, or
        `POST /v2/calls` on v2. Limited, retried and reported like every request; retrying is
        safe, as bem answers a `callReferenceID` it has seen with the call it already created.
        Raises CreateError naming the endpoint and the status, never the document."""
        path, body = request_body(request, self._version)
        endpoint = V2_ENDPOINT if self._version == "v2" else V3_ENDPOINT

        def decode(answer: bytes) -> CreatedCall:
            return decode_created(answer, self._version)

        try:
            return await self.post(endpoint, path, body, decode, refusal)
        except ApiError as error:
            raise CreateError(str(error), error.status) from None

    async def get(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str] | None,
        decode: Callable[[bytes], T],
        attempts: int | None = None,
    ) -> T:
        """`GET path` (relative to the base URL, e.g. `v3/functions/metrics`), limited, paced,
        retried and reported like every request; `endpoint` is the template that names it in
        metrics and errors. `decode` raises `DecodeError` for a body it cannot read."""
        return await self._request(_Call(endpoint, path, params), decode, attempts)

    async def post(
        self, endpoint: str, path: str, body: bytes, decode: Callable[[bytes], T], refused: Callable[[int], str]
    ) -> T:
        """`POST path` with a JSON `body`, as `get` does it; `refused(status)` says what a final
        4xx answer means. Retried like any request: only for requests safe to repeat."""
        return await self._request(_Call(endpoint, path, body=body, refused=refused), decode)

    async def _request(self, call: _Call, decode: Callable[[bytes], T], attempts: int | None = None) -> T:
        """Send and decode, with limits and retries. A body that is not the expected JSON
        (truncated, garbled) is retried too."""
        backoff = Backoff(BACKOFF_BASE, BACKOFF_CAP)
        max_attempts = attempts or self._max_attempts
        for attempt in range(1, max_attempts + 1):
            last = attempt == max_attempts
            async with self._limit:
                ticket = await self._start()
                answer = await self._attempt(call, last, attempt)
                self._pace(ticket, answer)
            if answer is not None:
                result = self._decoded(call, answer, decode, last, attempt)
                if result is not None:
                    return result[0]
            # Sleep outside the concurrency slot so other requests can go on meanwhile.
            await asyncio.sleep(self._wait(answer, backoff))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _start(self) -> Ticket:
        """Wait for the adaptive rate to let a request start."""
        ticket = await self._rate.acquire()
        if self._throttle_shown and self._rate.paused_for == 0:
            self._throttle_shown = False
            self._hooks.throttle_cleared()
        return ticket

    def _pace(self, ticket: Ticket, answer: Answer | None) -> None:
        """Tell the adaptive rate how the request started at `ticket` went. Only a 429 and a
        success say something about the rate; a 5xx or a dropped connection is no overload
        signal bem is known to send."""
        if answer is not None and answer.status == 429:
            asked = retry_after_seconds(answer.retry_after)
            self._rate.throttled(ticket, None if asked is None else min(asked, self._retry_after_cap))
        elif answer is not None and 200 <= answer.status < 300:
            self._rate.succeeded(ticket)
        if self._rate.rate != self._shown_rate:
            self._shown_rate = self._rate.rate
            self._hooks.rate(self._shown_rate)

    async def _attempt(self, call: _Call, last: bool, attempt: int) -> Answer | None:
        """One request: its answer, or None after a transport failure worth another try."""
        endpoint = call.endpoint
        started = time.monotonic()
        try:
            answer = await self._send(call)
        except (httpx.TransportError, TimeoutError) as error:
            self._hooks.request(endpoint, "error", time.monotonic() - started)
            if last:
                raise ApiError(endpoint, f"{_transport_reason(error)} ({_after(attempt)})") from None
            return None
        except TooLargeError as error:
            self._hooks.request(endpoint, str(error.status), time.monotonic() - started)
            self._hooks.too_large(endpoint)
            log.warning("bem API response too large", extra={"endpoint": endpoint, "limit_bytes": self._max_bytes})
            message = f"response larger than {self._max_bytes} bytes"
            raise ApiError(endpoint, message, error.status, kind="too_large") from None
        self._hooks.request(endpoint, str(answer.status), time.monotonic() - started)
        return answer

    async def _send(self, call: _Call) -> Answer:
        """The whole exchange, body included, bounded by the timeout: a server that trickles
        one byte at a time cannot hold a request open past it."""
        async with (
            asyncio.timeout(self._timeout),
            self._http.stream(
                call.method, call.path, params=call.params, content=call.body, headers=call.headers
            ) as response,
        ):
            return await read_answer(response, self._max_bytes)

    def _decoded(
        self, call: _Call, answer: Answer, decode: Callable[[bytes], T], last: bool, attempt: int
    ) -> tuple[T] | None:
        """The decoded body of a 2xx answer; None for an answer worth another try."""
        endpoint, status = call.endpoint, answer.status
        if 200 <= status < 300:
            try:
                return (decode(answer.readable()),)
            except DecodeError as error:
                self._hooks.rejected("response", 1)
                if last:
                    raise ApiError(endpoint, f"{error} ({_after(attempt)})", status, kind="malformed") from None
                log.debug("malformed response, retrying", extra={"endpoint": endpoint})
                return None
        if status != 429 and status < 500:
            raise ApiError(endpoint, call.refused(status), status)
        if last:
            raise ApiError(endpoint, f"HTTP {status} ({_after(attempt)})", status)
        return None

    def _wait(self, answer: Answer | None, backoff: Backoff) -> float:
        """Seconds before the next try: what a 429/5xx's `Retry-After` asks (capped), or the backoff."""
        jittered = backoff.next()
        if answer is None or 200 <= answer.status < 300:
            return jittered
        asked = retry_after_seconds(answer.retry_after)
        if asked is None:
            return jittered
        wait = min(asked, self._retry_after_cap)
        if asked >= LONG_THROTTLE:
            log.warning(
                "bem API throttles requests with a long Retry-After",
                extra={"retry_after": round(asked, 1), "waiting": round(wait, 1), "cap": self._retry_after_cap},
            )
        self._hooks.throttled(wait)
        self._throttle_shown = True
        return wait


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP date), uncapped; None
    when absent or unusable: not a number or date, negative, in the past, not finite."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return seconds if 0.0 < seconds < float("inf") else None


def _path_segment(value: str) -> str:
    return quote(value, safe="")


def _transport_reason(error: Exception) -> str:
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return "cannot connect"
    return f"transport error ({type(error).__name__})"


def _after(attempts: int) -> str:
    return f"after {attempts} attempt{'' if attempts == 1 else 's'}"

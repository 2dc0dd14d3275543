"""Encoded OTLP export requests onto the wire, through public interfaces only.

HTTP/protobuf is an httpx POST of the body (here); gRPC is grpcio's generic unary call of
`TraceService/Export` with bytes in and bytes out (`grpc_transport`). Both honour what the
SDK's exporters honoured: endpoint, headers, timeout, gzip compression, TLS (a CA file, a
client key and certificate), retries on retryable answers within the timeout, and for gRPC
short reconnect backoffs.

Each answer is classified for the sink: `accepted`; `unavailable` (keep the batch and retry
it in a later cycle); or `rejected`, the backend's verdict that this request's content is
invalid and will never be accepted (HTTP 400, 413, 422 and the other 4xx except 401, 403,
404, 407, 408 and 429; gRPC INVALID_ARGUMENT). Authentication and routing errors are
`unavailable`, not `rejected`: they say nothing of the spans, and isolating "bad" calls
under them would drop every call.
"""

from __future__ import annotations

import gzip
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import httpx

from exporter import __version__
from exporter.backoff import Backoff

log = logging.getLogger(__name__)

USER_AGENT = f"bem-exporter/{__version__}"

Verdict = Literal["accepted", "unavailable", "rejected"]
Compression = Literal["gzip", "none"]

_RETRY_HTTP = frozenset({408, 429, 502, 503, 504})
_NOT_ABOUT_CONTENT = frozenset({401, 403, 404, 407})


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    detail: str = ""
    """What the backend said, for logs: a status code or an exception's class, never a body."""
    retryable: bool = False
    """Worth another try within the same timeout (only for `unavailable`)."""


ACCEPTED = Outcome("accepted")


class Transport(Protocol):
    def send(self, body: bytes) -> Outcome:
        """One export request, retried within the timeout while the answer is retryable."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Where, how long, how: everything the transport needs, as plain values."""

    endpoint: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0
    insecure: bool = False
    """gRPC only: a plaintext channel."""
    compression: Compression = "none"
    certificate: Path | None = None
    client_key: Path | None = None
    client_certificate: Path | None = None


def options_from_env(
    env: Mapping[str, str], endpoint: str, headers: tuple[tuple[str, str], ...], timeout: float, insecure: bool
) -> TransportOptions:
    """`TransportOptions` with what the settings do not carry yet (compression, TLS files)
    read as the SDK read it: the signal-specific OTLP variable first, then the generic one.
    An unknown compression is ignored with a warning, as the specification asks."""

    def variable(suffix: str) -> str | None:
        value = env.get(f"OTEL_EXPORTER_OTLP_TRACES_{suffix}") or env.get(f"OTEL_EXPORTER_OTLP_{suffix}")
        return value.strip() if value and value.strip() else None

    def path(suffix: str) -> Path | None:
        value = variable(suffix)
        return Path(value) if value else None

    raw = (variable("COMPRESSION") or "none").lower()
    compression: Compression = "gzip" if raw == "gzip" else "none"
    if raw not in ("gzip", "none"):
        log.warning("OTEL_EXPORTER_OTLP_COMPRESSION: unsupported value, using none")
    return TransportOptions(
        endpoint=endpoint,
        headers=headers,
        timeout=timeout,
        insecure=insecure,
        compression=compression,
        certificate=path("CERTIFICATE"),
        client_key=path("CLIENT_KEY"),
        client_certificate=path("CLIENT_CERTIFICATE"),
    )


def make_transport(protocol: str, options: TransportOptions) -> Transport:
    if protocol == "grpc":
        # Imported only when used: grpcio costs start-up time and memory an HTTP user never needs.
        from exporter.traces.grpc_transport import GrpcTransport

        return GrpcTransport(options)
    return HttpTransport(options)


def with_retries(attempt: Callable[[float], Outcome], timeout: float) -> Outcome:
    """`attempt(seconds_left)` until it is not retryable or the next wait would pass the
    timeout (the SDK's rule): jittered, doubling waits from one second."""
    deadline = time.monotonic() + timeout
    backoff = Backoff(initial=1.0, cap=32.0)
    while True:
        outcome = attempt(max(deadline - time.monotonic(), 0.001))
        if not outcome.retryable:
            return outcome
        wait = backoff.next()
        if time.monotonic() + wait >= deadline:
            return outcome
        time.sleep(wait)


# ---------------------------------------------------------------------------------------------
# HTTP/protobuf
# ---------------------------------------------------------------------------------------------


class HttpTransport:
    """POSTs the request body to the endpoint with a synchronous httpx client (pooled)."""

    def __init__(self, options: TransportOptions) -> None:
        self._options = options
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT}
        headers.update(options.headers)
        if options.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        self._client = httpx.Client(
            headers=headers, verify=http_tls_context(options), timeout=options.timeout, follow_redirects=False
        )

    def send(self, body: bytes) -> Outcome:
        if self._options.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        return with_retries(lambda seconds_left: self._post(body, seconds_left), self._options.timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, body: bytes, seconds_left: float) -> Outcome:
        try:
            response = self._client.post(self._options.endpoint, content=body, timeout=seconds_left)
        except httpx.TimeoutException:
            return Outcome("unavailable", f"no answer within {self._options.timeout:g} s")
        except httpx.HTTPError as error:
            return Outcome("unavailable", type(error).__name__, retryable=True)
        return http_outcome(response.status_code)


def http_outcome(code: int) -> Outcome:
    if 200 <= code < 300:
        return ACCEPTED
    detail = f"HTTP {code}"
    if code in _RETRY_HTTP:
        return Outcome("unavailable", detail, retryable=True)
    if 400 <= code < 500 and code not in _NOT_ABOUT_CONTENT:
        return Outcome("rejected", detail)
    return Outcome("unavailable", detail)


def http_tls_context(options: TransportOptions) -> ssl.SSLContext:
    context = httpx.create_ssl_context()
    if options.certificate is not None:
        context.load_verify_locations(cafile=options.certificate)
    if options.client_certificate is not None:
        context.load_cert_chain(options.client_certificate, options.client_key)
    return context

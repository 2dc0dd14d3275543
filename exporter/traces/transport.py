"""Encoded OTLP export requests onto the wire, through public interfaces only.

HTTP/protobuf is an httpx POST of the body; gRPC is grpcio's generic unary call of
`TraceService/Export` with bytes in and bytes out (no serializers). Both honour what the
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
from urllib.parse import urlsplit

import grpc
import httpx

from exporter import __version__
from exporter.backoff import Backoff
from exporter.redact import redact_text

log = logging.getLogger(__name__)

USER_AGENT = f"bem-exporter/{__version__}"
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

Verdict = Literal["accepted", "unavailable", "rejected"]
Compression = Literal["gzip", "none"]

GRPC_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    # While a channel waits out its reconnect backoff, gRPC fails every call at once, and
    # that backoff grows to two minutes: a backend that came back would go on being reported
    # down. The channel is replaced after UNAVAILABLE, but the global subchannel pool would
    # hand the new channel the same backoff; a local pool connects afresh, and short, capped
    # backoffs keep the next poll cycle's export from landing inside one.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.primary_user_agent", USER_AGENT),
)

_RETRY_HTTP = frozenset({408, 429, 502, 503, 504})
_NOT_ABOUT_CONTENT = frozenset({401, 403, 404, 407})
_RETRY_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


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


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


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


# ---------------------------------------------------------------------------------------------
# gRPC
# ---------------------------------------------------------------------------------------------


class GrpcTransport:
    """Calls `TraceService/Export` with the encoded bytes; the channel is replaced after
    UNAVAILABLE so that a backend that came back is reached at once."""

    def __init__(self, options: TransportOptions) -> None:
        self._options = options
        # gRPC metadata keys must be lowercase; HTTP header names are case-insensitive anyway.
        self._metadata = tuple((key.strip().lower(), value) for key, value in options.headers)
        self._compression = grpc.Compression.Gzip if options.compression == "gzip" else grpc.Compression.NoCompression
        self._credentials = None if options.insecure else grpc_credentials(options)
        self._channel, self._export = self._open()

    def send(self, body: bytes) -> Outcome:
        return with_retries(lambda seconds_left: self._call(body, seconds_left), self._options.timeout)

    def close(self) -> None:
        self._channel.close()

    def _open(self) -> tuple[grpc.Channel, grpc.UnaryUnaryMultiCallable]:
        target = grpc_target(self._options.endpoint)
        if self._credentials is None:
            channel = grpc.insecure_channel(target, options=GRPC_CHANNEL_OPTIONS, compression=self._compression)
        else:
            channel = grpc.secure_channel(
                target, self._credentials, options=GRPC_CHANNEL_OPTIONS, compression=self._compression
            )
        return channel, channel.unary_unary(EXPORT_METHOD)  # no (de)serializers: bytes either way

    def _call(self, body: bytes, seconds_left: float) -> Outcome:
        try:
            self._export(body, timeout=seconds_left, metadata=self._metadata, compression=self._compression)
        except grpc.RpcError as error:
            return self._failed(error)
        return ACCEPTED

    def _failed(self, error: grpc.RpcError) -> Outcome:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        if code is grpc.StatusCode.UNAVAILABLE:
            self._channel.close()
            self._channel, self._export = self._open()
        details = error.details() if isinstance(error, grpc.Call) else None
        detail = redact_text(f"gRPC {code.name}: {details or ''}".rstrip(": "), limit=200)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return Outcome("unavailable", f"no answer within {self._options.timeout:g} s")
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return Outcome("rejected", detail)
        return Outcome("unavailable", detail, retryable=code in _RETRY_GRPC)


def grpc_target(endpoint: str) -> str:
    """`host:port` from the endpoint, as the SDK took it: a URL's authority (without
    userinfo), or the endpoint as given when it has none (`collector:4317`)."""
    netloc = urlsplit(endpoint).netloc
    return netloc.rpartition("@")[2] if netloc else endpoint


def grpc_credentials(options: TransportOptions) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(options.certificate),
        private_key=_read(options.client_key),
        certificate_chain=_read(options.client_certificate),
    )

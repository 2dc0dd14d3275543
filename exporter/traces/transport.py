"""Encoded OTLP export requests onto the wire, through public interfaces only.

HTTP/protobuf is an httpx POST of the body (`http_transport`); gRPC is grpcio's generic unary
call of `TraceService/Export` with bytes in and bytes out (`grpc_transport`). This module holds
what both share: the options, the verdicts and the retry rule. Both honour what the
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

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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

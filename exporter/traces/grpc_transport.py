"""OTLP over gRPC: grpcio's generic unary call of `TraceService/Export`, bytes in and out."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import grpc

from exporter.redact import redact_text
from exporter.traces.transport import ACCEPTED, USER_AGENT, Outcome, TransportOptions, with_retries

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

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


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None

"""The trace sink: finished calls -> spans -> OTLP (or the console, or nowhere).

`build_span_exporter` returns a `pipeline.SpanExporter`. The poller calls `export(batch)` in a
worker thread and keeps the batch to retry when it returns None, so this module buffers
nothing: a backend that is down costs one bounded attempt per poll cycle.

Bounded: the SDK's OTLP exporters (1.34 and later) stop retrying at their `timeout`, but
older releases back off for up to a minute, so each request also runs on a dedicated worker
thread that we stop waiting for shortly after the timeout. While such a stuck request is
still running, further exports fail fast instead of piling up threads.

Quiet: the SDK logs every failed batch. Those records are held back here and the sink logs
once when the backend goes down and once when it comes back. Neither the SDK's messages nor
ours carry payloads, and configured header values (which may hold vendor API keys) are
redacted from anything we log.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry.sdk.trace.export import SpanExportResult

from exporter.config import TraceSettings
from exporter.otlp import grpc_exporter_class, http_exporter_class
from exporter.pipeline import FinishedCall, Observer, SpanExporter
from exporter.spans import UNBUILDABLE, SpanBuilder, make_resource

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter as SdkSpanExporter

log = logging.getLogger(__name__)

MAX_ITEMS_PER_REQUEST = 4096
"""Spans plus span events per OTLP request: about 1 MB, well under the 4 MiB a collector's
gRPC receiver accepts by default."""

_GRACE_SECONDS = 1.0
"""How long past the timeout we wait for the SDK before calling the request stuck."""

GRPC_CHANNEL_OPTIONS = (
    # While a channel waits out its reconnect backoff, gRPC fails every call at once, and
    # that backoff grows to two minutes: a backend that came back would go on being reported
    # down. The SDK replaces its channel after UNAVAILABLE, but the global subchannel pool
    # would hand the new channel the same backoff; a local pool connects afresh, and short,
    # capped backoffs keep the next poll cycle's export from landing inside one.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
)

_SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
)


def build_span_exporter(settings: TraceSettings, observer: Observer) -> SpanExporter:
    """The sink for `settings.exporter`: `otlp`, `console` or `none`."""
    if settings.exporter == "none":
        return DroppingSpanExporter()
    builder = SpanBuilder(
        resource=make_resource(settings.service_name, settings.resource_attributes),
        error_messages=settings.error_messages,
        error_message_length=settings.error_message_length,
    )
    if settings.exporter == "console":
        return ConsoleSpanExporter(builder, observer)
    return OtlpSpanExporter(builder, settings, observer)


class Built:
    """The spans of a batch, and the trace anomalies met while building them."""

    __slots__ = ("anomalies", "spans")

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.anomalies: list[str] = []


def build_all(builder: SpanBuilder, batch: Sequence[FinishedCall]) -> Built:
    """Every span of the batch. A call that cannot be turned into spans (a bug) is logged,
    counted as the `unbuildable` anomaly and skipped: retrying would fail the same way, and
    it must not hold back the calls queued behind it."""
    built = Built()
    for finished in batch:
        try:
            spans = builder.build(finished, built.anomalies)
        except Exception as error:
            log.error("cannot build the spans of call %s: %s", finished.call.call_id, type(error).__name__)
            log.debug("span building failed", exc_info=True)
            built.anomalies.append(UNBUILDABLE)
            continue
        built.spans.extend(spans)
    return built


def report_anomalies(observer: Observer, built: Built) -> None:
    """Once per delivered call and kind: a batch retried during an outage is built again and
    must not count its anomalies again."""
    for kind in built.anomalies:
        observer.trace_anomaly(kind)


class DroppingSpanExporter:
    """`OTEL_TRACES_EXPORTER=none`: accepts every batch and sends nothing."""

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        return 0

    def shutdown(self) -> None:
        pass


class ConsoleSpanExporter:
    """`OTEL_TRACES_EXPORTER=console`: one JSON object per span and line on stdout."""

    def __init__(self, builder: SpanBuilder, observer: Observer) -> None:
        self._builder = builder
        self._observer = observer
        self._lock = threading.Lock()

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        built = build_all(self._builder, batch)
        text = "".join(span.to_json(indent=None) + "\n" for span in built.spans)
        try:
            with self._lock:
                # Looked up per call: stdout may have been replaced since start (tests, daemons).
                sys.stdout.write(text)
                sys.stdout.flush()
        except (OSError, ValueError) as error:
            log.warning("cannot write spans to stdout: %s", type(error).__name__)
            return None
        report_anomalies(self._observer, built)
        return len(built.spans)

    def shutdown(self) -> None:
        pass


class OtlpSpanExporter:
    """Spans over OTLP (gRPC or HTTP/protobuf) with the SDK's exporter."""

    def __init__(
        self,
        builder: SpanBuilder,
        settings: TraceSettings,
        observer: Observer,
        delegate: SdkSpanExporter | None = None,
    ) -> None:
        self._builder = builder
        self._observer = observer
        self._timeout = settings.timeout
        self._target = f"{safe_endpoint(settings.endpoint)} ({settings.protocol})"
        self._secrets = tuple(value for _, value in settings.headers if len(value) >= 4)
        self._delegate = delegate if delegate is not None else sdk_span_exporter(settings)
        self._quiet = _HeldBackSdkLogs()
        self._quiet.install()
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="otlp-export")
        self._in_flight: concurrent.futures.Future[bool] | None = None
        self._lock = threading.Lock()
        self._healthy: bool | None = None
        self._closed = False

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        if self._closed:
            return None
        built = build_all(self._builder, batch)
        if not built.spans:
            report_anomalies(self._observer, built)
            return 0
        with self._lock:
            # One export at a time: the state change log and the stuck-request guard rely on it.
            ok = self._deliver(built.spans)
            self._note(ok)
        if not ok:
            return None
        report_anomalies(self._observer, built)
        return len(built.spans)

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._delegate.shutdown()
        except Exception as error:
            log.debug("OTLP exporter shutdown: %s", type(error).__name__)
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._quiet.remove()

    def _deliver(self, spans: list[ReadableSpan]) -> bool:
        if self._closed:
            return False
        return all(self._send(chunk) for chunk in chunked(spans, MAX_ITEMS_PER_REQUEST))

    def _send(self, chunk: list[ReadableSpan]) -> bool:
        if self._in_flight is not None and not self._in_flight.done():
            return False  # an earlier request is stuck in the SDK: do not queue behind it
        try:
            future = self._worker.submit(self._send_now, chunk)
        except RuntimeError:  # the worker was shut down
            return False
        self._in_flight = future
        try:
            return future.result(timeout=self._timeout + _GRACE_SECONDS)
        except concurrent.futures.TimeoutError:
            self._quiet.last = f"no answer within {self._timeout:g} s"
            return False

    def _send_now(self, chunk: list[ReadableSpan]) -> bool:
        try:
            return self._delegate.export(chunk) is SpanExportResult.SUCCESS
        except Exception as error:  # the SDK catches its own; this is for the unexpected
            self._quiet.last = type(error).__name__
            return False

    def _note(self, ok: bool) -> None:
        """Log transitions only: a backend down for an hour is one warning, not hundreds."""
        if ok and self._healthy is False:
            log.info("OTLP trace export to %s recovered", self._target)
        elif not ok and self._healthy is not False:
            log.warning(
                "OTLP trace export to %s failing (%s); spans are kept and retried",
                self._target,
                self._redact(self._quiet.last or "no details"),
            )
        self._healthy = ok
        self._quiet.last = None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:300]


def sdk_span_exporter(settings: TraceSettings) -> SdkSpanExporter:
    """The SDK's OTLP exporter for `settings.protocol`, configured only from `settings`."""
    # gRPC metadata keys must be lowercase; HTTP header names are case-insensitive anyway.
    headers = {key.strip().lower(): value for key, value in settings.headers}
    # The SDK's exporters with our encoder in place of theirs (exporter/otlp.py: 6x cheaper).
    if settings.protocol == "grpc":
        GrpcExporter = grpc_exporter_class()  # noqa: N806
        return GrpcExporter(
            endpoint=settings.endpoint,
            insecure=grpc_insecure(settings),
            headers=tuple(headers.items()),
            timeout=settings.timeout,
            channel_options=GRPC_CHANNEL_OPTIONS,  # type: ignore[arg-type]  # the SDK's hint is too narrow
        )
    HttpExporter = http_exporter_class()  # noqa: N806
    return HttpExporter(endpoint=settings.endpoint, headers=headers, timeout=settings.timeout)


def grpc_insecure(settings: TraceSettings) -> bool:
    """Per the OTel spec the endpoint's scheme decides; `insecure` applies without one."""
    scheme = urlsplit(settings.endpoint).scheme.lower()
    if scheme == "https":
        return False
    if scheme == "http":
        return True
    return bool(settings.insecure)


def safe_endpoint(url: str) -> str:
    """The endpoint for logs: no credentials in the authority, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else host


def chunked(spans: list[ReadableSpan], max_items: int) -> Iterator[list[ReadableSpan]]:
    """Consecutive slices of at most `max_items` spans-plus-events each (at least one span)."""
    start, items = 0, 0
    for index, span in enumerate(spans):
        weight = 1 + len(span.events)
        if items and items + weight > max_items:
            yield spans[start:index]
            start, items = index, 0
        items += weight
    if start < len(spans):
        yield spans[start:]


class _HeldBackSdkLogs(logging.Filter):
    """Swallows the SDK exporters' per-batch warnings and errors, remembering the last one
    as the reason given in our own once-per-state-change message."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        try:
            self.last = record.getMessage()
        except Exception:
            self.last = record.msg if isinstance(record.msg, str) else None
        return False

    def install(self) -> None:
        for name in _SDK_LOGGERS:
            # First in line, ahead of the SDK's own duplicate filter, to see every message.
            logging.getLogger(name).filters.insert(0, self)

    def remove(self) -> None:
        for name in _SDK_LOGGERS:
            logging.getLogger(name).removeFilter(self)

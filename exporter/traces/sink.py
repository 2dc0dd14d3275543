"""The trace sink: finished calls -> spans -> OTLP (or the console, or nowhere).

`build_span_exporter` returns a `pipeline.SpanExporter`. Delivery calls `export(batch)` in a
worker thread and keeps the batch to retry when it returns None, so this module buffers
nothing: a backend that is down costs one bounded attempt per poll cycle.

The spans are encoded by `exporter.traces.otlp` and sent by `transport` (httpx or grpcio, public
interfaces only), in requests of at most `DEFAULT_MAX_EXPORT_BYTES`. A request the backend
rejects as invalid is bisected down to the call that poisons it, which is dropped, counted
(`spans_dropped`) and logged by call id, while every other call of the batch is delivered.

Bounded: each request runs on a dedicated worker thread that we stop waiting for shortly
after the timeout (a trickling backend cannot hold a cycle), and while it is still running
further exports fail fast instead of piling up threads.

Quiet: the sink logs once when the backend goes down and once when it comes back, never a
payload; configured header values (which may hold vendor API keys) and URLs are redacted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import ssl
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from exporter.config import TraceSettings
from exporter.ids import UNBUILDABLE
from exporter.pipeline import FinishedCall, Observer, SpanExporter
from exporter.redact import error_stack, error_text, redact_text, safe_url
from exporter.traces.http_transport import HttpTransport
from exporter.traces.otlp import SpanEncoder
from exporter.traces.spans import SpanBuilder, make_resource
from exporter.traces.transport import Outcome, Transport, TransportOptions, options_from_env

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("exporter.traces")  # the name operators filter on, as before the sink had a module

DEFAULT_MAX_EXPORT_BYTES = 3 * 1024 * 1024
"""Encoded bytes per OTLP export request at most (a single span larger than this goes alone):
below the 4 MiB a collector's gRPC receiver accepts by default, and far below the body limits
of HTTP receivers."""

_GRACE_SECONDS = 1.0
"""How long past the timeout we wait for a request before calling it stuck."""


def build_span_exporter(
    settings: TraceSettings, observer: Observer, max_request_bytes: int = DEFAULT_MAX_EXPORT_BYTES
) -> SpanExporter:
    """The sink for `settings.exporter`: `otlp`, `console` or `none`."""
    if settings.exporter == "none":
        return DroppingSpanExporter()
    builder = SpanBuilder(
        resource=make_resource(settings.service_name, settings.resource_attributes),
        error_messages=settings.error_messages,
        error_message_length=settings.error_message_length,
        genai_conventions=settings.genai_conventions,
    )
    if settings.exporter == "console":
        return ConsoleSpanExporter(builder, observer)
    return OtlpSpanExporter(builder, settings, observer, max_request_bytes=max_request_bytes)


class CallSpans(NamedTuple):
    call_id: str
    spans: list[ReadableSpan]


class Built:
    """The spans of a batch by call, and the trace anomalies met while building them."""

    __slots__ = ("anomalies", "calls")

    def __init__(self) -> None:
        self.calls: list[CallSpans] = []
        self.anomalies: list[str] = []

    @property
    def spans(self) -> list[ReadableSpan]:
        return [span for call in self.calls for span in call.spans]


def build_all(builder: SpanBuilder, batch: Sequence[FinishedCall]) -> Built:
    """Every span of the batch. A call that cannot be turned into spans (a bug) is logged,
    counted as the `unbuildable` anomaly and skipped: retrying would fail the same way, and
    it must not hold back the calls queued behind it."""
    built = Built()
    for finished in batch:
        try:
            spans = builder.build(finished, built.anomalies)
        except Exception as error:  # noqa: BLE001  one call's bug must not hold back the batch: named, counted
            log.error("cannot build the spans of call %s: %s", finished.call.call_id, error_text(error))
            log.debug("span building failed", extra={"stack": error_stack(error)})
            built.anomalies.append(UNBUILDABLE)
            continue
        built.calls.append(CallSpans(finished.call.call_id, spans))
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
    """Spans over OTLP (gRPC or HTTP/protobuf): our encoder, public transports."""

    def __init__(
        self,
        builder: SpanBuilder,
        settings: TraceSettings,
        observer: Observer,
        *,
        max_request_bytes: int = DEFAULT_MAX_EXPORT_BYTES,
        transport: Transport | None = None,
    ) -> None:
        self._builder = builder
        self._observer = observer
        self._timeout = settings.timeout
        self._max_bytes = max_request_bytes
        self._target = f"{safe_url(settings.endpoint)} ({settings.protocol})"
        self._secrets = tuple(value for _, value in settings.headers if len(value) >= 4)
        self._encoder = SpanEncoder()
        self._transport = transport if transport is not None else transport_for(settings)
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="otlp-export")
        self._in_flight: concurrent.futures.Future[Outcome] | None = None
        self._lock = threading.Lock()
        self._healthy: bool | None = None
        self._closed = False

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        if self._closed:
            return None
        built = build_all(self._builder, batch)
        if not any(call.spans for call in built.calls):
            report_anomalies(self._observer, built)
            return 0
        with self._lock:
            # One export at a time: the state change log and the stuck-request guard rely on it.
            delivered = self._deliver(built.calls)
        if delivered is None:
            return None
        report_anomalies(self._observer, built)
        return delivered

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)
        try:
            self._transport.close()
        except Exception as error:  # noqa: BLE001  shutting down: named and counted, the rest still stops
            self._unexpected("closing the OTLP transport", error)

    # -- delivery --------------------------------------------------------------------------------

    def _deliver(self, calls: list[CallSpans]) -> int | None:
        """Spans accepted, or None when the backend is unavailable (retry the whole batch)."""
        dropped: set[int] = set()
        failure = self._send_calls(calls, list(range(len(calls))), dropped)
        self._note(failure)
        if failure is not None:
            return None
        return sum(len(call.spans) for index, call in enumerate(calls) if index not in dropped)

    def _send_calls(self, calls: list[CallSpans], indexes: list[int], dropped: set[int]) -> Outcome | None:
        """Sends the calls at `indexes`; a rejected request is bisected until the call that
        poisons it stands alone and is dropped. The failure that stopped it, or None."""
        requests = self._encoder.encode_requests([calls[i].spans for i in indexes], self._max_bytes)
        for request in requests:
            outcome = self._send(request.body)
            if outcome.verdict == "unavailable":
                return outcome
            if outcome.verdict == "accepted":
                continue
            owners = [indexes[owner] for owner in request.owners]
            if len(owners) == 1:
                self._drop(calls[owners[0]], outcome, dropped, owners[0])
                continue
            middle = len(owners) // 2
            failure = self._send_calls(calls, owners[:middle], dropped) or self._send_calls(
                calls, owners[middle:], dropped
            )
            if failure is not None:
                return failure
        return None

    def _drop(self, call: CallSpans, outcome: Outcome, dropped: set[int], index: int) -> None:
        if index in dropped:
            return
        dropped.add(index)
        log.error(
            "OTLP backend rejected the spans of call %s as invalid (%s); they are dropped",
            call.call_id,
            self._redact(outcome.detail),
        )
        self._observer.spans_dropped(1)

    def _send(self, body: bytes) -> Outcome:
        if self._in_flight is not None and not self._in_flight.done():
            # An earlier request is stuck: do not queue behind it.
            return Outcome("unavailable", "an earlier request is still unanswered")
        try:
            future = self._worker.submit(self._transport.send, body)
        except RuntimeError:  # the worker was shut down
            return Outcome("unavailable", "shut down")
        self._in_flight = future
        try:
            return future.result(timeout=self._timeout + _GRACE_SECONDS)
        except concurrent.futures.TimeoutError:
            return Outcome("unavailable", f"no answer within {self._timeout:g} s")
        except Exception as error:  # noqa: BLE001  the transport catches its own: this is a bug, named and counted
            self._unexpected("sending spans", error)
            # Kept and retried like any failed export: at least once, even past a bug.
            return Outcome("unavailable", f"unexpected error: {error_text(error, self._secrets)}")

    def _note(self, failure: Outcome | None) -> None:
        """Log transitions only: a backend down for an hour is one warning, not hundreds."""
        if failure is None and self._healthy is False:
            log.info("OTLP trace export to %s recovered", self._target)
        elif failure is not None and self._healthy is not False:
            log.warning(
                "OTLP trace export to %s failing (%s); spans are kept and retried",
                self._target,
                self._redact(failure.detail or "no details"),
            )
        self._healthy = failure is None

    def _unexpected(self, doing: str, error: Exception) -> None:
        log.warning("OTLP trace export: unexpected error %s: %s", doing, error_text(error, self._secrets))
        log.debug("unexpected OTLP export error", extra={"stack": error_stack(error)})
        self._observer.unexpected_error("span_export")

    def _redact(self, text: str) -> str:
        return redact_text(text, self._secrets, limit=300)


def make_transport(protocol: str, options: TransportOptions) -> Transport:
    if protocol == "grpc":
        # Imported only when used: grpcio costs start-up time and memory an HTTP user never needs.
        from exporter.traces.grpc_transport import GrpcTransport

        return GrpcTransport(options)
    return HttpTransport(options)


def transport_for(settings: TraceSettings, env: Mapping[str, str] | None = None) -> Transport:
    """The transport for `settings.protocol`, configured from `settings` and the OTLP
    variables the settings do not carry (compression, TLS files)."""
    options = options_from_env(
        os.environ if env is None else env,
        endpoint=settings.endpoint,
        headers=settings.headers,
        timeout=settings.timeout,
        insecure=grpc_insecure(settings),
    )
    try:
        return make_transport(settings.protocol, options)
    except (OSError, ssl.SSLError) as error:
        # As for any invalid OTEL_* value: warn and use the default (the system's CAs).
        log.warning(
            "OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_KEY or _CLIENT_CERTIFICATE: cannot be used (%s); "
            "using the system's certificate authorities",
            type(error).__name__,
        )
        plain = dataclasses.replace(options, certificate=None, client_key=None, client_certificate=None)
        return make_transport(settings.protocol, plain)


def grpc_insecure(settings: TraceSettings) -> bool:
    """Per the OTel spec the endpoint's scheme decides; `insecure` applies without one."""
    scheme = urlsplit(settings.endpoint).scheme.lower()
    if scheme == "https":
        return False
    if scheme == "http":
        return True
    return bool(settings.insecure)

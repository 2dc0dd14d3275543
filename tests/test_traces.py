"""The trace sink against real OTLP receivers: delivery, a backend that is down or gone,
recovery with identical spans, console and none, and that nothing secret leaves."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from certificates import self_signed
from otlp_receiver import GrpcReceiver, HttpReceiver, receiver_for
from processes import wait_until

from exporter import __version__
from exporter.bem.decode import decode_call_page, decode_trace
from exporter.config import TraceSettings
from exporter.ids import NUMBER_OUT_OF_RANGE, UNBUILDABLE
from exporter.pipeline import FinishedCall, NullObserver
from exporter.traces.otlp import SpanEncoder
from exporter.traces.sink import OtlpSpanExporter, build_span_exporter, grpc_insecure
from exporter.traces.spans import SpanBuilder, make_resource
from exporter.traces.transport import Outcome

TIMEOUT = 1.0
SLACK = 1.5  # scheduling, connection set-up, the SDK's jittered backoff
CONTENT = "DOC-CONTENT-51c9"
PRESIGNED = "https://bucket.s3.us-east-1.amazonaws.com/in.pdf?X-Amz-Credential=AKIA&X-Amz-Signature=abc123"
API_KEY = "bem_sk_live_0f4e9a7d2c"
VENDOR_KEY = "vendor-ingest-key-88e1"
FORBIDDEN = (CONTENT, PRESIGNED, "X-Amz-", "amazonaws", "s3URL", "outputDownloadURL", API_KEY)


def payload(call_id: str = "call-7", status: str = "failed") -> FinishedCall:
    """A realistic call whose JSON carries content, presigned URLs and the API key."""
    call = {
        "callID": call_id,
        "status": status,
        "createdAt": "2024-05-01T12:00:00Z",
        "finishedAt": "2024-05-01T12:00:09Z",
        "workflowName": "invoice-intake",
        "workflowID": "wf-1",
        "callReferenceID": "ref-7",
        "url": PRESIGNED,
        "traceUrl": PRESIGNED,
        "input": {"singleFile": {"inputType": "pdf", "s3URL": PRESIGNED}},
        "outputs": [{"eventID": "o", "transformedContent": {"total": CONTENT}, "s3URL": PRESIGNED}],
        "errors": [{"eventID": "x", "message": "boom", "inputs": [{"inputContent": CONTENT}]}],
    }
    function_calls = [
        {
            "functionCallID": f"{call_id}-a",
            "functionName": "classify-doc",
            "type": "classify",
            "status": "completed",
            "startedAt": "2024-05-01T12:00:01Z",
            "finishedAt": "2024-05-01T12:00:02Z",
            "s3URL": PRESIGNED,
            "inputs": [{"s3URL": PRESIGNED, "inputType": "pdf"}],
        },
        {
            "functionCallID": f"{call_id}-b",
            "functionName": "extract-invoice",
            "type": "extract",
            "status": "failed",
            "startedAt": "2024-05-01T12:00:03Z",
            "finishedAt": "2024-05-01T12:00:08Z",
            "sourceEventID": f"{call_id}-e1",
            "incomingDestinationName": "invoice",
            "s3URL": PRESIGNED,
        },
    ]
    events = [
        {
            "eventID": f"{call_id}-e1",
            "eventType": "classify",
            "createdAt": "2024-05-01T12:00:02Z",
            "functionCallID": f"{call_id}-a",
            "functionCallTryNumber": 1,
            "transformedContent": {"class": CONTENT},
            "inboundEmail": {"from": "a@example.com", "subject": CONTENT},
            "s3URL": PRESIGNED,
        },
        {
            "eventID": f"{call_id}-e2",
            "eventType": "error",
            "createdAt": "2024-05-01T12:00:07Z",
            "functionCallID": f"{call_id}-b",
            "functionCallTryNumber": 2,
            "kind": "timeout",
            "message": "model timed out",
            "inputs": [{"inputContent": CONTENT + API_KEY, "jsonInputContent": {"k": CONTENT}}],
            "outputDownloadURL": PRESIGNED,
        },
    ]
    page = decode_call_page(json.dumps({"calls": [call]}).encode())
    trace = decode_trace(json.dumps({"trace": {"functionCalls": function_calls, "events": events}}).encode())
    return FinishedCall(page.calls[0], trace)


BATCH = [payload("call-7"), payload("call-8", status="completed")]
SPANS_IN_BATCH = 6


@pytest.fixture(params=["grpc", "http/protobuf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[GrpcReceiver | HttpReceiver]:
    with receiver_for(request.param) as started:
        yield started


def settings_for(receiver: GrpcReceiver | HttpReceiver, **overrides: Any) -> TraceSettings:
    values: dict[str, Any] = {
        "endpoint": receiver.endpoint,
        "endpoint_configured": True,
        "protocol": receiver.protocol,
        "timeout": TIMEOUT,
        "headers": (("X-Vendor-Key", VENDOR_KEY),),
    }
    values.update(overrides)
    return TraceSettings(**values)


def assert_clean(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    for marker in FORBIDDEN:
        assert marker not in text, marker


def timed_export(sink: Any, batch: Sequence[FinishedCall]) -> tuple[int | None, float]:
    started = time.monotonic()
    result = sink.export(batch)
    return result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# OTLP
# ---------------------------------------------------------------------------------------------


def test_export_delivers_every_span(receiver: GrpcReceiver | HttpReceiver) -> None:
    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    spans = receiver.spans()
    assert len(spans) == SPANS_IN_BATCH
    assert {s["name"] for s in spans} == {"RUN invoice-intake", "classify-doc", "extract-invoice"}
    assert all(s["resource"]["service.name"] == "bem" for s in spans)
    assert all(headers.get("x-vendor-key") == VENDOR_KEY for headers in receiver.headers())
    assert_clean(receiver.raw_bytes())


def test_nothing_secret_leaves(receiver: GrpcReceiver | HttpReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        assert sink.export(BATCH) == SPANS_IN_BATCH
        receiver.set_down()
        assert sink.export(BATCH) is None
    finally:
        sink.shutdown()
    raw = receiver.raw_bytes()
    assert b"invoice-intake" in raw and b"timeout" in raw  # the grep does see the payload
    assert_clean(raw)
    assert_clean(caplog.text)
    assert VENDOR_KEY not in caplog.text


def test_backend_down_then_up_delivers_identical_spans(receiver: GrpcReceiver | HttpReceiver) -> None:
    reference = build_span_exporter(settings_for(receiver), NullObserver())
    assert reference.export(BATCH) == SPANS_IN_BATCH
    reference.shutdown()
    expected = receiver.spans()
    receiver.clear()

    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        receiver.set_down()
        result, seconds = timed_export(sink, BATCH)
        assert result is None
        assert seconds < TIMEOUT + SLACK
        assert receiver.attempts >= 1 and receiver.spans() == []
        receiver.set_down(False)
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    assert receiver.spans() == expected


def test_backend_gone_then_back_on_the_same_port(receiver: GrpcReceiver | HttpReceiver) -> None:
    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        assert sink.export(BATCH[:1]) == 3
        receiver.stop()
        for _ in range(2):
            result, seconds = timed_export(sink, BATCH)
            assert result is None
            assert seconds < TIMEOUT + SLACK
        receiver.start()
        receiver.clear()
        # The next poll cycle comes seconds later; by then a gRPC channel's (capped, short)
        # reconnect backoff has passed. Without the cap this fails about every other run.
        time.sleep(0.6)
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    assert len(receiver.spans()) == SPANS_IN_BATCH


def test_failures_are_logged_once_per_state_change(
    receiver: GrpcReceiver | HttpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        receiver.set_down()
        for _ in range(3):
            assert sink.export(BATCH) is None
        receiver.set_down(False)
        assert sink.export(BATCH) == SPANS_IN_BATCH
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    ours = [r for r in caplog.records if r.name == "exporter.traces"]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.INFO]
    assert "failing" in ours[0].getMessage() and "recovered" in ours[1].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]
    assert VENDOR_KEY not in caplog.text


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.anomalies: list[str] = []

    def trace_anomaly(self, kind: str) -> None:
        self.anomalies.append(kind)


def test_anomalies_count_once_per_delivered_call(receiver: GrpcReceiver | HttpReceiver) -> None:
    odd = payload("call-9")
    first, second = odd.trace.function_calls
    two_roots = (first, msgspec.structs.replace(second, source_event_id=None))
    odd = FinishedCall(odd.call, msgspec.structs.replace(odd.trace, function_calls=two_roots))
    recorder = Recorder()
    sink = build_span_exporter(settings_for(receiver), recorder)
    try:
        receiver.set_down()
        assert sink.export([odd]) is None
        assert sink.export([odd]) is None
        assert recorder.anomalies == []
        receiver.set_down(False)
        assert sink.export([odd]) == 3
    finally:
        sink.shutdown()
    assert recorder.anomalies == ["multiple_roots"]


def test_large_batches_are_split_into_bounded_requests(receiver: GrpcReceiver | HttpReceiver) -> None:
    limit = 1500
    sink = build_span_exporter(settings_for(receiver), NullObserver(), max_request_bytes=limit)
    try:
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    assert len(receiver.requests()) > 1
    assert all(len(body) <= limit for body in receiver.raw())
    assert len(receiver.spans()) == SPANS_IN_BATCH


def test_empty_batch() -> None:
    with HttpReceiver() as receiver:
        sink = build_span_exporter(settings_for(receiver), NullObserver())
        assert sink.export([]) == 0
        sink.shutdown()
        assert receiver.attempts == 0


def test_export_after_shutdown_fails_without_raising() -> None:
    with HttpReceiver() as receiver:
        sink = build_span_exporter(settings_for(receiver), NullObserver())
        sink.shutdown()
        sink.shutdown()
        assert sink.export(BATCH) is None


# ---------------------------------------------------------------------------------------------
# Never raises, never stalls
# ---------------------------------------------------------------------------------------------


STUCK_SECONDS = 60.0
"""How long a stuck request holds unless released: far beyond any timeout below."""


class _StuckTransport:
    """A transport whose request hangs (a backend that trickles its answer)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def send(self, body: bytes) -> Outcome:
        self.calls += 1
        self.release.wait(STUCK_SECONDS)
        return Outcome("accepted")

    def close(self) -> None:
        self.release.set()


class _RaisingTransport(_StuckTransport):
    def send(self, body: bytes) -> Outcome:
        raise RuntimeError("surprise")


def _sink_with(transport: Any, timeout: float = 0.3) -> OtlpSpanExporter:
    settings = TraceSettings(endpoint="http://127.0.0.1:9/v1/traces", timeout=timeout)
    return OtlpSpanExporter(SpanBuilder(resource=make_resource("bem")), settings, NullObserver(), transport=transport)


def test_a_stuck_request_is_abandoned_after_the_timeout() -> None:
    stuck = _StuckTransport()
    sink = _sink_with(stuck)  # timeout 0.3 s, then a grace of 1 s
    try:
        result, seconds = timed_export(sink, BATCH)
        assert result is None and seconds < STUCK_SECONDS / 4  # abandoned, not waited out
        result, seconds = timed_export(sink, BATCH)  # still stuck: fail fast, queue nothing
        assert result is None and seconds < 1.0  # no wait for a timeout and its grace (1.3 s)
        assert stuck.calls == 1
        stuck.release.set()
        wait_until(lambda: sink.export(BATCH) == SPANS_IN_BATCH, 10, what="an export once the request let go")
        assert stuck.calls == 2  # the stuck request and this one: the fast failure queued none
    finally:
        sink.shutdown()


def test_a_transport_exception_is_a_failed_export() -> None:
    sink = _sink_with(_RaisingTransport())
    try:
        assert sink.export(BATCH) is None
    finally:
        sink.shutdown()


# ---------------------------------------------------------------------------------------------
# console and none
# ---------------------------------------------------------------------------------------------


def test_console_prints_one_json_line_per_span(capsys: pytest.CaptureFixture[str]) -> None:
    sink = build_span_exporter(TraceSettings(exporter="console"), NullObserver())
    assert sink.export(BATCH) == SPANS_IN_BATCH
    sink.shutdown()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == SPANS_IN_BATCH
    spans = [json.loads(line) for line in lines]
    assert {s["name"] for s in spans} == {"RUN invoice-intake", "classify-doc", "extract-invoice"}
    assert spans[0]["resource"]["attributes"]["service.name"] == "bem"
    assert_clean(out)


def test_none_accepts_and_drops(capsys: pytest.CaptureFixture[str]) -> None:
    sink = build_span_exporter(TraceSettings(exporter="none"), NullObserver())
    assert sink.export(BATCH) == 0
    sink.shutdown()
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def test_grpc_security_follows_the_scheme() -> None:
    assert grpc_insecure(TraceSettings(endpoint="http://collector:4317", protocol="grpc"))
    assert not grpc_insecure(TraceSettings(endpoint="https://collector:4317", protocol="grpc", insecure=True))
    assert grpc_insecure(TraceSettings(endpoint="collector:4317", protocol="grpc", insecure=True))
    assert not grpc_insecure(TraceSettings(endpoint="collector:4317", protocol="grpc"))


def test_requests_hold_at_least_one_span_and_keep_a_call_together() -> None:
    builder = SpanBuilder()
    calls = [builder.build(finished) for finished in BATCH]
    tiny = SpanEncoder().encode_requests(calls, 1)
    assert [request.spans for request in tiny] == [1] * SPANS_IN_BATCH
    assert [request.owners for request in tiny] == [(0,), (0,), (0,), (1,), (1,), (1,)]
    whole = SpanEncoder().encode_requests(calls, 10**6)
    assert [(request.spans, request.owners) for request in whole] == [(SPANS_IN_BATCH, (0, 1))]
    one_call = len(SpanEncoder().encode(calls[0])) + 50
    halves = SpanEncoder().encode_requests(calls, one_call)
    assert [(request.spans, request.owners) for request in halves] == [(3, (0,)), (3, (1,))]


def test_a_call_that_cannot_be_built_is_skipped_and_counted(receiver: GrpcReceiver | HttpReceiver) -> None:
    """A bug in the builder for one call must not hold back the calls behind it forever."""
    good = payload("call-10")
    broken = FinishedCall(good.call, object())  # type: ignore[arg-type]
    recorder = Recorder()
    sink = build_span_exporter(settings_for(receiver), recorder)
    try:
        assert sink.export([broken, good]) == len(good.trace.function_calls) + 1
    finally:
        sink.shutdown()
    assert recorder.anomalies.count(UNBUILDABLE) == 1


# ---------------------------------------------------------------------------------------------
# The path that runs: our encoder's bytes, our transport, the OTLP environment
# ---------------------------------------------------------------------------------------------


def test_the_receiver_gets_our_encoders_bytes_from_our_transport(receiver: GrpcReceiver | HttpReceiver) -> None:
    builder = SpanBuilder(resource=make_resource("bem"))
    expected = SpanEncoder().encode([span for finished in BATCH for span in builder.build(finished)])
    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    assert receiver.raw() == [expected]
    (headers,) = receiver.headers()
    assert headers["user-agent"].startswith(f"bem-exporter/{__version__}")
    assert headers["x-vendor-key"] == VENDOR_KEY


def test_http_gzip_from_the_otlp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with HttpReceiver() as receiver:
        sink = build_span_exporter(settings_for(receiver), NullObserver())
        try:
            assert sink.export(BATCH) == SPANS_IN_BATCH
        finally:
            sink.shutdown()
        (headers,) = receiver.headers()
        assert headers["content-encoding"] == "gzip"
        assert int(headers["content-length"]) < len(receiver.raw()[0])
        assert len(receiver.spans()) == SPANS_IN_BATCH


def test_a_receiver_that_never_answers_costs_one_timeout(receiver: GrpcReceiver | HttpReceiver) -> None:
    sink = build_span_exporter(settings_for(receiver), NullObserver())
    try:
        receiver.set_hang()
        result, seconds = timed_export(sink, BATCH)
        assert result is None
        assert seconds < TIMEOUT + SLACK
        receiver.set_hang(False)
        time.sleep(0.2)  # the abandoned request returns once the receiver lets go
        assert sink.export(BATCH) == SPANS_IN_BATCH
    finally:
        sink.shutdown()
    assert len(receiver.spans()) == SPANS_IN_BATCH


@pytest.fixture(scope="module")
def certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 and its key, PEM."""
    return self_signed()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_tls_trusts_the_certificate_from_the_otlp_environment(
    protocol: str, certificate: tuple[bytes, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver_for(protocol, tls=certificate) as receiver:
        assert receiver.endpoint.startswith("https://")
        untrusting = build_span_exporter(settings_for(receiver), NullObserver())
        try:
            assert untrusting.export(BATCH) is None  # an unknown certificate is refused
        finally:
            untrusting.shutdown()
        ca = tmp_path / "ca.pem"
        ca.write_bytes(certificate[0])
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(ca))
        sink = build_span_exporter(settings_for(receiver), NullObserver())
        try:
            assert sink.export(BATCH) == SPANS_IN_BATCH
        finally:
            sink.shutdown()
        assert len(receiver.spans()) == SPANS_IN_BATCH
        assert receiver.headers()[0]["x-vendor-key"] == VENDOR_KEY


# ---------------------------------------------------------------------------------------------
# Refused batches: isolated to the offending call, everything else flows
# ---------------------------------------------------------------------------------------------

POISON = "POISONED-NAME-5f1"


class Counting(NullObserver):
    def __init__(self) -> None:
        self.dropped = 0
        self.anomalies: list[str] = []

    def spans_dropped(self, calls: int) -> None:
        self.dropped += calls

    def trace_anomaly(self, kind: str) -> None:
        self.anomalies.append(kind)


def renamed(finished: FinishedCall, workflow_name: str) -> FinishedCall:
    return FinishedCall(msgspec.structs.replace(finished.call, workflow_name=workflow_name), finished.trace)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_call_the_backend_refuses_is_dropped_alone(protocol: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    calls = [payload(f"call-p{i}", status="completed") for i in range(7)]
    calls[4] = renamed(calls[4], POISON)
    observer = Counting()
    with receiver_for(protocol, poison=POISON.encode()) as receiver:
        sink = build_span_exporter(settings_for(receiver), observer)
        try:
            assert sink.export(calls) == 6 * 3
            assert observer.dropped == 1
            later = [payload("call-later", status="completed")]
            assert sink.export(later) == 3
        finally:
            sink.shutdown()
        delivered = {span["attributes"]["bem.call.id"] for span in receiver.spans() if span["parent"] is None}
        assert receiver.refused and set(receiver.refused) == {"poison"}
    assert delivered == {f"call-p{i}" for i in range(7) if i != 4} | {"call-later"}
    dropped_lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(dropped_lines) == 1 and "call-p4" in dropped_lines[0]
    assert not [r for r in caplog.records if "failing" in r.getMessage()]  # not reported as an outage


def big_call(call_id: str, names: int = 40) -> FinishedCall:
    """A call whose spans are large: function names of 900 characters."""
    finished = payload(call_id, status="completed")
    first, second = finished.trace.function_calls
    steps = [first] + [
        msgspec.structs.replace(second, function_call_id=f"{call_id}-{i}", function_name=f"{i:04d}" + "n" * 896)
        for i in range(names)
    ]
    return FinishedCall(finished.call, msgspec.structs.replace(finished.trace, function_calls=tuple(steps)))


def test_a_request_too_large_for_the_backend_is_split_until_it_fits() -> None:
    calls = [big_call(f"call-big{i}") for i in range(8)]
    spans = sum(1 + len(c.trace.function_calls) for c in calls)
    observer = Counting()
    with HttpReceiver(max_body=150_000) as receiver:
        sink = build_span_exporter(settings_for(receiver), observer)
        try:
            assert sink.export(calls) == spans
        finally:
            sink.shutdown()
        assert "too_large" in receiver.refused
        assert len(receiver.spans()) == spans
    assert observer.dropped == 0


def test_requests_stay_under_the_configured_size(receiver: GrpcReceiver | HttpReceiver) -> None:
    receiver.max_body = 64 * 1024
    receiver.restart()
    calls = [big_call(f"call-sized{i}") for i in range(6)]
    spans = sum(1 + len(c.trace.function_calls) for c in calls)
    sink = build_span_exporter(settings_for(receiver), NullObserver(), max_request_bytes=60 * 1024)
    try:
        assert sink.export(calls) == spans
    finally:
        sink.shutdown()
    assert receiver.refused == []
    assert len(receiver.requests()) > 1 and all(len(body) <= 60 * 1024 for body in receiver.raw())


def test_an_integer_beyond_int64_is_clamped_and_counted(receiver: GrpcReceiver | HttpReceiver) -> None:
    finished = payload("call-huge-version", status="completed")
    huge = FinishedCall(msgspec.structs.replace(finished.call, workflow_version=10**30), finished.trace)
    observer = Counting()
    sink = build_span_exporter(settings_for(receiver), observer)
    try:
        assert sink.export([huge]) == 3
        assert sink.export([payload("call-after")]) == 3
    finally:
        sink.shutdown()
    root = next(s for s in receiver.spans() if s["attributes"]["bem.call.id"] == "call-huge-version")
    assert root["attributes"]["bem.workflow.version"] == 2**63 - 1
    assert observer.anomalies == [NUMBER_OUT_OF_RANGE]


class CountingProxy:
    """A TCP relay on loopback that counts the bytes the client sends (what is on the wire)."""

    def __init__(self, port: int) -> None:
        self.sent = 0
        self._target = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if count:
                    self.sent += len(data)
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()


def test_grpc_gzip_from_the_otlp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [big_call(f"call-gz{i}") for i in range(3)]
    spans = sum(1 + len(c.trace.function_calls) for c in calls)
    sent: dict[str, int] = {}
    with GrpcReceiver() as receiver:
        for compression in ("none", "gzip"):
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", compression)
            proxy = CountingProxy(receiver.port)
            settings = settings_for(receiver, endpoint=f"http://127.0.0.1:{proxy.port}")
            sink = build_span_exporter(settings, NullObserver())
            try:
                assert sink.export(calls) == spans
            finally:
                sink.shutdown()
                proxy.close()
            sent[compression] = proxy.sent
        body = len(receiver.raw()[0])
    assert sent["none"] > body > 4 * sent["gzip"]


def test_an_unreadable_certificate_file_warns_and_uses_the_system_cas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "missing.pem"))
    with HttpReceiver() as receiver:
        sink = build_span_exporter(settings_for(receiver), NullObserver())
        try:
            assert sink.export(BATCH) == SPANS_IN_BATCH  # a plaintext endpoint needs no CA anyway
        finally:
            sink.shutdown()
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in caplog.text and "cannot be used" in caplog.text

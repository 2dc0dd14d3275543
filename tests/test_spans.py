"""Spans of finished calls, checked as a real OTLP receiver sees them (gRPC and HTTP).

Payloads are built as the API's JSON and decoded with the exporter's own decoder, with
document content, presigned URLs and an API key planted in fields that must never leave the
process; every export in this file is grepped for them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from otlp_receiver import GrpcReceiver, HttpReceiver, receiver_for

from exporter.bem.decode import decode_call_page, decode_trace
from exporter.config import TraceSettings
from exporter.ids import CANARY_REFERENCE_PREFIX, trace_id_for
from exporter.pipeline import FinishedCall, NullObserver
from exporter.redact import MAX_NAME_LENGTH
from exporter.traces.sink import DEFAULT_MAX_EXPORT_BYTES, build_span_exporter
from exporter.traces.spans import MAX_ERROR_KIND_LENGTH, MAX_STRING_LENGTH, SpanBuilder, build_spans, to_ns
from exporter.traces.tree import render_tree

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CONTENT = "DOC-CONTENT-7f3a"
PRESIGNED = "https://bucket.s3.amazonaws.com/doc.pdf?X-Amz-Signature=deadbeef"
API_KEY = "bem_live_sk_9c2d41e0aa"
FORBIDDEN = (CONTENT, PRESIGNED, "X-Amz-Signature", "s3URL", "s3.amazonaws.com", API_KEY)


# ---------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return to_ns(T0 + timedelta(seconds=seconds))


def call(
    call_id: str = "call-1", *, status: str = "completed", end: float | None = 30.0, **extra: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "callID": call_id,
        "status": status,
        "createdAt": at(0),
        "callType": "workflow",
        "workflowID": "wf-1",
        "workflowName": "invoice-intake",
        "workflowVersionNum": 4,
        "callReferenceID": "ref-1",
        "url": PRESIGNED,
        "input": {"singleFile": {"inputType": "pdf", "s3URL": PRESIGNED}},
        "outputs": [{"eventID": "o1", "transformedContent": {"total": CONTENT}}],
    }
    if end is not None:
        record["finishedAt"] = at(end)
    record.update(extra)
    return record


def fc(
    fc_id: str,
    name: str,
    function_type: str,
    start: float | None,
    end: float | None,
    *,
    source_event: str | None = None,
    source_fc: str | None = None,
    status: str = "completed",
    **extra: Any,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "functionCallID": fc_id,
        "functionID": f"f-{name}",
        "functionName": name,
        "type": function_type,
        "referenceID": "ref-1",
        "status": status,
        "functionVersionNum": 2,
        "workflowNodeName": f"node-{name}",
        "s3URL": PRESIGNED,
        "inputs": [{"inputType": "pdf", "itemReferenceID": "i", "s3URL": PRESIGNED}],
        "activity": [{"displayName": CONTENT, "status": status}],
    }
    if start is not None:
        record["startedAt"] = at(start)
    if end is not None:
        record["finishedAt"] = at(end)
    if source_event is not None:
        record["sourceEventID"] = source_event
    if source_fc is not None:
        record["sourceFunctionCallID"] = source_fc
    record.update(extra)
    return record


def ev(event_id: str, fc_id: str | None, event_type: str, when: float | None, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventID": event_id,
        "eventType": event_type,
        "functionCallTryNumber": 1,
        "metadata": {"durationFunctionToEventSeconds": 0.5},
        "transformedContent": {"invoice": CONTENT},
        "inputs": [{"inputContent": CONTENT + API_KEY, "s3URL": PRESIGNED}],
        "inboundEmail": {"from": "someone@example.com", "subject": CONTENT},
        "s3URL": PRESIGNED,
        "outputDownloadURL": PRESIGNED,
    }
    if fc_id is not None:
        record["functionCallID"] = fc_id
    if when is not None:
        record["createdAt"] = at(when)
    record.update(extra)
    return record


def finished(call_record: dict[str, Any], fcs: list[dict[str, Any]], events: list[dict[str, Any]]) -> FinishedCall:
    page = decode_call_page(json.dumps({"calls": [call_record]}).encode())
    trace = decode_trace(json.dumps({"trace": {"functionCalls": fcs, "events": events}}).encode())
    return FinishedCall(page.calls[0], trace)


def chain(call_id: str = "call-1") -> FinishedCall:
    """classify -> extract -> send, linked by events."""
    return finished(
        call(call_id),
        [
            fc("fc-a", "classify-doc", "classify", 1, 3),
            fc("fc-b", "extract-invoice", "extract", 4, 20, source_event="ev-a", source_fc="fc-a"),
            fc("fc-c", "send-erp", "send", 21, 25, source_event="ev-b", source_fc="fc-b"),
        ],
        [
            ev("ev-a", "fc-a", "classify", 2.9),
            ev("ev-b", "fc-b", "extract", 19.5, avgConfidence=0.93),
            ev("ev-c", "fc-c", "send", 24.9),
        ],
    )


# ---------------------------------------------------------------------------------------------
# Independent ids
# ---------------------------------------------------------------------------------------------


def trace_hex(call_id: str) -> str:
    return hashlib.sha256(f"bem.call:{call_id}".encode()).digest()[:16].hex()


def call_span_hex(call_id: str) -> str:
    return hashlib.sha256(f"bem.call.span:{call_id}".encode()).digest()[:8].hex()


def fc_span_hex(fc_id: str) -> str:
    return hashlib.sha256(f"bem.function_call:{fc_id}".encode()).digest()[:8].hex()


# ---------------------------------------------------------------------------------------------
# Shipping through a real receiver
# ---------------------------------------------------------------------------------------------


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.anomalies: list[str] = []

    def trace_anomaly(self, kind: str) -> None:
        self.anomalies.append(kind)


@pytest.fixture(scope="module", params=["grpc", "http/protobuf"])
def receiver(request: pytest.FixtureRequest) -> Iterator[GrpcReceiver | HttpReceiver]:
    with receiver_for(request.param) as started:
        yield started


class Shipper:
    def __init__(self, receiver: GrpcReceiver | HttpReceiver) -> None:
        self.receiver = receiver
        self.recorder = Recorder()

    def __call__(
        self, *calls: FinishedCall, max_request_bytes: int = DEFAULT_MAX_EXPORT_BYTES, **settings: Any
    ) -> list[dict[str, Any]]:
        self.receiver.clear()
        sink = build_span_exporter(
            TraceSettings(endpoint=self.receiver.endpoint, protocol=self.receiver.protocol, timeout=2.0, **settings),
            self.recorder,
            max_request_bytes,
        )
        try:
            accepted = sink.export(list(calls))
        finally:
            sink.shutdown()
        spans = self.receiver.spans()
        assert accepted == len(spans)
        raw = self.receiver.raw_bytes()
        for marker in FORBIDDEN:
            assert marker.encode() not in raw, marker
        return spans


@pytest.fixture
def ship(receiver: GrpcReceiver | HttpReceiver) -> Shipper:
    return Shipper(receiver)


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in spans}


def ancestors(span: dict[str, Any], index: dict[str, dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    parent = span["parent"]
    while parent is not None:
        assert parent not in seen, "a cycle reached the backend"
        seen.append(parent)
        parent = index[parent]["parent"] if parent in index else None
    return seen


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def test_chain_ids_parents_and_attributes(ship: Shipper) -> None:
    spans = ship(chain())
    assert len(spans) == 4
    named = by_name(spans)
    root = named["RUN invoice-intake"]
    assert {s["trace_id"] for s in spans} == {trace_hex("call-1")} == {trace_id_for("call-1")}
    assert root["span_id"] == call_span_hex("call-1")
    assert root["parent"] is None and root["kind"] == "SERVER"
    assert (root["start"], root["end"]) == (ns(0), ns(30))
    assert named["classify-doc"]["parent"] == root["span_id"]
    assert named["extract-invoice"]["parent"] == fc_span_hex("fc-a")
    assert named["send-erp"]["parent"] == fc_span_hex("fc-b")
    assert named["send-erp"]["span_id"] == fc_span_hex("fc-c")
    assert {s["kind"] for s in spans if s is not root} == {"INTERNAL"}
    assert root["attributes"] == {
        "bem.call.id": "call-1",
        "bem.call.status": "completed",
        "bem.call.reference_id": "ref-1",
        "bem.call.type": "workflow",
        "bem.workflow.name": "invoice-intake",
        "bem.workflow.id": "wf-1",
        "bem.workflow.version": 4,
        "cicd.pipeline.name": "invoice-intake",
        "cicd.pipeline.run.id": "call-1",
        "cicd.pipeline.result": "success",
        "bem.call.function_call_count": 3,
        "bem.call.event_count": 3,
        "bem.call.error_count": 0,
    }
    extract = named["extract-invoice"]
    assert (extract["start"], extract["end"]) == (ns(4), ns(20))
    assert extract["attributes"] == {
        "bem.function_call.id": "fc-b",
        "bem.function_call.status": "completed",
        "bem.function.name": "extract-invoice",
        "bem.function.id": "f-extract-invoice",
        "bem.function.type": "extract",
        "bem.function.version": 2,
        "bem.workflow.node_name": "node-extract-invoice",
        "cicd.pipeline.task.name": "extract-invoice",
        "cicd.pipeline.task.run.id": "fc-b",
        "cicd.pipeline.task.run.result": "success",
        "bem.function_call.event_count": 1,
        "bem.function_call.error_count": 0,
        "bem.function_call.max_try_number": 1,
        "bem.function_call.try_count": 1,
        "bem.function_call.avg_confidence": 0.93,
    }
    assert extract["events"] == [
        {
            "name": "extract",
            "time": ns(19.5),
            "attributes": {
                "bem.event.id": "ev-b",
                "bem.function_call.try_number": 1,
                "bem.event.duration_seconds": 0.5,
                "bem.event.avg_confidence": 0.93,
            },
        }
    ]
    assert all(s["status"]["code"] == "UNSET" for s in spans)
    assert root["resource"]["service.name"] == "bem"
    assert ship.recorder.anomalies == []


def test_branches_carry_the_outlet_name(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(),
            [
                fc("c", "classify-doc", "classify", 1, 2),
                fc("r", "route-doc", "route", 3, 4, source_event="e-c"),
                fc("inv", "extract-invoice", "extract", 5, 9, source_event="e-r", incomingDestinationName="invoice"),
                fc("rec", "extract-receipt", "extract", 5, 8, source_event="e-r", incomingDestinationName="receipt"),
            ],
            [ev("e-c", "c", "classify", 2), ev("e-r", "r", "route", 4)],
        )
    )
    named = by_name(spans)
    for name, outlet in (("extract-invoice", "invoice"), ("extract-receipt", "receipt")):
        assert named[name]["parent"] == fc_span_hex("r")
        assert named[name]["attributes"]["bem.incoming_destination_name"] == outlet
    assert "bem.incoming_destination_name" not in named["route-doc"]["attributes"]
    assert named["route-doc"]["parent"] == fc_span_hex("c")


def test_split_fan_out_and_join(ship: Shipper) -> None:
    items = [ev(f"item-{i}", "split", "split_item", 2 + i * 0.1) for i in range(3)]
    extracts = [fc(f"x-{i}", f"extract-{i}", "extract", 3, 6 + i, source_event=f"item-{i}") for i in range(3)]
    spans = ship(
        finished(
            call(),
            [
                fc("split", "split-pages", "split", 1, 2.5),
                *extracts,
                fc("join", "join-pages", "join", 9, 10, source_event="x-2-done"),
            ],
            [
                ev("coll", "split", "split_collection", 1.9),
                *items,
                *[ev(f"x-{i}-done", f"x-{i}", "extract", 6 + i) for i in range(3)],
                ev("joined", "join", "join", 10),
            ],
        )
    )
    named = by_name(spans)
    assert len(spans) == 6
    assert {named[f"extract-{i}"]["parent"] for i in range(3)} == {fc_span_hex("split")}
    assert named["join-pages"]["parent"] == fc_span_hex("x-2")
    assert [e["name"] for e in named["split-pages"]["events"]] == ["split_collection"] + ["split_item"] * 3


def test_retries_become_events_with_try_numbers(ship: Shipper) -> None:
    long_message = "timed out calling the model " + "x" * 400
    spans = ship(
        finished(
            call(),
            [fc("x", "extract-invoice", "extract", 1, 20)],
            [
                ev("t1", "x", "error", 5, functionCallTryNumber=1, kind="timeout", message=long_message),
                ev("t2", "x", "error", 11, functionCallTryNumber=2, kind="rate_limited", message="slow down"),
                ev("t3", "x", "extract", 19, functionCallTryNumber=3, avgConfidence=0.8),
            ],
        )
    )
    span = by_name(spans)["extract-invoice"]
    assert [e["attributes"]["bem.function_call.try_number"] for e in span["events"]] == [1, 2, 3]
    assert [e["name"] for e in span["events"]] == ["error", "error", "extract"]
    first = span["events"][0]["attributes"]
    assert first["bem.error.kind"] == "timeout"
    assert first["bem.error.message"] == long_message[:256]
    attributes = span["attributes"]
    assert attributes["bem.function_call.max_try_number"] == 3
    assert attributes["bem.function_call.try_count"] == 3
    assert attributes["bem.function_call.error_count"] == 2
    assert span["status"]["code"] == "UNSET"  # it succeeded in the end
    assert attributes["cicd.pipeline.task.run.result"] == "success"
    assert by_name(spans)["RUN invoice-intake"]["attributes"]["bem.call.error_count"] == 2


def test_error_messages_can_be_turned_off_or_shortened(ship: Shipper) -> None:
    payload = finished(
        call(), [fc("x", "extract", "extract", 1, 2)], [ev("t1", "x", "error", 1.5, kind="k", message="m" * 50)]
    )
    off = by_name(ship(payload, error_messages=False))["extract"]["events"][0]["attributes"]
    assert "bem.error.message" not in off and off["bem.error.kind"] == "k"
    short = by_name(ship(payload, error_message_length=10))["extract"]["events"][0]["attributes"]
    assert short["bem.error.message"] == "m" * 10


def test_failed_call_and_function_call(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(status="failed"),
            [
                fc("a", "classify-doc", "classify", 1, 2),
                fc("b", "extract-invoice", "extract", 3, 9, source_event="e-a", status="failed"),
                fc("c", "send-erp", "send", 3, 4, source_event="e-a", status="failed"),
            ],
            [
                ev("e-a", "a", "classify", 2),
                ev("e-b0", "b", "error", 5, message="no kind"),
                ev("e-b1", "b", "error", 8, kind="schema_mismatch", message="bad"),
                ev("e-c", "c", "error", 3.5, message="no kind either"),
            ],
        )
    )
    named = by_name(spans)
    root = named["RUN invoice-intake"]
    assert root["status"] == {"code": "ERROR", "message": "schema_mismatch"}
    assert root["attributes"]["error.type"] == "schema_mismatch"
    assert root["attributes"]["cicd.pipeline.result"] == "failure"
    assert named["extract-invoice"]["status"]["code"] == "ERROR"
    assert named["extract-invoice"]["attributes"]["error.type"] == "schema_mismatch"
    assert named["extract-invoice"]["attributes"]["cicd.pipeline.task.run.result"] == "failure"
    assert named["send-erp"]["attributes"]["error.type"] == "failed"
    assert named["classify-doc"]["status"]["code"] == "UNSET"
    assert "error.type" not in named["classify-doc"]["attributes"]


def test_failed_call_without_error_events_is_failed(ship: Shipper) -> None:
    root = by_name(ship(finished(call(status="failed"), [], [])))["RUN invoice-intake"]
    assert root["attributes"]["error.type"] == "failed"
    assert root["status"]["code"] == "ERROR"


def test_function_only_call_is_named_after_the_function(ship: Shipper) -> None:
    record = call(callType="direct_function", functionName="extract-invoice", functionID="f-1", functionType="extract")
    for key in ("workflowID", "workflowName", "workflowVersionNum"):
        record.pop(key)
    spans = ship(finished(record, [fc("x", "extract-invoice", "extract", 1, 2)], []))
    root = spans[0] if spans[0]["parent"] is None else by_name(spans)["RUN extract-invoice"]
    assert root["name"] == "RUN extract-invoice"
    assert root["attributes"]["cicd.pipeline.name"] == "extract-invoice"
    assert root["attributes"]["bem.function.type"] == "extract"
    assert "bem.workflow.name" not in root["attributes"]


def test_reexport_is_identical(ship: Shipper) -> None:
    first = ship(chain())
    second = ship(chain())
    assert first == second


def test_resource_attributes_and_service_name(ship: Shipper) -> None:
    spans = ship(
        chain(),
        service_name="bem-prod",
        resource_attributes=(("deployment.environment", "prod"), ("service.name", "x")),
    )
    assert spans[0]["resource"]["service.name"] == "bem-prod"
    assert spans[0]["resource"]["deployment.environment"] == "prod"


# ---------------------------------------------------------------------------------------------
# Oddities
# ---------------------------------------------------------------------------------------------


def test_unknown_source_event_falls_back_to_source_function_call(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(),
            [
                fc("a", "first", "classify", 1, 2),
                fc("b", "second", "extract", 3, 4, source_event="gone", source_fc="a"),
            ],
            [ev("e-a", "a", "classify", 2)],
        )
    )
    assert by_name(spans)["second"]["parent"] == fc_span_hex("a")
    assert ship.recorder.anomalies == ["unknown_source_event"]


def test_unresolvable_parent_hangs_off_the_call_span(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(),
            [
                fc("a", "first", "classify", 1, 2),
                fc("b", "second", "extract", 3, 4, source_event="gone", source_fc="nope"),
            ],
            [],
        )
    )
    assert by_name(spans)["second"]["parent"] == call_span_hex("call-1")
    assert sorted(ship.recorder.anomalies) == ["unknown_parent", "unknown_source_event"]


def test_several_roots(ship: Shipper) -> None:
    spans = ship(finished(call(), [fc("a", "one", "extract", 1, 2), fc("b", "two", "extract", 1, 3)], []))
    named = by_name(spans)
    assert named["one"]["parent"] == named["two"]["parent"] == call_span_hex("call-1")
    assert ship.recorder.anomalies == ["multiple_roots"]


def test_cycles_are_broken(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(),
            [
                fc("root", "root", "classify", 1, 2),
                fc("a", "a", "extract", 2, 3, source_event="e-b"),
                fc("b", "b", "extract", 3, 4, source_event="e-a"),
                fc("self", "self", "send", 4, 5, source_fc="self"),
                fc("c", "c", "send", 5, 6, source_event="e-a"),
            ],
            [ev("e-a", "a", "extract", 2.5), ev("e-b", "b", "extract", 3.5)],
        )
    )
    index = {s["span_id"]: s for s in spans}
    for span in spans:
        assert span["span_id"] not in ancestors(span, index)
        assert span["trace_id"] == trace_hex("call-1")
    named = by_name(spans)
    assert named["self"]["parent"] == call_span_hex("call-1")
    assert named["c"]["parent"] == fc_span_hex("a")
    assert call_span_hex("call-1") in ancestors(named["a"], index)
    assert "cycle" in ship.recorder.anomalies


def test_missing_finished_at(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(end=None, status="failed"),
            [
                fc("a", "done-without-end", "extract", 1, None, status="failed"),
                fc("b", "cut-off", "send", 2, None, status="running", source_fc="a"),
                fc("c", "silent", "send", 3, None, status="completed", source_fc="a"),
            ],
            [ev("e-a", "a", "error", 7, kind="boom"), ev("e-b", "b", "send", 4)],
        )
    )
    named = by_name(spans)
    assert named["done-without-end"]["end"] == ns(7)  # its last event
    assert named["cut-off"]["end"] == ns(4)  # no call end to fall back on: its last event
    assert named["silent"]["end"] == ns(3)  # nothing known: a zero-length span
    assert named["RUN invoice-intake"]["end"] == ns(7)
    assert ship.recorder.anomalies == ["missing_finished_at"]


def test_missing_finished_at_on_a_function_call_only(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(end=30),
            [
                fc("a", "finished", "extract", 1, None),
                fc("b", "running", "send", 2, None, status="running", source_fc="a"),
            ],
            [ev("e-a", "a", "extract", 6)],
        )
    )
    named = by_name(spans)
    assert named["finished"]["end"] == ns(6)
    assert named["running"]["end"] == ns(30)
    assert named["RUN invoice-intake"]["end"] == ns(30)


def test_missing_started_at(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(),
            [
                fc("a", "first", "classify", 1, 2),
                fc("b", "spawned", "extract", None, 9, source_event="e-a"),
                fc("c", "eventful", "extract", None, 9),
                fc("d", "nothing", "extract", None, None, status="pending"),
            ],
            [ev("e-a", "a", "classify", 1.5), ev("e-c", "c", "extract", 4)],
        )
    )
    named = by_name(spans)
    assert named["spawned"]["start"] == ns(1.5)
    assert named["eventful"]["start"] == ns(4)
    assert named["nothing"]["start"] == ns(0)
    assert named["nothing"]["end"] == ns(30)
    assert {"missing_started_at", "missing_finished_at"} <= set(ship.recorder.anomalies)


def test_duplicate_ids_first_wins(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(),
            [fc("a", "first", "extract", 1, 2), fc("a", "second", "extract", 5, 9)],
            [ev("e", "a", "extract", 1.5), ev("e", "a", "error", 1.7, kind="x")],
        )
    )
    assert len(spans) == 2
    span = by_name(spans)["first"]
    assert [e["name"] for e in span["events"]] == ["extract"]
    assert ship.recorder.anomalies == ["duplicate_id"]


def test_end_before_start_is_clamped(ship: Shipper) -> None:
    spans = ship(finished(call(end=-5), [fc("a", "backwards", "extract", 10, 4)], []))
    named = by_name(spans)
    assert named["backwards"]["start"] == named["backwards"]["end"] == ns(10)
    root = named["RUN invoice-intake"]
    assert root["start"] == root["end"] == ns(0)
    assert ship.recorder.anomalies == ["end_before_start"]


def test_events_of_unknown_function_calls_go_on_the_call_span(ship: Shipper) -> None:
    spans = ship(
        finished(
            call(), [fc("a", "only", "extract", 1, 2)], [ev("e1", "ghost", "extract", 1.5), ev("e2", None, "send", 1.6)]
        )
    )
    root = by_name(spans)["RUN invoice-intake"]
    assert [e["attributes"]["bem.event.id"] for e in root["events"]] == ["e1", "e2"]
    assert by_name(spans)["only"]["events"] == []
    assert ship.recorder.anomalies == ["unknown_event_owner"]


def test_span_events_are_capped(ship: Shipper) -> None:
    items = [ev(f"i{i}", "s", "split_item", 1 + i / 1000) for i in range(300)]
    span = by_name(ship(finished(call(), [fc("s", "split", "split", 1, 2)], items)))["split"]
    assert len(span["events"]) == 128
    assert span["dropped_events"] == 172
    assert span["attributes"]["bem.function_call.event_count"] == 300


def test_huge_trace_is_linear_and_chunked(ship: Shipper) -> None:
    def deep(n: int) -> FinishedCall:
        fcs = [fc("f0", "step", "transform", 0, 1)]
        fcs += [fc(f"f{i}", "step", "transform", i, i + 1, source_event=f"e{i - 1}") for i in range(1, n)]
        events = [ev(f"e{i}", f"f{i}", "transform", i + 0.5) for i in range(n)]
        return finished(call(end=n + 1), fcs, events)

    builder = SpanBuilder()
    small, big = deep(500), deep(4000)
    small_seconds, big_seconds = best_time(lambda: builder.build(small)), best_time(lambda: builder.build(big))
    spans = builder.build(big)
    assert len(spans) == 4001
    assert big_seconds < small_seconds * 8 * 3  # 8x the work: linear; quadratic would be 64x
    received = ship(big, max_request_bytes=256 * 1024)
    assert len(received) == 4001
    assert len(ship.receiver.requests()) > 1  # split into bounded requests
    assert all(len(body) <= 256 * 1024 for body in ship.receiver.raw())
    assert len(render_tree(big).splitlines()) == 4001  # no recursion limit either


def best_time(work: Callable[[], object], runs: int = 3) -> float:
    """The least CPU time of this thread over a few runs, with the garbage collector paused:
    GC pauses grow with the heap, not with the work measured. CPU time, not the wall clock:
    other jobs on a busy machine delay the work without adding to it."""
    gc.disable()
    try:
        timings = []
        for _ in range(runs):
            started = time.thread_time()
            work()
            timings.append(time.thread_time() - started)
        return min(timings)
    finally:
        gc.enable()


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def test_trace_id_for_is_cheap_and_matches() -> None:
    assert trace_id_for("abc") == trace_hex("abc")
    assert len(trace_id_for("abc")) == 32


def test_build_spans_reports_nothing_for_a_clean_trace() -> None:
    recorder = Recorder()
    spans = SpanBuilder(observer=recorder).build(chain())
    assert len(spans) == 4 and recorder.anomalies == []
    assert [s.name for s in build_spans(chain())] == [s.name for s in spans]


def test_render_tree() -> None:
    payload = finished(
        call(status="failed", end=12.4),
        [
            fc("a", "classify-doc", "classify", 0.1, 1.3),
            fc("b", "extract-invoice", "extract", 1.4, 9.5, source_event="e-a", incomingDestinationName="invoice"),
            fc("c", "send-erp", "send", 9.6, 10.0, source_event="e-b", status="failed"),
            fc("d", "extract-receipt", "extract", 1.5, 3.0, source_event="e-a", incomingDestinationName="receipt"),
        ],
        [
            ev("e-a", "a", "classify", 1.2),
            ev("e-b", "b", "extract", 9.4, avgConfidence=0.93),
            ev("e-c1", "c", "error", 9.8, kind="timeout", functionCallTryNumber=1),
            ev("e-c2", "c", "error", 9.9, kind="timeout", functionCallTryNumber=2),
        ],
    )
    assert render_tree(payload) == "\n".join(
        [
            f"RUN invoice-intake  failed  12.4s  trace {trace_hex('call-1')}  error timeout",
            "└─ classify-doc (classify) 1.2s",
            "   ├─ extract-invoice (extract) [invoice] 8.1s  conf 0.93",
            "   │  └─ send-erp (send) 400ms  2 tries  FAILED timeout",
            "   └─ extract-receipt (extract) [receipt] 1.5s",
        ]
    )


# ---------------------------------------------------------------------------------------------
# What a hostile API cannot make a span carry
# ---------------------------------------------------------------------------------------------


def test_urls_in_error_messages_and_kinds_are_cut_down_and_every_string_bounded(ship: Shipper) -> None:
    signed = "https://files.example.com/in.pdf?X-Amz-Signature=deadbeef"  # Shipper greps for the query
    hostile_kind = f"fetch_failed {signed} " + "k" * 5000
    message = f"could not read {signed} (retrying)"
    spans = ship(
        finished(
            call(status="failed", workflowName="w" * 5000),
            [fc("a", "f" * 5000, "extract", 1, 2, status="failed", functionName="f" * 5000)],
            [ev("e" * 3000, "a", "error", 1.5, kind=hostile_kind, message=message)],
        ),
        error_message_length=4000,
    )
    root = next(s for s in spans if s["parent"] is None)
    step = next(s for s in spans if s["parent"] is not None)
    (event,) = step["events"]
    for span in spans:
        assert span["status"]["code"] == "ERROR"
        assert span["status"]["message"] == span["attributes"]["error.type"]
        assert len(span["status"]["message"]) <= MAX_ERROR_KIND_LENGTH
        assert len(span["name"]) <= MAX_STRING_LENGTH
        for value in span["attributes"].values():
            assert not isinstance(value, str) or len(value) <= MAX_STRING_LENGTH
    assert root["name"] == "RUN " + "w" * MAX_NAME_LENGTH  # a name is cut at decoding
    assert event["attributes"]["bem.error.message"] == "could not read https://files.example.com/in.pdf (retrying)"
    assert root["attributes"]["error.type"].startswith("fetch_failed https://files.example.com/in.pdf kkk")
    assert len(event["attributes"]["bem.event.id"]) == MAX_STRING_LENGTH
    assert len(event["attributes"]["bem.error.kind"]) <= MAX_ERROR_KIND_LENGTH
    assert "X-Amz" not in event["attributes"]["bem.error.kind"]


def test_every_span_of_a_canary_call_is_marked_synthetic(ship: Shipper) -> None:
    canary = chain("call-canary")
    canary = FinishedCall(
        msgspec.structs.replace(canary.call, reference_id=CANARY_REFERENCE_PREFIX + "20261130T0600"), canary.trace
    )
    spans = ship(canary, chain("call-ordinary"))
    marked = {s["attributes"]["bem.call.id"] if s["parent"] is None else s["trace_id"]: s for s in spans}
    canary_trace = trace_id_for("call-canary")
    assert len(spans) == 8
    for span in spans:
        synthetic = span["attributes"].get("bem.synthetic")
        assert synthetic is (True if span["trace_id"] == canary_trace else None), span["name"]
    assert marked["call-canary"]["attributes"]["bem.call.reference_id"].startswith(CANARY_REFERENCE_PREFIX)


def test_render_tree_says_failed_once_when_bem_names_no_error_kind() -> None:
    payload = finished(call(status="failed", end=2.0), [fc("a", "send-erp", "send", 0.1, 1.0, status="failed")], [])
    lines = render_tree(payload).splitlines()
    assert lines[1] == "└─ send-erp (send) 900ms  FAILED"

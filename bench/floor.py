"""The floor: the least work that turns the same API payloads into the same OTLP bytes.

No HTTP, no state, no metrics, no anomaly handling: decode the list pages and the traces
(msgspec into minimal typed records; `json.loads` is timed too, for reference), build one span
per call and per function call with the attributes the exporter sets (parent from
`sourceEventID`, events as span events), and encode batches of 100 calls as an OTLP request
with the OpenTelemetry SDK's encoder (`encode_spans(...).SerializeToString()`), as
`OTLPSpanExporter` does. The same batches are also encoded with the exporter's direct encoder
(`exporter.traces.otlp.SpanEncoder`): the floor with the cheapest encoding known here. Each step is
timed on its own (`time.process_time`), `repeat` times, and the best run is kept.

`measure()` fetches the payloads from the simulator first (not timed): byte for byte what the
exporter read in the same benchmark run.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from exporter.traces.otlp import SpanEncoder

BATCH = 100


# -- payloads ---------------------------------------------------------------------------------


async def _fetch(api_url: str, workflows: list[str], limit: int | None) -> tuple[list[bytes], list[bytes]]:
    pages: list[bytes] = []
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=api_url, headers={"x-api-key": "sim-key"}, timeout=60) as client:
        after: str | None = None
        while limit is None or len(ids) < limit:
            params = {"limit": "100", "sortOrder": "desc", "workflowNames": ",".join(workflows)}
            if after:
                params["startingAfter"] = after
            body = (await client.get("/v3/calls", params=params)).content
            calls = json.loads(body)["calls"]
            pages.append(body)
            ids.extend(call["callID"] for call in calls)
            if len(calls) < 100:
                break
            after = calls[-1]["callID"]
        if limit is not None:
            ids = ids[:limit]
            pages = pages[: (limit + 99) // 100]
        semaphore = asyncio.Semaphore(16)

        async def trace(call_id: str) -> bytes:
            async with semaphore:
                return (await client.get(f"/v3/calls/{call_id}/trace")).content

        traces = await asyncio.gather(*(trace(call_id) for call_id in ids))
    return pages, list(traces)


def fetch_payloads(api_url: str, workflows: list[str], limit: int | None = None) -> tuple[list[bytes], list[bytes]]:
    """The list pages (newest first, as the backfill reads them) and each call's trace body."""
    return asyncio.run(_fetch(api_url, workflows, limit))


# -- minimal records ----------------------------------------------------------------------------


class Call(msgspec.Struct):
    callID: str
    status: str
    createdAt: datetime
    finishedAt: datetime | None = None
    callType: str | None = None
    callReferenceID: str | None = None
    workflowID: str | None = None
    workflowName: str | None = None
    workflowVersionNum: int | None = None


class Page(msgspec.Struct):
    calls: list[Call]


class FunctionCall(msgspec.Struct):
    functionCallID: str
    functionName: str = ""
    type: str = ""
    status: str = ""
    functionID: str | None = None
    functionVersionNum: int | None = None
    startedAt: datetime | None = None
    finishedAt: datetime | None = None
    sourceEventID: str | None = None
    sourceFunctionCallID: str | None = None
    workflowNodeName: str | None = None


class Metadata(msgspec.Struct):
    durationFunctionToEventSeconds: float | None = None


class Event(msgspec.Struct):
    eventID: str
    eventType: str = ""
    createdAt: datetime | None = None
    functionCallID: str | None = None
    functionCallTryNumber: int | None = None
    metadata: Metadata | None = None
    kind: str | None = None
    message: str | None = None
    avgConfidence: float | None = None


class TraceBody(msgspec.Struct):
    functionCalls: list[FunctionCall] = []
    events: list[Event] = []


class TraceEnvelope(msgspec.Struct):
    trace: TraceBody


_page = msgspec.json.Decoder(Page)
_trace = msgspec.json.Decoder(TraceEnvelope)

# -- minimal span building -----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_FLAGS = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_RESOURCE = Resource({"service.name": "bem"})
_SCOPE = InstrumentationScope("bem-exporter", "bench")


def _ns(moment: datetime) -> int:
    return (moment - _EPOCH) // _US * 1000


def _id(prefix: bytes, ident: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(prefix + ident.encode()).digest()[:size], "big")


def build(call: Call, trace: TraceBody) -> list[ReadableSpan]:
    trace_id = _id(b"bem.call:", call.callID, 16)
    call_context = SpanContext(trace_id, _id(b"bem.call.span:", call.callID, 8), False, _FLAGS)
    contexts = {
        fc.functionCallID: SpanContext(trace_id, _id(b"bem.function_call:", fc.functionCallID, 8), False, _FLAGS)
        for fc in trace.functionCalls
    }
    emitter = {event.eventID: event.functionCallID for event in trace.events}
    owned: dict[str | None, list[SpanEvent]] = {}
    for event in trace.events:
        attributes: dict[str, Any] = {"bem.event.id": event.eventID}
        if event.functionCallTryNumber is not None:
            attributes["bem.function_call.try_number"] = event.functionCallTryNumber
        if event.metadata is not None and event.metadata.durationFunctionToEventSeconds is not None:
            attributes["bem.event.duration_seconds"] = event.metadata.durationFunctionToEventSeconds
        if event.avgConfidence is not None:
            attributes["bem.event.avg_confidence"] = event.avgConfidence
        if event.kind is not None:
            attributes["bem.error.kind"] = event.kind
        if event.message is not None:
            attributes["bem.error.message"] = event.message[:256]
        at = _ns(event.createdAt) if event.createdAt is not None else 0
        owned.setdefault(event.functionCallID, []).append(SpanEvent(event.eventType, attributes, at))
    start = _ns(call.createdAt)
    end = _ns(call.finishedAt) if call.finishedAt is not None else start
    failed = call.status == "failed"
    attributes = {
        "bem.call.id": call.callID,
        "bem.call.status": call.status,
        "cicd.pipeline.name": call.workflowName or "(none)",
        "cicd.pipeline.run.id": call.callID,
        "cicd.pipeline.result": "failure" if failed else "success",
        "bem.call.function_call_count": len(trace.functionCalls),
        "bem.call.event_count": len(trace.events),
        "bem.call.error_count": sum(1 for event in trace.events if event.eventType == "error"),
    }
    for key, value in (
        ("bem.call.reference_id", call.callReferenceID),
        ("bem.call.type", call.callType),
        ("bem.workflow.name", call.workflowName),
        ("bem.workflow.id", call.workflowID),
        ("bem.workflow.version", call.workflowVersionNum),
    ):
        if value is not None:
            attributes[key] = value
    status = _UNSET
    if failed:
        attributes["error.type"] = "failed"
        status = Status(StatusCode.ERROR, "failed")
    spans = [
        ReadableSpan(
            "RUN " + (call.workflowName or "(none)"),
            context=call_context,
            resource=_RESOURCE,
            attributes=attributes,
            kind=SpanKind.SERVER,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=_SCOPE,
        )
    ]
    for fc in trace.functionCalls:
        parent = emitter.get(fc.sourceEventID) if fc.sourceEventID else None
        parent = parent if parent in contexts else fc.sourceFunctionCallID
        fc_failed = fc.status == "failed"
        events = owned.get(fc.functionCallID, [])
        attributes = {
            "bem.function_call.id": fc.functionCallID,
            "bem.function_call.status": fc.status,
            "bem.function.name": fc.functionName,
            "bem.function.type": fc.type,
            "cicd.pipeline.task.name": fc.functionName,
            "cicd.pipeline.task.run.id": fc.functionCallID,
            "cicd.pipeline.task.run.result": "failure" if fc_failed else "success",
            "bem.function_call.event_count": len(events),
            "bem.function_call.error_count": sum(1 for event in events if event.name == "error"),
        }
        if fc.functionID is not None:
            attributes["bem.function.id"] = fc.functionID
        if fc.functionVersionNum is not None:
            attributes["bem.function.version"] = fc.functionVersionNum
        if fc.workflowNodeName is not None:
            attributes["bem.workflow.node_name"] = fc.workflowNodeName
        fc_status = _UNSET
        if fc_failed:
            attributes["error.type"] = "failed"
            fc_status = Status(StatusCode.ERROR, "failed")
        fc_start = _ns(fc.startedAt) if fc.startedAt is not None else start
        spans.append(
            ReadableSpan(
                fc.functionName,
                context=contexts[fc.functionCallID],
                parent=contexts.get(parent, call_context) if parent else call_context,
                resource=_RESOURCE,
                attributes=attributes,
                events=events,
                kind=SpanKind.INTERNAL,
                status=fc_status,
                start_time=fc_start,
                end_time=_ns(fc.finishedAt) if fc.finishedAt is not None else fc_start,
                instrumentation_scope=_SCOPE,
            )
        )
    return spans


# -- the measurement -----------------------------------------------------------------------------


def run_once(pages: list[bytes], traces: list[bytes]) -> dict[str, Any]:
    """One pass, streaming like the exporter: per page of 100 calls, decode the page and the
    traces, build the spans, encode one OTLP request; nothing is kept but the sizes."""
    clock = time.process_time
    json_s = decode_s = build_s = encode_s = direct_s = 0.0
    direct = SpanEncoder()
    calls = function_calls = spans = otlp_bytes = 0
    gc.collect()
    done = 0
    for page in pages:
        started = clock()
        json.loads(page)
        for body in traces[done : done + BATCH]:
            json.loads(body)
        json_s += clock() - started

        started = clock()
        page_calls = _page.decode(page).calls[: len(traces) - done]
        decoded = [_trace.decode(body).trace for body in traces[done : done + len(page_calls)]]
        decode_s += clock() - started

        started = clock()
        batch = [span for call, trace in zip(page_calls, decoded, strict=True) for span in build(call, trace)]
        build_s += clock() - started

        started = clock()
        encoded = encode_spans(batch).SerializeToString()
        encode_s += clock() - started

        started = clock()
        direct.encode(batch)
        direct_s += clock() - started

        done += len(page_calls)
        calls += len(page_calls)
        function_calls += sum(len(trace.functionCalls) for trace in decoded)
        spans += len(batch)
        otlp_bytes += len(encoded)
    return {
        "json_loads_s": json_s,
        "decode_s": decode_s,
        "build_s": build_s,
        "encode_s": encode_s,
        "total_s": decode_s + build_s + encode_s,
        "encode_direct_s": direct_s,
        "total_direct_s": decode_s + build_s + direct_s,
        "calls": calls,
        "function_calls": function_calls,
        "spans": spans,
        "otlp_bytes": otlp_bytes,
        "response_bytes": sum(len(page) for page in pages) + sum(len(body) for body in traces),
    }


def measure(api_url: str, workflows: list[str], repeat: int = 3, limit: int | None = None) -> dict[str, Any]:
    pages, traces = fetch_payloads(api_url, workflows, limit)
    runs = [run_once(pages, traces) for _ in range(repeat)]
    best = min(runs, key=lambda run: run["total_s"])
    best["runs_total_s"] = [run["total_s"] for run in runs]
    return best

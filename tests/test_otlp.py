"""The direct OTLP encoder (exporter/traces/otlp.py) against the SDK's `encode_spans`: the same message."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from exporter.bem.decode import decode_call_page, decode_trace
from exporter.pipeline import FinishedCall
from exporter.simulator import Simulator, SimulatorConfig
from exporter.traces.otlp import SpanEncoder
from exporter.traces.spans import SpanBuilder, make_resource


def same(spans: list[ReadableSpan], encoder: SpanEncoder | None = None) -> None:
    ours = ExportTraceServiceRequest.FromString((encoder or SpanEncoder()).encode(spans))
    theirs = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
    assert ours == theirs


class _Clock:
    def __init__(self) -> None:
        self.t = 1_760_000_000.0

    def __call__(self) -> float:
        return self.t


def test_simulated_traces_encode_as_the_sdk_does() -> None:
    clock = _Clock()
    sim = Simulator(SimulatorConfig(seed=3, prefill=300, history=3600, arrival_rate=0), clock=clock)
    clock.t += 3600
    ids = sim.call_ids()
    page = decode_call_page(b'{"calls":[' + b",".join(sim.call_json(i) or b"" for i in ids) + b"]}")
    builder = SpanBuilder(resource=make_resource("bem", [("deployment.environment", "test")]))
    spans = [
        span
        for call in page.calls
        for span in builder.build(
            FinishedCall(call, decode_trace(b'{"trace":' + (sim.trace_json(call.call_id) or b"") + b"}"))
        )
    ]
    assert len(spans) > 1000
    encoder = SpanEncoder()
    for start in range(0, len(spans), 250):
        same(spans[start : start + 250], encoder)  # the attribute cache, warm and cold


def _context(trace: int, span: int, remote: bool = False, state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace, span, remote, TraceFlags(TraceFlags.SAMPLED), state)


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        "é ☃ \U0001f600",
        True,
        False,
        0,
        1,
        -1,
        2**63 - 1,
        -(2**63),
        0.5,
        -0.0,
        1e300,
        ("a", "b"),
        (1, 2),
        (),
    ],
)
def test_every_attribute_value_kind(value: Any) -> None:
    span = ReadableSpan(
        "s", context=_context(1, 2), attributes={"k": value}, events=[Event("e", {"k": value}, 5)], start_time=1
    )
    same([span])


def test_every_span_field() -> None:
    resource_a = Resource({"service.name": "a", "n": 3}, schema_url="https://schema/a")
    resource_b = Resource({"service.name": "b"})
    scope = InstrumentationScope("scope", "1.0", "https://schema/s", {"x": "y"})
    events: BoundedList[Event] = BoundedList(1)
    events.extend([Event("kept", {"a": 1}, 10), Event("dropped", {}, 11)])
    spans = [
        ReadableSpan(
            "full",
            context=_context(2**128 - 1, 2**64 - 1, state=TraceState([("k", "v"), ("k2", "v2")])),
            parent=_context(2**128 - 1, 7, remote=True),
            resource=resource_a,
            attributes={"a": "b", "big": "x" * 20000},
            events=events,
            links=[Link(_context(9, 8, remote=True), {"l": 1}), Link(_context(9, 9))],
            kind=SpanKind.CONSUMER,
            status=Status(StatusCode.ERROR, "broken"),
            start_time=2**64 - 1,
            end_time=2**63,
            instrumentation_scope=scope,
        ),
        ReadableSpan("other resource", context=_context(3, 4), resource=resource_b, status=Status(StatusCode.OK)),
        ReadableSpan("no scope", context=_context(3, 5), resource=resource_a, kind=SpanKind.SERVER),
        ReadableSpan("", context=_context(3, 6), resource=resource_a, instrumentation_scope=scope),
    ]
    same(spans)


def test_unknown_values_are_refused() -> None:
    span = ReadableSpan("s", context=_context(1, 2))
    span._attributes = {"odd": object()}  # type: ignore[assignment]  # past the SDK's own checks
    with pytest.raises(TypeError):
        SpanEncoder().encode([span])


def test_cache_hits_do_not_confuse_true_with_one() -> None:
    encoder = SpanEncoder()
    same([ReadableSpan("s", context=_context(1, 2), attributes={"k": 1, "b": True})], encoder)
    same([ReadableSpan("s", context=_context(1, 2), attributes={"k": True, "b": 1})], encoder)


@pytest.mark.parametrize(("value", "sent"), [(10**30, 2**63 - 1), (2**64, 2**63 - 1), (-(10**30), -(2**63))])
def test_integers_beyond_int64_never_become_wider_varints(value: int, sent: int) -> None:
    span = ReadableSpan("s", context=_context(1, 2), attributes={"k": value, "list": (value,)})
    request = ExportTraceServiceRequest.FromString(SpanEncoder().encode([span]))  # parses: no varint over 64 bits
    (parsed,) = request.resource_spans[0].scope_spans[0].spans
    assert [kv.value.int_value for kv in parsed.attributes[:1]] == [sent]
    assert [v.int_value for v in parsed.attributes[1].value.array_value.values] == [sent]


def test_requests_split_by_size_parse_back_to_every_span() -> None:
    spans = [ReadableSpan(f"s{i}", context=_context(1, i + 1), attributes={"pad": "x" * 300}) for i in range(40)]
    requests = SpanEncoder().encode_requests([spans[:10], spans[10:25], spans[25:]], 2000)
    assert len(requests) > 3 and all(len(request.body) <= 2000 for request in requests)
    names = [
        span.name
        for request in requests
        for resource_spans in ExportTraceServiceRequest.FromString(request.body).resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert names == [f"s{i}" for i in range(40)]
    assert sum(request.spans for request in requests) == 40

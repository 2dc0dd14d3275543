"""Property-based tests of everything that touches API payloads (hypothesis).

Pages and traces are generated with missing fields, wrong types, unknown enum values, huge
strings, deep and cyclic DAGs, duplicate ids and unicode oddities. The properties:

- `decode_call_page` / `decode_trace` / `decode_v2_trace` raise nothing but `DecodeError`;
- a bad record never keeps a good one of the same page or trace out;
- the span builder and the metrics recorder never raise for anything the decoder lets through,
  and the metrics still render;
- what a record carries beyond the allow-list (content, URLs) never reaches a span.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from exporter.bem.decode import DecodeError, decode_call_page, decode_trace, decode_v2_trace
from exporter.bem.models import Call, Trace
from exporter.config import MetricsSettings
from exporter.metrics import Metrics
from exporter.pipeline import FinishedCall, NullObserver
from exporter.traces.spans import SpanBuilder

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
SECRET = "FUZZ-SECRET-CONTENT"

# -- building blocks ----------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "é",
        "e\u0301",  # combining accent
        "\u202eevil",  # right-to-left override
        "\ufeffbom",
        "😀" * 3,
        "\U0001d518\U0001d52b\U0001d526",  # mathematical fraktur
        "\\",
        '"',
        "\n\r\t",
        "x" * 20_000,  # huge
        "other",
        "(none)",
        "le",
        'a"b{c}=d,e',
    ]
)
TEXT = st.one_of(st.text(max_size=30), ODD_TEXT)
TIMESTAMPS = st.one_of(
    st.sampled_from(
        [
            "2024-05-18T02:40:00Z",
            "2024-05-18T02:40:00.123456Z",
            "2024-05-18T02:40:00+14:00",
            "2024-05-18T02:40:00-12:00",
            "2024-05-18T02:40:00",  # no time zone
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59-14:00",
            "1970-01-01T00:00:00Z",
            "2024-02-30T00:00:00Z",
            "2024-05-18",
            "yesterday",
            "",
        ]
    ),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON_ANY = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6
)
STATUSES = st.sampled_from(["pending", "running", "completed", "failed", "cancelled", "", "COMPLETED"])
EVENT_TYPES = st.sampled_from(["extract", "classify", "error", "split_item", "join", "send", "hologram", ""])
FUNCTION_TYPES = st.sampled_from(["extract", "route", "split", "join", "send", "teleport", ""])
NUMBERS = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), st.floats(allow_nan=False, allow_infinity=False))


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The plausible value, or any JSON at all, or (the caller drops keys) nothing."""
    return st.one_of(value, value, value, JSON_ANY)


@st.composite
def record(
    draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, strategy in fields.items():
        if name in required or draw(st.integers(0, 9)) > 0:
            doc[name] = draw(maybe(strategy))
    for _ in range(draw(st.integers(0, 2))):  # unknown fields, content among them
        doc[draw(TEXT)] = draw(st.one_of(JSON_ANY, st.just({"inputContent": SECRET, "s3URL": SECRET})))
    return doc


CALL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "callID": TEXT,
    "status": STATUSES,
    "createdAt": TIMESTAMPS,
    "finishedAt": st.one_of(st.none(), TIMESTAMPS),
    "callType": st.sampled_from(["workflow", "direct_function", "adhoc_function", "batch", ""]),
    "callReferenceID": TEXT,
    "workflowID": TEXT,
    "workflowName": TEXT,
    "workflowVersionNum": NUMBERS,
    "functionID": TEXT,
    "functionName": TEXT,
    "functionType": FUNCTION_TYPES,
    "functionVersionNum": NUMBERS,
    "outputs": st.just([{"transformedContent": SECRET}]),
    "inputContent": st.just(SECRET),
}


def good_call(index: int) -> dict[str, Any]:
    return {
        "callID": f"good-{index}",
        "status": "completed" if index % 2 else "failed",
        "createdAt": "2024-05-18T02:40:00Z",
        "finishedAt": "2024-05-18T02:41:00Z",
        "callType": "workflow",
        "workflowName": "invoice-intake",
        "outputs": [{"transformedContent": SECRET}],
    }


@st.composite
def pages(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """A list body mixing fuzzed records and known-good ones; the good ones' ids."""
    fuzzed = draw(st.lists(record(CALL_FIELDS), max_size=6))
    good = [good_call(i) for i in range(draw(st.integers(0, 3)))]
    calls = draw(st.permutations(fuzzed + good))
    envelope: dict[str, Any] = {"calls": calls, "totalCount": draw(maybe(st.integers(0, 10**6)))}
    if draw(st.booleans()):
        envelope["error"] = draw(JSON_ANY)
    body = json.dumps(envelope).encode()
    return body, {call["callID"] for call in good}


def _ids(pool: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(pool), TEXT)


@st.composite
def traces(draw: st.DrawFn) -> dict[str, Any]:
    """A trace with ids drawn from a small pool: duplicates, self-sources, cycles, dangling
    references; sometimes a deep chain."""
    pool = [f"fc{i}" for i in range(draw(st.integers(1, 8)))]
    events_pool = [f"ev{i}" for i in range(draw(st.integers(1, 8)))]
    fc_fields: dict[str, st.SearchStrategy[Any]] = {
        "functionCallID": _ids(pool),
        "functionID": TEXT,
        "functionName": TEXT,
        "type": FUNCTION_TYPES,
        "functionVersionNum": NUMBERS,
        "status": STATUSES,
        "startedAt": st.one_of(st.none(), TIMESTAMPS),
        "finishedAt": st.one_of(st.none(), TIMESTAMPS),
        "sourceEventID": st.one_of(st.none(), _ids(events_pool)),
        "sourceFunctionCallID": st.one_of(st.none(), _ids(pool)),
        "workflowNodeName": TEXT,
        "incomingDestinationName": TEXT,
    }
    event_fields: dict[str, st.SearchStrategy[Any]] = {
        "eventID": _ids(events_pool),
        "eventType": EVENT_TYPES,
        "createdAt": st.one_of(st.none(), TIMESTAMPS),
        "functionCallID": st.one_of(st.none(), _ids(pool)),
        "functionCallTryNumber": NUMBERS,
        "functionName": TEXT,
        "metadata": st.one_of(
            st.fixed_dictionaries({"durationFunctionToEventSeconds": st.one_of(NUMBERS, st.none())}), JSON_ANY
        ),
        "message": TEXT,
        "kind": TEXT,
        "avgConfidence": st.one_of(st.floats(0, 1), NUMBERS, st.none()),
        "transformedContent": st.just({"notes": SECRET}),
        "s3URL": st.just(f"https://s3.example/x?X-Amz-Signature={SECRET}"),
    }
    function_calls = draw(st.lists(record(fc_fields, required=("functionCallID",)), max_size=10))
    events = draw(st.lists(record(event_fields, required=("eventID",)), max_size=12))
    if draw(st.integers(0, 19)) == 0:  # a deep chain: each function call the child of the last
        depth = draw(st.sampled_from([100, 1000]))
        for i in range(depth):
            function_calls.append(
                {
                    "functionCallID": f"deep{i}",
                    "functionName": "step",
                    "status": "completed",
                    "startedAt": "2024-05-18T02:40:00Z",
                    "finishedAt": "2024-05-18T02:40:01Z",
                    **({"sourceFunctionCallID": f"deep{i - 1}"} if i else {}),
                }
            )
        if draw(st.booleans()):
            function_calls[-depth]["sourceFunctionCallID"] = f"deep{depth - 1}"  # and a cycle through all
    body: dict[str, Any] = {"functionCalls": function_calls, "events": events}
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.one_of(JSON_ANY, st.just({"functionCalls": draw(JSON_ANY), "events": events})))
    return {"trace": body}


# -- properties ---------------------------------------------------------------------------------


def _decode_page(body: bytes) -> Any:
    try:
        return decode_call_page(body)
    except DecodeError as error:
        assert SECRET not in str(error)
        return None


@FUZZ
@given(pages())
def test_call_pages_decode_or_raise_decode_error_and_good_records_get_through(page: tuple[bytes, set[str]]) -> None:
    body, good = page
    decoded = decode_call_page(body)  # the envelope is well-formed: no error at all
    assert good <= {call.call_id for call in decoded.calls}
    assert decoded.size == len(json.loads(body)["calls"])
    assert decoded.rejected == decoded.size - len(decoded.calls)


@FUZZ
@given(st.one_of(JSON_ANY.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200), pages().map(lambda p: p[0])))
def test_any_body_decodes_or_raises_decode_error(body: bytes) -> None:
    _decode_page(body)
    for cut in (len(body) // 2, len(body) - 1):  # truncated bodies too
        _decode_page(body[:cut])
    for decode in (decode_trace, decode_v2_trace):
        with contextlib.suppress(DecodeError):
            decode(body)


@FUZZ
@given(st.integers(1, 100_000))
def test_deeply_nested_json_raises_decode_error_only(depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"calls":' + b"[" * depth + b"]" * depth + b"}"):
        _decode_page(body)
        with contextlib.suppress(DecodeError):
            decode_trace(b'{"trace":{"functionCalls":' + body + b"}}")


def _builder() -> SpanBuilder:
    return SpanBuilder(observer=NullObserver())


BUILDER = _builder()
METRICS = Metrics(MetricsSettings(max_label_values=50), "fuzz")


def _calls(call_records: list[dict[str, Any]]) -> list[Call]:
    """What the decoder lets through of these records (as the poller gets them)."""
    return decode_call_page(json.dumps({"calls": call_records}).encode()).calls


@FUZZ
@given(traces(), st.lists(record(CALL_FIELDS, required=("callID", "status", "createdAt")), min_size=1, max_size=3))
def test_span_builder_and_metrics_take_whatever_decodes(
    trace_doc: dict[str, Any], call_docs: list[dict[str, Any]]
) -> None:
    body = json.dumps(trace_doc).encode()
    try:
        trace = decode_trace(body)
    except DecodeError:
        trace = Trace()
    calls = _calls(call_docs) or [Call(call_id="fallback", status="completed", created_at=_epoch())]
    batch = [FinishedCall(call, trace) for call in calls]

    for finished in batch:
        spans = BUILDER.build(finished)
        assert spans and spans[0].parent is None
        ids = {span.context.span_id for span in spans}
        assert len(ids) == len(spans)  # no span twice
        for span in spans:
            assert span.parent is None or span.parent.span_id in ids  # every parent exists
        # What goes on the wire encodes (a span that cannot be encoded would fail its export
        # on every retry) and carries nothing beyond the allow-list.
        wire = encode_spans(spans).SerializeToString()
        assert SECRET.encode() not in wire

    recorder = METRICS.recorder
    recorder.stage(batch)
    recorder.publish()
    text, _ = METRICS.exposition(None)
    assert b"bem_calls_total" in text
    assert SECRET.encode() not in text
    openmetrics, _ = METRICS.exposition("application/openmetrics-text; version=1.0.0")
    assert openmetrics.endswith(b"# EOF\n")


@FUZZ
@given(traces())
def test_good_function_calls_and_events_survive_bad_neighbours(trace_doc: dict[str, Any]) -> None:
    body = trace_doc["trace"]
    if not isinstance(body, dict) or not isinstance(body.get("functionCalls"), list):
        return
    good_fc = {"functionCallID": "the-good-one", "functionName": "ok", "status": "completed"}
    good_event = {"eventID": "the-good-event", "eventType": "extract", "functionCallID": "the-good-one"}
    body["functionCalls"].append(good_fc)
    if isinstance(body.get("events"), list):
        body["events"].insert(0, good_event)
    trace = decode_trace(json.dumps(trace_doc).encode())
    assert "the-good-one" in {fc.function_call_id for fc in trace.function_calls}
    if isinstance(body.get("events"), list):
        assert "the-good-event" in {event.event_id for event in trace.events}


def _epoch() -> Any:
    from datetime import UTC, datetime

    return datetime(2024, 5, 18, tzinfo=UTC)

"""A finished call and its trace -> OpenTelemetry spans (pure; no I/O).

One trace per call: a SERVER span for the call, an INTERNAL span per function call, the DAG
as parent/child, events as span events. Ids are derived from bem's ids by SHA-256, so anyone
can compute a call's trace id and a re-export yields identical spans.

Built as `ReadableSpan`s directly rather than through a Tracer: the Tracer API costs a lock,
limits, id generation and a processor hand-off per span, none of which a replay of finished
work needs. This is the hot path of the exporter (thousands of function calls per poll), so
the per-function-call work is kept to dict lookups and one pass over each list.

Traces from the API are not always well-formed; each oddity is worked around, counted once
per call and kind through `Observer.trace_anomaly`, and logged at debug with ids only.

Names, types, statuses and kinds arrive safe (the decoder passed them through
`exporter.redact.safe_name`); ids are bounded here (`MAX_STRING_LENGTH`), error messages
redacted like any free text, and integers kept within int64. The ids and the anomaly kinds
live in `exporter.ids`, shared with the metrics.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from exporter import __version__
from exporter.bem.models import NO_WORKFLOW, Call, Event, FunctionCall
from exporter.ids import (
    CANARY_REFERENCE_PREFIX,
    CYCLE,
    DUPLICATE_ID,
    END_BEFORE_START,
    MISSING_FINISHED_AT,
    MISSING_STARTED_AT,
    MULTIPLE_ROOTS,
    NUMBER_OUT_OF_RANGE,
    UNKNOWN_EVENT_OWNER,
    UNKNOWN_PARENT,
    UNKNOWN_SOURCE_EVENT,
    call_span_id_int,
    function_call_span_id_int,
    trace_id_int,
)
from exporter.pipeline import FinishedCall, Observer
from exporter.redact import MAX_NAME_LENGTH, redact_text
from exporter.traces import genai

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util import BoundedList
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind
    from opentelemetry.trace.status import Status

log = logging.getLogger(__name__)

SCOPE_NAME = "bem-exporter"
MAX_EVENTS_PER_SPAN = 128
"""The SDK's default span event limit; a split can emit thousands of item events."""

FUNCTION_CALL_TYPES = frozenset({"direct_function", "adhoc_function"})

MAX_STRING_LENGTH = 1024
"""Every string a span carries that comes from the API (attribute values, span and event
names, the status description) is cut to this many characters: a hostile or broken API must
not make one span, or one export request, arbitrarily large."""
MAX_ERROR_KIND_LENGTH = MAX_NAME_LENGTH
"""An error kind (the `error.type` attribute and the span status description) is a name like
any other: cut at decoding."""
_ERROR_CACHE_LIMIT = 4096
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""OTLP's integer attributes are int64; a wider number would be encoded as a varint no
receiver can parse (and the whole request with it)."""

_TERMINAL = frozenset({"completed", "failed"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_ns(moment: datetime) -> int:
    """Exact integer nanoseconds (a float timestamp would round away microseconds)."""
    if moment.tzinfo is None:  # the API sends UTC; be lenient about a missing offset
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND * 1000


def call_span_name(call: Call) -> str:
    return bounded("RUN " + pipeline_name(call))


def bounded(text: str) -> str:
    """`text` cut to `MAX_STRING_LENGTH` characters."""
    return text if len(text) <= MAX_STRING_LENGTH else text[:MAX_STRING_LENGTH]


def is_synthetic(call: Call) -> bool:
    """A call the exporter's own canary created."""
    return call.reference_id is not None and call.reference_id.startswith(CANARY_REFERENCE_PREFIX)


def pipeline_name(call: Call) -> str:
    """The workflow's name, or the function's for a function-only call (DESIGN section 4)."""
    if call.call_type in FUNCTION_CALL_TYPES or not call.workflow_name:
        return call.function_name or call.workflow_name or NO_WORKFLOW
    return call.workflow_name


# ---------------------------------------------------------------------------------------------
# Resource and scope
# ---------------------------------------------------------------------------------------------


def make_resource(service_name: str, attributes: Iterable[tuple[str, str]] = ()) -> Resource:
    """The resource shared by every span: `service.name` wins over the same key in attributes."""
    merged: dict[str, Any] = dict(attributes)
    merged["service.name"] = service_name
    merged.setdefault("telemetry.sdk.language", "python")
    merged.setdefault("telemetry.sdk.name", "opentelemetry")
    merged.setdefault("telemetry.sdk.version", _sdk_version())
    return _hash_cached_resource_class()(merged)


def _sdk_version() -> str:
    from opentelemetry.sdk.version import __version__ as version

    return version


@functools.cache
def _hash_cached_resource_class() -> type[Resource]:
    from opentelemetry.sdk.resources import Resource

    class _SharedResource(Resource):
        # The OTLP encoder groups spans by resource in a dict, and Resource.__hash__ dumps
        # its attributes to JSON on every call: once per span. Ours never changes.
        def __init__(self, attributes: dict[str, Any]) -> None:
            super().__init__(attributes)
            self._cached_hash = super().__hash__()

        def __hash__(self) -> int:
            return self._cached_hash

    return _SharedResource


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------


class _Notes:
    """Anomalies met while building one call's spans: each kind reported once per call."""

    __slots__ = ("kinds",)

    def __init__(self) -> None:
        self.kinds: set[str] = set()

    def add(self, kind: str) -> None:
        self.kinds.add(kind)


class _EventIndex:
    """The trace's events, deduplicated and grouped by the function call that emitted them."""

    __slots__ = ("by_id", "by_owner", "ns", "orphans")

    def __init__(self) -> None:
        self.by_id: dict[str, Event] = {}
        self.ns: dict[str, int | None] = {}
        self.by_owner: dict[str, list[Event]] = {}
        self.orphans: list[Event] = []


class SpanBuilder:
    """Builds the spans of finished calls. Holds only immutable, shared pieces: thread-safe."""

    def __init__(
        self,
        *,
        resource: Resource | None = None,
        error_messages: bool = True,
        error_message_length: int = 256,
        observer: Observer | None = None,
        genai_conventions: bool = False,
    ) -> None:
        """`genai_conventions`: the GenAI layout as well (`exporter.traces.genai`)."""
        # Deferred so that importing this module (for trace_id_for) stays cheap.
        from opentelemetry.sdk.trace import Event as SpanEvent
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util import BoundedList
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
        from opentelemetry.trace.status import Status, StatusCode

        self._span = ReadableSpan
        self._event = SpanEvent
        self._bounded = BoundedList
        self._context = SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._server = SpanKind.SERVER
        self._internal = SpanKind.INTERNAL
        self._status_cls = Status
        self._error_code = StatusCode.ERROR
        self._unset = Status(StatusCode.UNSET)
        self._errors: dict[str, tuple[str, Status]] = {}
        self._resource = resource if resource is not None else make_resource("bem")
        self._scope: InstrumentationScope = InstrumentationScope(SCOPE_NAME, __version__)
        self._messages = error_messages
        self._message_length = max(0, error_message_length)
        self._observer = observer
        self._genai = genai_conventions

    @property
    def resource(self) -> Resource:
        return self._resource

    def build(self, finished: FinishedCall, anomalies: list[str] | None = None) -> list[ReadableSpan]:
        """The call span first, then one span per distinct function call in trace order.

        Anomalies go to the builder's observer, or into `anomalies` when given: a sink that may
        build the same call again (its export failed) reports them once it was delivered."""
        call, trace = finished.call, finished.trace
        notes = _Notes()
        function_calls = _unique_function_calls(trace.function_calls, notes)
        events = _index_events(trace.events, function_calls, notes)
        parents = _resolve_parents(function_calls, events, notes)
        _break_cycles(parents, notes)

        trace_id = trace_id_int(call.call_id)
        context = self._context
        sampled = self._sampled
        call_context = context(trace_id, call_span_id_int(call.call_id), False, sampled)
        contexts = {
            fc_id: context(trace_id, function_call_span_id_int(fc_id), False, sampled) for fc_id in function_calls
        }
        call_start = to_ns(call.created_at)
        call_end = to_ns(call.finished_at) if call.finished_at is not None else None

        spans: list[ReadableSpan] = []
        latest = call_start
        synthetic = is_synthetic(call)
        for fc_id, fc in function_calls.items():
            parent_id = parents[fc_id]
            span = self._function_call_span(
                fc,
                contexts[fc_id],
                contexts[parent_id] if parent_id is not None else call_context,
                events,
                call_start,
                call_end,
                notes,
                synthetic,
            )
            end = span.end_time or 0
            if end > latest:
                latest = end
            spans.append(span)
        counts = (len(function_calls), len(events.by_id), trace.rejected)
        call_span = self._call_span(call, call_context, call_start, call_end, latest, events, counts, notes)
        self._report(notes, call.call_id, anomalies)
        return [call_span, *spans]

    # -- the call span -------------------------------------------------------------------------

    def _call_span(
        self,
        call: Call,
        span_context: SpanContext,
        start: int,
        end: int | None,
        latest: int,
        events: _EventIndex,
        counts: tuple[int, int, int],
        notes: _Notes,
    ) -> ReadableSpan:
        if end is None:
            notes.add(MISSING_FINISHED_AT)
            end = max(latest, _latest_event_ns(events))
        if end < start:
            notes.add(END_BEFORE_START)
            end = start
        failed = call.status == "failed"
        function_call_count, event_count, rejected = counts
        attributes = _call_attributes(call, failed, notes)
        attributes["bem.call.function_call_count"] = function_call_count
        attributes["bem.call.event_count"] = event_count
        errors = [e for e in events.by_id.values() if e.is_error]
        attributes["bem.call.error_count"] = len(errors)
        if rejected:
            attributes["bem.trace.rejected_records"] = rejected
        status = self._unset
        if failed:
            attributes["error.type"], status = self._error(_first_error_kind(errors, events.ns) or "failed")
        if is_synthetic(call):
            attributes["bem.synthetic"] = True
        span_events = self._span_events(events.orphans, events.ns, start, notes) if events.orphans else ()
        name, kind = self._genai_call(call, attributes) if self._genai else (call_span_name(call), self._server)
        return self._span(
            name,
            context=span_context,
            parent=None,
            resource=self._resource,
            attributes=attributes,
            events=span_events,
            kind=kind,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=self._scope,
        )

    # -- function-call spans ---------------------------------------------------------------------

    def _function_call_span(
        self,
        fc: FunctionCall,
        span_context: SpanContext,
        parent: SpanContext,
        events: _EventIndex,
        call_start: int,
        call_end: int | None,
        notes: _Notes,
        synthetic: bool,
    ) -> ReadableSpan:
        owned = events.by_owner.get(fc.function_call_id, ())
        ns = events.ns
        summary = _summarize(owned, ns)
        start = self._start(fc, events, summary, call_start, notes)
        end = self._end(fc, summary, call_end, start, notes)
        failed = fc.status == "failed" or (not fc.status and summary.error_count > 0)
        attributes = _function_call_attributes(fc, failed, notes)
        attributes["bem.function_call.event_count"] = len(owned)
        attributes["bem.function_call.error_count"] = summary.error_count
        if summary.max_try is not None:
            attributes["bem.function_call.max_try_number"] = _int64(summary.max_try, notes)
            attributes["bem.function_call.try_count"] = len(summary.tries)
        if summary.confidence is not None:
            attributes["bem.function_call.avg_confidence"] = summary.confidence
        status = self._unset
        if failed:
            attributes["error.type"], status = self._error(summary.first_error_kind or "failed")
        if synthetic:
            attributes["bem.synthetic"] = True
        if self._genai:
            attributes.update(genai.function_call_attributes(attributes["bem.function.type"]))
        return self._span(
            bounded(fc.function_name or fc.function_type or "function_call"),
            context=span_context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            events=self._span_events(owned, ns, start, notes) if owned else (),
            kind=self._internal,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=self._scope,
        )

    def _genai_call(self, call: Call, attributes: dict[str, Any]) -> tuple[str, SpanKind]:
        """The GenAI name and kind of a call's span, its GenAI attributes added to `attributes`:
        a workflow call is an `invoke_workflow` span; a function call keeps its default layout."""
        workflow = genai.invoked_workflow(call)
        shown = bounded(workflow) if workflow is not None else None
        attributes.update(genai.call_attributes(shown))
        if shown is None:
            return call_span_name(call), self._server
        return bounded(genai.call_span_name(shown)), self._internal

    def _start(self, fc: FunctionCall, events: _EventIndex, summary: _Summary, call_start: int, notes: _Notes) -> int:
        if fc.started_at is not None:
            return to_ns(fc.started_at)
        notes.add(MISSING_STARTED_AT)
        # When it was spawned is the best lower bound; then its own first sign of life.
        source = events.ns.get(fc.source_event_id) if fc.source_event_id else None
        if source is not None:
            return source
        return summary.first_ns if summary.first_ns is not None else call_start

    def _end(self, fc: FunctionCall, summary: _Summary, call_end: int | None, start: int, notes: _Notes) -> int:
        if fc.finished_at is not None:
            end = to_ns(fc.finished_at)
        else:
            notes.add(MISSING_FINISHED_AT)
            # A step still pending/running when the call ended was cut off by the call's end;
            # a finished one ended with its last event.
            cut_off = fc.status not in _TERMINAL
            candidates = (call_end, summary.last_ns) if cut_off else (summary.last_ns, call_end)
            end = next((c for c in candidates if c is not None), start)
        if end < start:
            notes.add(END_BEFORE_START)
            end = start
        return end

    def _span_events(
        self, owned: Sequence[Event], ns: dict[str, int | None], fallback: int, notes: _Notes
    ) -> Sequence[Any]:
        make = self._event
        out = []
        for event in owned[:MAX_EVENTS_PER_SPAN]:
            at = ns[event.event_id]
            name = bounded(event.event_type or "event")
            out.append(make(name, self._event_attributes(event, notes), at if at is not None else fallback))
        if len(owned) > MAX_EVENTS_PER_SPAN:
            # A BoundedList carries the dropped count into the OTLP `dropped_events_count`.
            kept: BoundedList[Any] = self._bounded(MAX_EVENTS_PER_SPAN)
            kept.extend(out)
            kept.dropped = len(owned) - MAX_EVENTS_PER_SPAN
            return kept
        return out

    def _event_attributes(self, event: Event, notes: _Notes) -> dict[str, Any]:
        # The event's type is its name; repeating it as an attribute would cost encoding time.
        attributes: dict[str, Any] = {"bem.event.id": bounded(event.event_id)}
        if event.try_number is not None:
            attributes["bem.function_call.try_number"] = _int64(event.try_number, notes)
        if event.metadata is not None and event.metadata.duration_seconds is not None:
            attributes["bem.event.duration_seconds"] = event.metadata.duration_seconds
        if event.avg_confidence is not None:
            attributes["bem.event.avg_confidence"] = event.avg_confidence
        if event.kind is not None:
            attributes["bem.error.kind"] = self._error(event.kind)[0]
        if event.message is not None and self._messages and self._message_length:
            attributes["bem.error.message"] = safe_message(event.message, self._message_length)
        return attributes

    def _error(self, kind: str) -> tuple[str, Status]:
        """The error kind (made safe at decoding) and the ERROR status it names."""
        known = self._errors.get(kind)
        if known is None:
            if len(self._errors) >= _ERROR_CACHE_LIMIT:  # hostile kinds must not grow it forever
                self._errors = {}
            # A benign race between threads at worst builds the same Status twice.
            known = self._errors[kind] = (kind, self._status_cls(self._error_code, kind))
        return known

    def _report(self, notes: _Notes, call_id: str, anomalies: list[str] | None) -> None:
        for kind in sorted(notes.kinds):
            log.debug("trace of call %s: %s worked around", call_id, kind)
            if anomalies is not None:
                anomalies.append(kind)
            elif self._observer is not None:
                self._observer.trace_anomaly(kind)


def build_spans(finished: FinishedCall, builder: SpanBuilder | None = None) -> list[ReadableSpan]:
    """Convenience for one-off use (tests, the terminal tree); the sinks keep one builder."""
    return (builder or _default_builder()).build(finished)


@functools.cache
def _default_builder() -> SpanBuilder:
    return SpanBuilder()


# ---------------------------------------------------------------------------------------------
# Attributes
# ---------------------------------------------------------------------------------------------


def _call_attributes(call: Call, failed: bool, notes: _Notes) -> dict[str, Any]:
    call_id = bounded(call.call_id)
    attributes: dict[str, Any] = {
        "bem.call.id": call_id,
        "bem.call.status": bounded(call.status),
        "cicd.pipeline.name": bounded(pipeline_name(call)),
        "cicd.pipeline.run.id": call_id,
        "cicd.pipeline.result": "failure" if failed else "success",
    }
    optional = (
        ("bem.call.reference_id", call.reference_id),
        ("bem.call.type", call.call_type),
        ("bem.workflow.name", call.workflow_name),
        ("bem.workflow.id", call.workflow_id),
        ("bem.workflow.version", _int64_or_none(call.workflow_version, notes)),
        ("bem.function.name", call.function_name),
        ("bem.function.id", call.function_id),
        ("bem.function.type", call.function_type),
        ("bem.function.version", _int64_or_none(call.function_version, notes)),
    )
    for key, value in optional:
        if value is not None:
            attributes[key] = bounded(value) if isinstance(value, str) else value
    return attributes


def _function_call_attributes(fc: FunctionCall, failed: bool, notes: _Notes) -> dict[str, Any]:
    function_call_id, name = bounded(fc.function_call_id), bounded(fc.function_name)
    attributes: dict[str, Any] = {
        "bem.function_call.id": function_call_id,
        "bem.function_call.status": bounded(fc.status),
        "bem.function.name": name,
        "bem.function.type": bounded(fc.function_type),
        "cicd.pipeline.task.name": name,
        "cicd.pipeline.task.run.id": function_call_id,
        "cicd.pipeline.task.run.result": "failure" if failed else "success",
    }
    if fc.function_id is not None:
        attributes["bem.function.id"] = bounded(fc.function_id)
    if fc.function_version is not None:
        attributes["bem.function.version"] = _int64(fc.function_version, notes)
    if fc.workflow_node_name is not None:
        attributes["bem.workflow.node_name"] = bounded(fc.workflow_node_name)
    if fc.incoming_destination_name is not None:
        attributes["bem.incoming_destination_name"] = bounded(fc.incoming_destination_name)
    return attributes


def _int64(value: int, notes: _Notes) -> int:
    if INT64_MIN <= value <= INT64_MAX:
        return value
    notes.add(NUMBER_OUT_OF_RANGE)
    return INT64_MAX if value > 0 else INT64_MIN


def _int64_or_none(value: int | None, notes: _Notes) -> int | None:
    return None if value is None else _int64(value, notes)


def safe_message(message: str, limit: int) -> str:
    """An error message as exported: URLs cut down to scheme, host and path, tokens masked, at
    most `limit` characters (a megabyte of text is cut before any scan)."""
    return redact_text(message, limit=limit)


# ---------------------------------------------------------------------------------------------
# The DAG: indexing, parents, cycles (each O(n))
# ---------------------------------------------------------------------------------------------


def _unique_function_calls(function_calls: Sequence[FunctionCall], notes: _Notes) -> dict[str, FunctionCall]:
    unique: dict[str, FunctionCall] = {}
    for fc in function_calls:
        if fc.function_call_id in unique:
            notes.add(DUPLICATE_ID)
            continue
        unique[fc.function_call_id] = fc
    return unique


def _index_events(events: Sequence[Event], function_calls: dict[str, FunctionCall], notes: _Notes) -> _EventIndex:
    index = _EventIndex()
    by_id, ns, by_owner, orphans = index.by_id, index.ns, index.by_owner, index.orphans
    for event in events:
        event_id = event.event_id
        if event_id in by_id:
            notes.add(DUPLICATE_ID)
            continue
        by_id[event_id] = event
        ns[event_id] = to_ns(event.created_at) if event.created_at is not None else None
        owner = event.function_call_id
        if owner is not None and owner in function_calls:
            group = by_owner.get(owner)
            if group is None:
                by_owner[owner] = [event]
            else:
                group.append(event)
        else:
            notes.add(UNKNOWN_EVENT_OWNER)
            orphans.append(event)
    return index


def _resolve_parents(
    function_calls: dict[str, FunctionCall], events: _EventIndex, notes: _Notes
) -> dict[str, str | None]:
    """Each function call's parent function call, or None for a child of the call span."""
    parents: dict[str, str | None] = {}
    roots = 0
    by_id = events.by_id
    for fc_id, fc in function_calls.items():
        source_event, source_fc = fc.source_event_id, fc.source_function_call_id
        parent: str | None = None
        if source_event:
            event = by_id.get(source_event)
            emitter = event.function_call_id if event is not None else None
            if emitter is not None and emitter in function_calls:
                parent = emitter
            else:
                notes.add(UNKNOWN_SOURCE_EVENT)
        if parent is None and source_fc and source_fc in function_calls:
            parent = source_fc
        if parent is None:
            if source_event or source_fc:
                notes.add(UNKNOWN_PARENT)
            else:
                roots += 1
        parents[fc_id] = parent
    if roots > 1:
        notes.add(MULTIPLE_ROOTS)
    return parents


def _break_cycles(parents: dict[str, str | None], notes: _Notes) -> None:
    """Reparent to the call span the first node found on each cycle, so that no span is its
    own ancestor. Each node is walked once: O(n)."""
    done: set[str] = set()
    for start in parents:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node not in done:
            if node in on_path:
                notes.add(CYCLE)
                parents[node] = None
                break
            path.append(node)
            on_path.add(node)
            node = parents[node]
        done.update(path)


# ---------------------------------------------------------------------------------------------
# Per-function-call event summary
# ---------------------------------------------------------------------------------------------


class _Summary:
    __slots__ = ("confidence", "error_count", "first_error_kind", "first_ns", "last_ns", "max_try", "tries")

    def __init__(self) -> None:
        self.error_count = 0
        self.first_error_kind: str | None = None
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.max_try: int | None = None
        self.tries: set[int] = set()
        self.confidence: float | None = None


def _summarize(owned: Sequence[Event], ns: dict[str, int | None]) -> _Summary:
    summary = _Summary()
    first_error_at: int | None = None
    for event in owned:
        at = ns[event.event_id]
        if at is not None:
            if summary.first_ns is None or at < summary.first_ns:
                summary.first_ns = at
            if summary.last_ns is None or at > summary.last_ns:
                summary.last_ns = at
        if event.try_number is not None:
            summary.tries.add(event.try_number)
            if summary.max_try is None or event.try_number > summary.max_try:
                summary.max_try = event.try_number
        if event.avg_confidence is not None:
            summary.confidence = event.avg_confidence
        if event.event_type == "error":
            summary.error_count += 1
            # The first error (by time, then trace order) that says what kind it was.
            if event.kind and (summary.first_error_kind is None or _earlier(at, first_error_at)):
                summary.first_error_kind = event.kind
                first_error_at = at
    return summary


def _first_error_kind(errors: Iterable[Event], ns: dict[str, int | None]) -> str | None:
    kind: str | None = None
    kind_at: int | None = None
    for event in errors:
        if event.kind and (kind is None or _earlier(ns[event.event_id], kind_at)):
            kind, kind_at = event.kind, ns[event.event_id]
    return kind


def _earlier(at: int | None, than: int | None) -> bool:
    """Strictly earlier; an unknown time sorts last so that trace order decides."""
    return at is not None and (than is None or at < than)


def _latest_event_ns(events: _EventIndex) -> int:
    return max((at for at in events.ns.values() if at is not None), default=0)

"""Tolerant decoding of API responses into records.

A response is decoded in two steps: the envelope keeps each record as raw JSON, then each
record is decoded on its own. A record that cannot be decoded is counted and skipped; its
neighbours still arrive. Errors raised here never carry payload content.

Some faults are lexical and would fail the envelope itself, and so every record of the page:
a lone UTF-16 surrogate escape (`"\\ud83d"`, what Python's `json.dumps` writes for a cut
emoji), invalid UTF-8 inside a string, a non-finite number. A body the fast decoder rejects is
read once more by a tolerant parser that marks each such value unreadable (`_sanitized`), so
that only the records holding one in a field the exporter reads are rejected; the same value in
an ignored field costs nothing. Only a body even the tolerant parser cannot read (truncated,
not JSON) is a malformed response.

Every record leaves with its names made safe (`_safe_names`: the `NAMES` of its type through
`exporter.redact.safe_name`). Names repeat, so a list whose names were all seen before is
checked in one C-level pass, without a Python call per record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import attrgetter
from typing import Any, TypeVar

import msgspec

from exporter.bem.models import Call, Event, FunctionCall, Trace
from exporter.redact import known_safe, safe_name


class DecodeError(Exception):
    """A response body that is not the expected JSON envelope at all (truncated, not JSON)."""


class _ListEnvelope(msgspec.Struct):
    # Only what is used is declared, and `totalCount` raw: a field of the wrong type cannot
    # make a page of good records undecodable.
    calls: list[msgspec.Raw] = []
    totalCount: msgspec.Raw = msgspec.Raw(b"null")


_NULL = msgspec.Raw(b"null")


class _TraceBody(msgspec.Struct):
    # Kept raw and decoded one list at a time: `functionCalls` of the wrong type must not
    # take the trace's events with it (or the other way round).
    functionCalls: msgspec.Raw = _NULL
    events: msgspec.Raw = _NULL


class _TraceEnvelope(msgspec.Struct):
    trace: _TraceBody | None = None


class _CallEnvelope(msgspec.Struct):
    # msgspec.Raw cannot sit in a union; an absent call stays the raw JSON `null`.
    call: msgspec.Raw = msgspec.Raw(b"null")


class _V2CallWithTrace(msgspec.Struct):
    trace: _TraceBody | None = None


@dataclass(frozen=True, slots=True)
class CallPage:
    """One page of a call listing."""

    calls: list[Call]
    """The records that decoded."""
    ids: list[str | None]
    """Every record's `callID` in listing order; None where even the id is unreadable."""
    rejected_ids: list[str]
    """Ids of records that did not decode but have a readable `callID` (re-read later)."""
    total_count: int | None = None
    """The listing's `totalCount` (every call the filter matches), when it is a count."""

    @property
    def size(self) -> int:
        """How many records the page held: the listing ends with a short page."""
        return len(self.ids)

    @property
    def rejected(self) -> int:
        return len(self.ids) - len(self.calls)

    @property
    def last_call_id(self) -> str | None:
        """The last readable id, even of a rejected record: the next cursor."""
        return next((call_id for call_id in reversed(self.ids) if call_id is not None), None)

    @property
    def first_unidentified(self) -> int | None:
        """Position of the first record without a readable id, if any."""
        return self.ids.index(None) if None in self.ids else None


# Records decode strictly: lax mode would read a number as an epoch timestamp and count a
# garbled call with a made-up duration. A record of the wrong shape is rejected instead.
_call = msgspec.json.Decoder(Call)
_function_call = msgspec.json.Decoder(FunctionCall)
_event = msgspec.json.Decoder(Event)
_list = msgspec.json.Decoder(_ListEnvelope, strict=False)
_trace = msgspec.json.Decoder(_TraceEnvelope, strict=False)
_call_envelope = msgspec.json.Decoder(_CallEnvelope, strict=False)
_v2_trace = msgspec.json.Decoder(_V2CallWithTrace, strict=False)


class _IdOnly(msgspec.Struct):
    callID: str | None = None


_id_only = msgspec.json.Decoder(_IdOnly, strict=False)
_json_value = msgspec.json.Decoder()


T = TypeVar("T")


class _OutOfRangeError(ValueError):
    """A timestamp no span can carry."""


_INVALID = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, _OutOfRangeError)
"""What decoding bad input raises. msgspec raises RecursionError for JSON nested deeper than
the interpreter's limit: uncaught, one such body would crash every poll cycle that met it."""

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2262, 4, 11, tzinfo=UTC)
"""Timestamps outside these bounds are rejected with their record. OTLP carries times as
unsigned 64-bit nanoseconds since 1970 (and backends as signed ones, up to 2262): a span
outside cannot be encoded, and its export would fail on every retry, holding up the spans of
every call queued behind it."""


def _check_times(*moments: datetime | None) -> None:
    for moment in moments:
        if moment is None:
            continue
        if moment.tzinfo is None:  # the span builder reads a naive time as UTC
            moment = moment.replace(tzinfo=UTC)
        if not _EARLIEST <= moment < _LATEST:
            raise _OutOfRangeError


def _decode_call(raw: bytes) -> Call:
    call = _call.decode(raw)
    _check_times(call.created_at, call.finished_at)
    return call


def decode_envelope(decoder: msgspec.json.Decoder[T], body: bytes | msgspec.Raw, what: str) -> T:
    """`body` decoded by `decoder`, read once more past lexical faults (see the module's doc);
    `DecodeError` naming `what` for a body that is not JSON at all. Public for the other readers
    of bem (exporter/quality/), whose records are then decoded one by one like the calls'."""
    try:
        return decoder.decode(body)
    except _INVALID:
        pass
    try:
        return decoder.decode(_sanitized(body))
    except (*_INVALID, ValueError):
        # The message of msgspec's error may quote the payload; ours names only the endpoint.
        raise DecodeError(f"{what}: response body is not the expected JSON") from None


_UNREADABLE: list[str] = ["unreadable value"]
"""Stands in for a value the fast decoder cannot read: a list, which no field of a record
accepts, so a record that reads the field is rejected and one that ignores it is not."""


def _sanitized(body: bytes | msgspec.Raw) -> bytes:
    """`body` re-encoded with every unreadable string or number replaced by `_UNREADABLE`.
    Raises ValueError (or RecursionError) if the body is not JSON even to a tolerant parser."""
    text = bytes(body).decode("utf-8", errors="surrogateescape")  # bad bytes become lone surrogates
    parsed = json.loads(text)
    return json.dumps(_readable(parsed), ensure_ascii=False).encode()


def _readable(value: object) -> object:
    if isinstance(value, str):
        return value if _encodable(value) else _UNREADABLE
    if isinstance(value, float):
        return value if math.isfinite(value) else _UNREADABLE
    if isinstance(value, list):
        return [_readable(item) for item in value]
    if isinstance(value, dict):
        # A key no field is named after is ignored, whatever it holds.
        return {_key(key): _readable(item) for key, item in value.items()}
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _key(key: str) -> str:
    return key if _encodable(key) else key.encode(errors="replace").decode()


R = TypeVar("R", Call, FunctionCall, Event)

_NAME_GETTERS: dict[type[Any], Callable[[Any], tuple[str | None, ...]]] = {
    record: attrgetter(*record.NAMES) for record in (Call, FunctionCall, Event)
}


def _safe_names(records: list[R]) -> list[R]:
    """`records` with every name made safe; the same list when all are known safe already."""
    if not records:
        return records
    names = _NAME_GETTERS[type(records[0])]
    if known_safe(chain.from_iterable(map(names, records))):
        return records
    return [_safe_record(record, names(record)) for record in records]


def _safe_record(record: R, values: tuple[str | None, ...]) -> R:
    changes = {}
    for field, value in zip(record.NAMES, values, strict=True):
        if value is not None:
            safe = safe_name(value)
            if safe != value:
                changes[field] = safe
    return msgspec.structs.replace(record, **changes) if changes else record


def decode_call_page(body: bytes) -> CallPage:
    envelope = decode_envelope(_list, body, "list calls")
    calls: list[Call] = []
    ids: list[str | None] = []
    rejected_ids: list[str] = []
    for raw in envelope.calls:
        try:
            call = _decode_call(raw)
        except _INVALID:
            call_id = _call_id(raw)
            ids.append(call_id)
            if call_id is not None:
                rejected_ids.append(call_id)
            continue
        calls.append(call)
        ids.append(call.call_id)
    return CallPage(
        calls=_safe_names(calls), ids=ids, rejected_ids=rejected_ids, total_count=_count(envelope.totalCount)
    )


def _count(raw: msgspec.Raw) -> int | None:
    try:
        value = _json_value.decode(raw)
    except _INVALID:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _call_id(raw: msgspec.Raw) -> str | None:
    try:
        return _id_only.decode(raw).callID or None
    except _INVALID:
        return None


def decode_trace(body: bytes) -> Trace:
    """The trace of `GET /v3/calls/{id}/trace`."""
    return _trace_records(decode_envelope(_trace, body, "get trace").trace)


def decode_v2_trace(body: bytes) -> Trace:
    """The trace embedded in `GET /v2/calls/{id}` (legacy accounts)."""
    envelope = decode_envelope(_call_envelope, body, "get call")
    if envelope.call == b"null":
        return Trace()
    return _trace_records(decode_envelope(_v2_trace, envelope.call, "get call").trace)


_raw_list = msgspec.json.Decoder(list[msgspec.Raw] | None)


def _raw_records(raw: msgspec.Raw) -> tuple[list[msgspec.Raw], int]:
    """The records of a list field, and 1 rejected if the field is not a list at all."""
    try:
        return _raw_list.decode(raw) or [], 0
    except _INVALID:
        return [], 1


def _trace_records(body: _TraceBody | None) -> Trace:
    if body is None:
        return Trace()
    raw_function_calls, rejected = _raw_records(body.functionCalls)
    raw_events, bad_events = _raw_records(body.events)
    rejected += bad_events
    function_calls: list[FunctionCall] = []
    for raw in raw_function_calls:
        try:
            function_call = _function_call.decode(raw)
            _check_times(function_call.started_at, function_call.finished_at)
        except _INVALID:
            rejected += 1
            continue
        function_calls.append(function_call)
    events: list[Event] = []
    for raw in raw_events:
        try:
            event = _event.decode(raw)
            _check_times(event.created_at)
        except _INVALID:
            rejected += 1
            continue
        events.append(event)
    return Trace(
        function_calls=tuple(_safe_names(function_calls)), events=tuple(_safe_names(events)), rejected=rejected
    )

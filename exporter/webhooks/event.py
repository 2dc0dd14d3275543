"""What the exporter reads from a verified delivery: the event's id, and which call it names.

Only these fields are decoded; the rest of the event (extracted content, presigned URLs, the
inbound email) is never looked at, kept or logged. A body that is not a JSON object with a
non-empty `eventID` and an `eventType` is not a bem event (400). `eventType` is an open set:
any value is accepted, as new function types bring new events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import msgspec

MAX_ID_LENGTH = 256
"""Longer ids are not bem's: refused rather than sent on to the API."""


class _Event(msgspec.Struct):
    event_id: str = msgspec.field(name="eventID")
    event_type: str = msgspec.field(name="eventType")
    call_id: str | None = msgspec.field(name="callID", default=None)
    created_at: str | None = msgspec.field(name="createdAt", default=None)


_decode = msgspec.json.Decoder(_Event).decode


@dataclass(frozen=True, slots=True)
class Hint:
    """An accepted event as the poll loop sees it: read this call now (or, with no call,
    list now)."""

    event_id: str
    call_id: str | None
    created_at: float | None
    """Epoch seconds of the event's `createdAt`, when it has a readable one."""


class NotAnEventError(ValueError):
    """The body is not a bem event; the message says why without quoting it."""


def parse_event(body: bytes) -> Hint:
    try:
        event = _decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise NotAnEventError(_reason(error)) from None
    if not event.event_id or len(event.event_id) > MAX_ID_LENGTH:
        raise NotAnEventError("eventID is empty or too long")
    call_id = event.call_id or None
    if call_id is not None and len(call_id) > MAX_ID_LENGTH:
        raise NotAnEventError("callID is too long")
    return Hint(event.event_id, call_id, _epoch(event.created_at))


def _reason(error: Exception) -> str:
    """msgspec's message names the field (`Expected str, got int - at $.callID`), never a value."""
    return str(error).split("\n", 1)[0][:200]


def _epoch(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None

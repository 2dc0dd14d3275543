"""Typed records of bem's Calls API.

The records declare only the fields the exporter may use: ids, names, types, versions,
statuses, timestamps, counts, confidences, durations, error kind and message. Everything else
in a payload (document content, presigned URLs, inbound email, bodies) is skipped by the
decoder and never reaches memory, so no later stage can leak it: an allow-list by
construction.

Enumerations (status, call type, function type, event type, error kind) are plain strings:
bem adds values over time and the exporter keeps unknown ones as they come.

Every name, type, status, kind and shown id (`NAMES` of each record) is free text as far as
the exporter knows: the decoder passes each through `exporter.redact.safe_name` before the
record leaves it (URLs cut down, tokens masked, at most 128 characters), so nothing
downstream (labels, span names and attributes, the status page, the state's snapshot) ever
holds the raw text. The ids the exporter needs as sent (call, function call and event ids:
the API's paths, the cursor, the DAG, the trace ids) are ids, kept as they came.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

import msgspec

FINISHED_STATUSES = frozenset({"completed", "failed"})
NO_WORKFLOW = "(none)"
"""The `workflow_name` of a call that runs a single function rather than a workflow."""

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An integer a span attribute can carry (OTLP's int64): a record with a number outside is
rejected at decoding, as its export would be refused on every retry and hold up the spans of
every call queued behind it."""


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow (or function) call, as listed by `GET /v3/calls` or `GET /v2/calls`."""

    call_id: str = msgspec.field(name="callID")
    status: str
    created_at: datetime = msgspec.field(name="createdAt")
    finished_at: datetime | None = msgspec.field(name="finishedAt", default=None)
    call_type: str | None = msgspec.field(name="callType", default=None)
    reference_id: str | None = msgspec.field(name="callReferenceID", default=None)
    workflow_id: str | None = msgspec.field(name="workflowID", default=None)
    workflow_name: str | None = msgspec.field(name="workflowName", default=None)
    workflow_version: Int64 | None = msgspec.field(name="workflowVersionNum", default=None)
    function_id: str | None = msgspec.field(name="functionID", default=None)
    function_name: str | None = msgspec.field(name="functionName", default=None)
    function_type: str | None = msgspec.field(name="functionType", default=None)
    function_version: Int64 | None = msgspec.field(name="functionVersionNum", default=None)

    NAMES: ClassVar[tuple[str, ...]] = (
        "status",
        "call_type",
        "reference_id",
        "workflow_id",
        "workflow_name",
        "function_id",
        "function_name",
        "function_type",
    )
    """Fields made safe at decoding (`exporter.redact.safe_name`)."""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def workflow_label(self) -> str:
        """The `workflow_name` label value: the workflow's name, or `(none)` for a function call."""
        return self.workflow_name or NO_WORKFLOW


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a call's DAG, from a call's trace."""

    function_call_id: str = msgspec.field(name="functionCallID")
    function_id: str | None = msgspec.field(name="functionID", default=None)
    function_name: str = msgspec.field(name="functionName", default="")
    function_type: str = msgspec.field(name="type", default="")
    function_version: Int64 | None = msgspec.field(name="functionVersionNum", default=None)
    status: str = ""
    started_at: datetime | None = msgspec.field(name="startedAt", default=None)
    finished_at: datetime | None = msgspec.field(name="finishedAt", default=None)
    source_event_id: str | None = msgspec.field(name="sourceEventID", default=None)
    source_function_call_id: str | None = msgspec.field(name="sourceFunctionCallID", default=None)
    workflow_node_name: str | None = msgspec.field(name="workflowNodeName", default=None)
    incoming_destination_name: str | None = msgspec.field(name="incomingDestinationName", default=None)

    NAMES: ClassVar[tuple[str, ...]] = (
        "function_id",
        "function_name",
        "function_type",
        "status",
        "workflow_node_name",
        "incoming_destination_name",
    )


class EventMetadata(msgspec.Struct, frozen=True):
    duration_seconds: float | None = msgspec.field(name="durationFunctionToEventSeconds", default=None)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One event a function call emitted. `message` and `kind` are set on error events."""

    event_id: str = msgspec.field(name="eventID")
    event_type: str = msgspec.field(name="eventType", default="")
    created_at: datetime | None = msgspec.field(name="createdAt", default=None)
    function_call_id: str | None = msgspec.field(name="functionCallID", default=None)
    try_number: Int64 | None = msgspec.field(name="functionCallTryNumber", default=None)
    function_id: str | None = msgspec.field(name="functionID", default=None)
    function_name: str | None = msgspec.field(name="functionName", default=None)
    function_version: Int64 | None = msgspec.field(name="functionVersionNum", default=None)
    metadata: EventMetadata | None = None
    message: str | None = None
    kind: str | None = None
    avg_confidence: float | None = msgspec.field(name="avgConfidence", default=None)

    NAMES: ClassVar[tuple[str, ...]] = ("event_type", "function_id", "function_name", "kind")
    """The message is not among them: it is free text by nature, redacted (and bounded to its
    own, longer limit) where it is exported, and can be kept in altogether."""

    @property
    def is_error(self) -> bool:
        return self.event_type == "error"

    @property
    def duration_seconds(self) -> float | None:
        return self.metadata.duration_seconds if self.metadata is not None else None


class Trace(msgspec.Struct, frozen=True, kw_only=True):
    """A call's function calls and events (flat; the DAG is rebuilt from the ids)."""

    function_calls: tuple[FunctionCall, ...] = ()
    events: tuple[Event, ...] = ()
    rejected: int = 0
    """Function calls and events in the payload that could not be decoded and were skipped."""

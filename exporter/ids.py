"""Names shared by the span builder and the metrics: trace and span ids, anomaly kinds.

Ids are derived from bem's ids by SHA-256, so anyone can compute a call's trace id, a
re-export yields identical spans, and an exemplar links a latency bucket to its trace. Cheap
to import: no OpenTelemetry here.
"""

from __future__ import annotations

import hashlib
from typing import Final

CANARY_REFERENCE_PREFIX: Final = "bem-exporter-canary-"
"""The `callReferenceID` prefix of the exporter's own canary calls; their spans carry
`bem.synthetic=true`."""

# Anomaly kinds reported to `Observer.trace_anomaly` (also listed in docs/traces.md).
DUPLICATE_ID: Final = "duplicate_id"
UNKNOWN_SOURCE_EVENT: Final = "unknown_source_event"
UNKNOWN_PARENT: Final = "unknown_parent"
MULTIPLE_ROOTS: Final = "multiple_roots"
CYCLE: Final = "cycle"
MISSING_FINISHED_AT: Final = "missing_finished_at"
MISSING_STARTED_AT: Final = "missing_started_at"
END_BEFORE_START: Final = "end_before_start"
UNKNOWN_EVENT_OWNER: Final = "unknown_event_owner"
UNBUILDABLE: Final = "unbuildable"
"""A call the span builder failed on (a bug): skipped so it cannot block the calls behind it."""
NUMBER_OUT_OF_RANGE: Final = "number_out_of_range"
"""An integer outside OTLP's int64 range, clamped to the nearest end of it."""


def _digest(prefix: bytes, ident: str) -> bytes:
    return hashlib.sha256(prefix + ident.encode()).digest()


def trace_id_int(call_id: str) -> int:
    return int.from_bytes(_digest(b"bem.call:", call_id)[:16], "big")


def trace_id_for(call_id: str) -> str:
    """The call's trace id as 32 lowercase hex digits (for exemplars and links)."""
    return _digest(b"bem.call:", call_id)[:16].hex()


def call_span_id_int(call_id: str) -> int:
    return int.from_bytes(_digest(b"bem.call.span:", call_id)[:8], "big")


def call_span_id_for(call_id: str) -> str:
    return _digest(b"bem.call.span:", call_id)[:8].hex()


def function_call_span_id_int(function_call_id: str) -> int:
    return int.from_bytes(_digest(b"bem.function_call:", function_call_id)[:8], "big")


def function_call_span_id_for(function_call_id: str) -> str:
    return _digest(b"bem.function_call:", function_call_id)[:8].hex()

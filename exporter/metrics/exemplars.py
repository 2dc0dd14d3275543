"""Exemplar labels: the trace (and span) a latency observation came from.

Ids are derived, like the spans' ids, from bem's ids (`exporter.ids`), so an exemplar links
to the trace the span exporter sent. They are computed when a scrape renders the exemplar,
not when one is recorded (most recorded exemplars are replaced before any scrape sees them),
and cached because the same exemplar is rendered on every scrape until it is replaced.
"""

from __future__ import annotations

from functools import lru_cache

from exporter.ids import function_call_span_id_for, trace_id_for

_CACHE_SIZE = 8192
"""Above the number of exemplar slots of a typical deployment (series x buckets)."""


@lru_cache(maxsize=_CACHE_SIZE)
def exemplar_labels(call_id: str, function_call_id: str | None) -> dict[str, str]:
    """`{trace_id}` for a call, `{trace_id, span_id}` for a function call. The dict is shared
    between scrapes: callers must not mutate it."""
    labels = {"trace_id": trace_id_for(call_id)}
    if function_call_id is not None:
        labels["span_id"] = function_call_span_id_for(function_call_id)
    return labels

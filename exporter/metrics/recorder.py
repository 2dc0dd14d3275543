"""The `CallRecorder` of the metrics sink: finished calls -> counters and histograms.

Every finished call is folded into a stage of the series store (`store.py`); the stage turns
visible only on `publish()`, after the poller has persisted the snapshot `stage()` returned
together with the calls' "handled" marks. See `exporter.pipeline` for the handshake.

This is the hot path: `_record` runs once per finished call and loops over its function calls
and events with locals bound up front; label values come from the folders' caches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Final

from prometheus_client.metrics_core import Metric

from exporter.bem.models import Call, Trace
from exporter.metrics.exemplars import exemplar_labels
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.store import CounterSpec, HistogramSpec, SeriesStore, SnapshotError, Stage
from exporter.pipeline import FinishedCall

log = logging.getLogger(__name__)

CALLS_TOTAL: Final = "bem_calls_total"
CALL_DURATION: Final = "bem_call_duration_seconds"
CALL_QUEUE: Final = "bem_call_queue_seconds"
FUNCTION_CALLS_TOTAL: Final = "bem_function_calls_total"
FUNCTION_DURATION: Final = "bem_function_call_duration_seconds"
EVENTS_TOTAL: Final = "bem_events_total"
CALL_ERRORS_TOTAL: Final = "bem_call_errors_total"
CONFIDENCE: Final = "bem_function_confidence"
EXPORT_LAG: Final = "bem_exporter_export_lag_seconds"

CONFIDENCE_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
EXPORT_LAG_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
FINISHED: Final = ("completed", "failed")
"""Statuses whose series are created at zero on a workflow's (or function's) first sight, so
that rate() and increase() see the first failure as an increase from 0."""

_WF: Final = ("workflow_name",)
_WF_STATUS: Final = ("workflow_name", "status")
_FN: Final = ("workflow_name", "function_name", "function_type", "status")


def specs(
    call_buckets: tuple[float, ...], function_buckets: tuple[float, ...]
) -> tuple[list[CounterSpec], list[HistogramSpec]]:
    """The families of the counted metrics. Their values survive restarts (the snapshot)."""
    counters = [
        CounterSpec(CALLS_TOTAL, "Finished bem calls, each counted exactly once, as of the last poll.", _WF_STATUS),
        CounterSpec(
            FUNCTION_CALLS_TOTAL,
            "Function calls of finished bem calls, by the function call's own status, as of the last poll.",
            _FN,
        ),
        CounterSpec(
            EVENTS_TOTAL,
            "Events in the traces of finished bem calls by event type (error events included), as of the last poll.",
            ("workflow_name", "function_name", "event_type"),
        ),
        CounterSpec(
            CALL_ERRORS_TOTAL,
            "Error events in the traces of finished bem calls, retried tries included; error_kind "
            "is the event's kind, or unknown; as of the last poll.",
            ("workflow_name", "function_name", "error_kind"),
        ),
    ]
    histograms = [
        HistogramSpec(
            CALL_DURATION,
            "Duration of finished bem calls, createdAt to finishedAt, as of the last poll; "
            "exemplars carry the trace_id.",
            _WF_STATUS,
            call_buckets,
            unit="seconds",
            exemplars=True,
        ),
        HistogramSpec(
            CALL_QUEUE,
            "Time a finished bem call waited, createdAt to the first function call's startedAt, as of the last poll.",
            _WF,
            call_buckets,  # a queue under load lasts as long as calls do
            unit="seconds",
        ),
        HistogramSpec(
            FUNCTION_DURATION,
            "Duration of function calls of finished bem calls, startedAt to finishedAt, as of the last poll; exemplars "
            "carry trace_id and span_id.",
            _FN,
            function_buckets,
            unit="seconds",
            exemplars=True,
        ),
        HistogramSpec(
            CONFIDENCE,
            "avgConfidence of the events of finished bem calls that carry one (extract, transform, "
            "join), as of the last poll.",
            ("workflow_name", "function_name"),
            CONFIDENCE_BUCKETS,
        ),
        HistogramSpec(
            EXPORT_LAG,
            "Time from a call's finishedAt to the exporter counting it (poll interval plus trace fetch).",
            (),
            EXPORT_LAG_BUCKETS,
            unit="seconds",
        ),
    ]
    return counters, histograms


def _seconds(start: datetime, end: datetime) -> float | None:
    """`end - start` in seconds, clamped at 0 (clock skew between bem's services); None if
    the two cannot be compared (one without a time zone)."""
    try:
        seconds = (end - start).total_seconds()
    except TypeError:
        return None
    return seconds if seconds > 0.0 else 0.0


class MetricsRecorder:
    """Counts finished calls exactly once (a `CallRecorder`), and is the Collector of what it
    counts."""

    def __init__(
        self,
        labels: LabelPolicy,
        call_buckets: tuple[float, ...],
        function_buckets: tuple[float, ...],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._labels = labels
        self._clock = clock
        counters, histograms = specs(call_buckets, function_buckets)
        self.store = SeriesStore(counters, histograms, exemplar_labels)
        self._pending: Stage | None = None

    # --- CallRecorder ----------------------------------------------------------------------------

    def stage(self, batch: Sequence[FinishedCall]) -> bytes:
        if self._pending is not None:
            log.debug("metrics: an unpublished stage was replaced (neither published nor discarded)")
        stage = self.store.begin()
        now = self._clock()
        for finished in batch:
            self._record(stage, finished.call, finished.trace, now)
        self._pending = stage
        return self.store.snapshot(stage.tables)

    def publish(self) -> None:
        if self._pending is None:
            return
        self.store.publish(self._pending)
        self._pending = None

    def discard(self) -> None:
        self._pending = None

    def restore(self, snapshot: bytes) -> None:
        """Start from a persisted snapshot. An unreadable one is logged and ignored: the
        counters then restart at zero, which `rate()` treats as a counter reset."""
        self._pending = None
        if not snapshot:
            return
        policy = self._labels
        try:
            tables = self.store.load(snapshot, policy.permits)
        except SnapshotError as error:
            log.error("%s; counters restart at zero", error)
            return
        for name, series in tables.counters.items():
            label_names = self.store.counter_specs[name].labels
            for key in series:
                policy.seed(label_names, key)
        for name, rows in tables.histograms.items():
            label_names = self.store.histogram_specs[name].labels
            for key in rows:
                policy.seed(label_names, key)
        self.store.published = tables

    def snapshot(self) -> bytes:
        """The published counts (what a restart would restore)."""
        return self.store.snapshot(self.store.published)

    # --- Collector -------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        return self.store.collect()

    # --- one finished call -----------------------------------------------------------------------

    def _record(self, stage: Stage, call: Call, trace: Trace, now: float) -> None:
        labels = self._labels
        workflow = labels.workflow(call.workflow_label)
        key = (workflow, labels.status(call.status))
        calls_total = stage.counter(CALLS_TOTAL)
        if key not in calls_total:
            self._first_sight(stage, workflow)
        calls_total[key] = calls_total.get(key, 0) + 1

        finished_at = call.finished_at
        created_at = call.created_at
        finished_ts = 0.0
        if finished_at is not None:
            finished_ts = finished_at.timestamp()
            lag = now - finished_ts
            stage.histogram(EXPORT_LAG).observe((), lag if lag > 0.0 else 0.0)
            duration = _seconds(created_at, finished_at)
            if duration is not None:
                durations = stage.histogram(CALL_DURATION)
                bucket = durations.observe(key, duration)
                durations.exemplar(key, bucket, (call.call_id, None, duration, finished_ts))

        names = self._function_calls(stage, workflow, call, trace, finished_ts)
        if trace.events:
            self._events(stage, workflow, trace, names)

    def _first_sight(self, stage: Stage, workflow: str) -> None:
        calls_total = stage.counter(CALLS_TOTAL)
        durations = stage.histogram(CALL_DURATION)
        for status in FINISHED:
            key = (workflow, self._labels.status(status))
            calls_total.setdefault(key, 0)
            durations.ensure(key)
        stage.histogram(CALL_QUEUE).ensure((workflow,))

    def _function_calls(
        self, stage: Stage, workflow: str, call: Call, trace: Trace, finished_ts: float
    ) -> dict[str | None, str]:
        """Count the function calls; return function call id -> function_name label, for the
        events (which may omit their function's name)."""
        names: dict[str | None, str] = {}
        if not trace.function_calls:
            return names
        # Folder caches bound up front: a hit costs one dict lookup, a miss falls back to the folder.
        fold_function, fold_type, fold_status = self._labels.function, self._labels.function_type, self._labels.status
        function_get, type_get, status_get = fold_function.cache.get, fold_type.cache.get, fold_status.cache.get
        totals = stage.counter(FUNCTION_CALLS_TOTAL)
        durations = stage.histogram(FUNCTION_DURATION)
        call_id = call.call_id
        first_start: datetime | None = None
        for fc in trace.function_calls:
            fc_id = fc.function_call_id
            if fc_id in names:
                continue  # a duplicate record: count each function call once, as the spans do
            raw = fc.function_name
            function = function_get(raw) or fold_function(raw)
            names[fc_id] = function
            raw = fc.function_type
            function_type = type_get(raw) or fold_type(raw)
            raw = fc.status
            key = (workflow, function, function_type, status_get(raw) or fold_status(raw))
            count = totals.get(key)
            if count is None:
                self._first_sight_function(totals, key)
                count = totals[key]
            totals[key] = count + 1
            started_at = fc.started_at
            if started_at is None:
                continue
            finished_at = fc.finished_at
            try:  # inline rather than _seconds(): this loop is the hottest code of the sink
                if first_start is None or started_at < first_start:
                    first_start = started_at
                if finished_at is None:
                    continue
                duration = (finished_at - started_at).total_seconds()
            except TypeError:  # one of the two without a time zone
                continue
            if duration < 0.0:
                duration = 0.0
            bucket = durations.observe(key, duration)
            # The call's finish time orders the exemplars (the newest stays): one timestamp
            # conversion per call instead of one per function call.
            durations.exemplar(key, bucket, (call_id, fc_id, duration, finished_ts))
        if first_start is not None:
            queue = _seconds(call.created_at, first_start)
            if queue is not None:
                stage.histogram(CALL_QUEUE).observe((workflow,), queue)
        return names

    def _first_sight_function(self, totals: dict[tuple[str, ...], int], key: tuple[str, ...]) -> None:
        prefix = key[:3]
        for status in FINISHED:
            totals.setdefault((*prefix, self._labels.status(status)), 0)
        totals.setdefault(key, 0)

    def _events(self, stage: Stage, workflow: str, trace: Trace, names: dict[str | None, str]) -> None:
        fold_function, fold_event, fold_kind = self._labels.function, self._labels.event_type, self._labels.error_kind
        event_get = fold_event.cache.get
        events = stage.counter(EVENTS_TOTAL)
        errors = stage.counter(CALL_ERRORS_TOTAL)
        confidence = stage.histogram(CONFIDENCE)
        seen: set[str] = set()
        for event in trace.events:
            event_id = event.event_id
            if event_id in seen:
                continue  # a duplicate record
            seen.add(event_id)
            function = names.get(event.function_call_id) or fold_function(event.function_name)
            event_type = event.event_type
            key = (workflow, function, event_get(event_type) or fold_event(event_type))
            events[key] = events.get(key, 0) + 1
            if event_type == "error":
                key = (workflow, function, fold_kind(event.kind))
                errors[key] = errors.get(key, 0) + 1
            score = event.avg_confidence
            if score is not None and math.isfinite(score):
                confidence.observe((workflow, function), score)

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from prometheus_client.metrics_core import Metric

from exporter.bem.models import Call, Trace
from exporter.metrics.exemplars import exemplar_labels
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.observer import SERIES_OVERFLOW, TIMESTAMP_OUT_OF_RANGE
from exporter.metrics.store import CounterSpec, HistogramSpec, Key, SeriesStore, SnapshotError, Stage
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

DEFAULT_MAX_SERIES_PER_FAMILY: Final = 10_000
"""Series per metric family before new ones fold into `other` (BEM_MAX_SERIES_PER_METRIC):
200 workflows x 100 functions would otherwise make a scrape of 350,000 samples."""
DEFAULT_MAX_SCRAPE_SAMPLES: Final = 150_000
"""Samples of the counted metrics in one scrape before the largest families fold into `other`
(BEM_MAX_SCRAPE_SAMPLES): three times what a large real account makes (about 50,000; the
account is written down in docs/metrics.md, "A bounded scrape"). Under the series caps alone,
names the API sends could make one scrape about 300,000 samples (36 MB)."""
FUTURE_TOLERANCE_SECONDS: Final = 86_400.0
"""A finishedAt (or startedAt) more than this after the poll's clock is out of range: a day
absorbs any clock skew, and a later time can only be a bad record."""

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
            "join), as of the last poll; exemplars carry trace_id and span_id.",
            ("workflow_name", "function_name"),
            CONFIDENCE_BUCKETS,
            exemplars=True,  # a low-confidence bucket links to a call that fell into it
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


@dataclass(frozen=True, slots=True)
class ScrapeFigures:
    """The size of a scrape of the counted metrics, against its bound."""

    samples: int
    max_samples: int
    folded: Mapping[str, int] = field(default_factory=dict)
    """Series the bound folded into `other` since this process started, by family."""
    caps: Mapping[str, int] = field(default_factory=dict)
    """The families whose series cap the bound lowered, and that cap."""


class RecorderReports(Protocol):
    """Where the recorder reports what it counted but did not record (the self-metrics)."""

    def label_overflow(self, label: str, count: int = 1) -> None: ...

    def trace_anomaly(self, kind: str) -> None: ...

    def scrape_bounded(self, samples: int, max_samples: int, folded: Mapping[str, int]) -> None:
        """The visible counts make `samples` samples of at most `max_samples`; `folded` series
        were just folded into `other` to keep them so, by family (every family, zeros too)."""
        ...


class _Unreported:
    def label_overflow(self, label: str, count: int = 1) -> None:
        pass

    def trace_anomaly(self, kind: str) -> None:
        pass

    def scrape_bounded(self, samples: int, max_samples: int, folded: Mapping[str, int]) -> None:
        pass


def _seconds(start: datetime, end: datetime) -> float | None:
    """`end - start` in seconds, clamped at 0 (clock skew between bem's services); None if
    the two cannot be compared (one without a time zone)."""
    try:
        seconds = (end - start).total_seconds()
    except TypeError:
        return None
    return seconds if seconds > 0.0 else 0.0


def _nothing() -> None:
    pass


def _unwatched(figures: ScrapeFigures) -> None:
    pass


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
        max_series_per_family: int = DEFAULT_MAX_SERIES_PER_FAMILY,
        max_samples: int = DEFAULT_MAX_SCRAPE_SAMPLES,
        observer: RecorderReports | None = None,
    ) -> None:
        self._labels = labels
        self._clock = clock
        self._reports: RecorderReports = observer if observer is not None else _Unreported()
        counters, histograms = specs(call_buckets, function_buckets)
        self.store = SeriesStore(counters, histograms, exemplar_labels, max_series_per_family, max_samples)
        self._bound_folded: dict[str, int] = {}
        self._bound_unmet = False
        self.on_scrape: Callable[[ScrapeFigures], None] = _unwatched
        """Told the scrape's figures after each change of the visible counts (the status page)."""
        self._bounded({})  # the bound and the fold counters are shown from the start
        self._pending: Stage | None = None
        self._pending_out_of_range = 0
        self.version = 0
        """Incremented each time the visible counts change (publish, restore)."""
        self.on_change: Callable[[], None] = _nothing
        """Called after each change of the visible counts (the exposition re-renders)."""

    # --- CallRecorder ----------------------------------------------------------------------------

    def stage(self, batch: Sequence[FinishedCall]) -> bytes:
        if self._pending is not None:
            log.debug("metrics: an unpublished stage was replaced (neither published nor discarded)")
        stage = self.store.begin()
        now = self._clock()
        # Counted on publish, like the counts: a discarded and retried batch reports once.
        self._pending_out_of_range = sum(self._record(stage, f.call, f.trace, now) for f in batch)
        self._bound(stage)
        self._pending = stage
        return self.store.snapshot(stage.tables)

    def publish(self) -> None:
        stage = self._pending
        if stage is None:
            return
        self.store.publish(stage)
        self._pending = None
        if stage.folded:
            self._reports.label_overflow(SERIES_OVERFLOW, stage.folded)
        for _ in range(self._pending_out_of_range):
            self._reports.trace_anomaly(TIMESTAMP_OUT_OF_RANGE)
        self._bounded(stage.bound_folded)
        self._changed()

    def discard(self) -> None:
        self._pending = None

    def _changed(self) -> None:
        self.version += 1
        self.on_change()

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
        folded: dict[str, int] = {}
        if self.store.samples(tables) > self.store.max_samples:
            # A bound tighter than the snapshot's folds it further now (the next commit keeps it).
            stage = self.store.begin(tables)
            self._bound(stage)
            tables, folded = stage.tables, stage.bound_folded
        self.store.published = tables
        self._bounded(folded)
        self._changed()

    def _bound(self, stage: Stage) -> None:
        if not stage.bound(self.store.max_samples) and not self._bound_unmet:
            self._bound_unmet = True  # once: it stays so until the setting is raised
            log.warning(
                "metrics: BEM_MAX_SCRAPE_SAMPLES=%d is too low to hold even the `other` series; raise it",
                self.store.max_samples,
            )

    def _bounded(self, folded: Mapping[str, int]) -> None:
        """Report the scrape's size, and the series just folded to keep it bounded."""
        for name, count in folded.items():
            self._bound_folded[name] = self._bound_folded.get(name, 0) + count
        store = self.store
        every = {name: folded.get(name, 0) for name in store.samples_per_series}
        self._reports.scrape_bounded(store.samples(store.published), store.max_samples, every)
        self.on_scrape(self.scrape_figures())

    def scrape_figures(self) -> ScrapeFigures:
        store = self.store
        caps = {name: cap for name, cap in store.published.caps.items() if cap < store.max_series_per_family}
        return ScrapeFigures(store.samples(store.published), store.max_samples, dict(self._bound_folded), caps)

    def snapshot(self) -> bytes:
        """The published counts (what a restart would restore)."""
        return self.store.snapshot(self.store.published)

    # --- Collector -------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        return self.store.collect()

    # --- one finished call -----------------------------------------------------------------------

    def _record(self, stage: Stage, call: Call, trace: Trace, now: float) -> bool:
        """Count one call; return whether it had a timestamp out of range (not observed)."""
        labels = self._labels
        workflow = labels.workflow(call.workflow_label)
        calls_total = stage.counter(CALLS_TOTAL)
        key: Key = (workflow, labels.status(call.status))
        if key not in calls_total:
            key = stage.fit(CALLS_TOTAL, key)
            if key not in calls_total:
                self._first_sight(stage, key)
        calls_total[key] = calls_total.get(key, 0) + 1
        workflow = key[0]

        latest = now + FUTURE_TOLERANCE_SECONDS
        out_of_range = False
        finished_at = call.finished_at
        finished_ts = 0.0
        if finished_at is not None:
            finished_ts = finished_at.timestamp()
            out_of_range = not self._call_duration(stage, call, finished_at, key, now, latest)
            if out_of_range:
                finished_ts = now  # it orders the function calls' exemplars: a year-2200 one would stay forever

        names, fc_out_of_range = self._function_calls(stage, workflow, call, trace, finished_ts, latest)
        if trace.events:
            self._events(stage, workflow, trace, names, (call.call_id, finished_ts))
        return out_of_range or fc_out_of_range

    def _call_duration(
        self, stage: Stage, call: Call, finished_at: datetime, key: Key, now: float, latest: float
    ) -> bool:
        """Observe the call's duration and export lag; False (nothing observed) when finishedAt
        lies beyond `latest` or before createdAt."""
        finished_ts = finished_at.timestamp()
        try:
            duration: float | None = (finished_at - call.created_at).total_seconds()
        except TypeError:  # one of the two without a time zone
            duration = None
        if finished_ts > latest or (duration is not None and duration < 0.0):
            return False
        lag = now - finished_ts
        stage.histogram(EXPORT_LAG).observe((), lag if lag > 0.0 else 0.0)
        if duration is not None:
            durations = stage.histogram(CALL_DURATION)
            bucket = durations.observe(key, duration)
            durations.exemplar(key, bucket, (call.call_id, None, duration, finished_ts))
        return True

    def _first_sight(self, stage: Stage, key: Key) -> None:
        calls_total = stage.counter(CALLS_TOTAL)
        durations = stage.histogram(CALL_DURATION)
        workflow = key[0]
        for status in FINISHED:
            calls_total.setdefault((workflow, self._labels.status(status)), 0)
            durations.ensure((workflow, self._labels.status(status)))
        stage.histogram(CALL_QUEUE).ensure(stage.fit(CALL_QUEUE, (workflow,)))

    def _function_calls(
        self, stage: Stage, workflow: str, call: Call, trace: Trace, finished_ts: float, latest: float
    ) -> tuple[dict[str | None, str], bool]:
        """Count the function calls; return function call id -> function_name label, for the
        events (which may omit their function's name), and whether a timestamp was beyond
        `latest` (that function call's times are then not observed)."""
        names: dict[str | None, str] = {}
        out_of_range = False
        if not trace.function_calls:
            return names, out_of_range
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
            key: Key = (workflow, function, function_type, status_get(raw) or fold_status(raw))
            count = totals.get(key)
            if count is None:
                key = stage.fit(FUNCTION_CALLS_TOTAL, key)
                self._first_sight_function(totals, key)
                count = totals[key]
            totals[key] = count + 1
            started_at = fc.started_at
            if started_at is None:
                continue
            finished_at = fc.finished_at
            if started_at.timestamp() > latest or (finished_at is not None and finished_at.timestamp() > latest):
                out_of_range = True
                continue
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
            if key not in durations.rows:
                key = stage.fit(FUNCTION_DURATION, key)
            bucket = durations.observe(key, duration)
            # The call's finish time orders the exemplars (the newest stays): one timestamp
            # conversion per call instead of one per function call.
            durations.exemplar(key, bucket, (call_id, fc_id, duration, finished_ts))
        if first_start is not None:
            queue = _seconds(call.created_at, first_start)
            if queue is not None:
                stage.histogram(CALL_QUEUE).observe(stage.fit(CALL_QUEUE, (workflow,)), queue)
        return names, out_of_range

    def _first_sight_function(self, totals: dict[tuple[str, ...], int], key: tuple[str, ...]) -> None:
        prefix = key[:3]
        for status in FINISHED:
            totals.setdefault((*prefix, self._labels.status(status)), 0)
        totals.setdefault(key, 0)

    def _events(
        self, stage: Stage, workflow: str, trace: Trace, names: dict[str | None, str], call: tuple[str, float]
    ) -> None:
        """Count the events; `call` is the call's id and finish time, for the exemplars."""
        call_id, finished_ts = call
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
            key: Key = (workflow, function, event_get(event_type) or fold_event(event_type))
            count = events.get(key)
            if count is None:
                key = stage.fit(EVENTS_TOTAL, key)
                count = events.get(key, 0)
            events[key] = count + 1
            if event_type == "error":
                key = stage.fit(CALL_ERRORS_TOTAL, (workflow, function, fold_kind(event.kind)))
                errors[key] = errors.get(key, 0) + 1
            score = event.avg_confidence
            if score is not None and math.isfinite(score):
                key = stage.fit(CONFIDENCE, (workflow, function))
                bucket = confidence.observe(key, score)
                confidence.exemplar(key, bucket, (call_id, event.function_call_id, score, finished_ts))

"""Self-metrics: what the poll loop, the API client and the span exporter report (`Observer`).

These are not staged or persisted: they describe this process, start empty on every start
(counters at zero, gauges unset until the first poll) and change as things happen. The
observer is called from the event loop and from the span exporter's worker thread, and read
by scrapes in another thread, hence one lock; every method holds it for a few dict updates.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.bem.models import Call
from exporter.ids import (
    CYCLE,
    DUPLICATE_ID,
    END_BEFORE_START,
    MISSING_FINISHED_AT,
    MISSING_STARTED_AT,
    MULTIPLE_ROOTS,
    UNBUILDABLE,
    UNKNOWN_EVENT_OWNER,
    UNKNOWN_PARENT,
    UNKNOWN_SOURCE_EVENT,
)
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.store import HistogramSpec, Key, Row, histogram_family, le_labels
from exporter.pipeline import CycleReport

POLL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
API_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
IN_PROGRESS: Final = ("pending", "running")

REJECTED_RECORDS: Final = ("call", "trace_record", "response")
"""The record kinds the API client reports; their series start at zero."""
ANOMALIES: Final = (
    DUPLICATE_ID,
    UNKNOWN_SOURCE_EVENT,
    UNKNOWN_PARENT,
    MULTIPLE_ROOTS,
    CYCLE,
    MISSING_FINISHED_AT,
    MISSING_STARTED_AT,
    END_BEFORE_START,
    UNKNOWN_EVENT_OWNER,
    UNBUILDABLE,
)

_POLL = HistogramSpec(
    "bem_exporter_poll_duration_seconds",
    "Duration of the exporter's poll cycles (listing, refresh, trace fetches, commit).",
    (),
    POLL_BUCKETS,
    unit="seconds",
)
_API = HistogramSpec(
    "bem_exporter_api_request_duration_seconds",
    "Latency of the exporter's HTTP requests to the bem API, by endpoint template.",
    ("endpoint",),
    API_BUCKETS,
    unit="seconds",
)


class _Histogram:
    """A histogram without staging (a self-metric); the caller holds the lock."""

    __slots__ = ("les", "rows", "spec")

    def __init__(self, spec: HistogramSpec) -> None:
        self.spec = spec
        self.les = le_labels(spec.bounds)
        self.rows: dict[Key, Row] = {}

    def observe(self, key: Key, value: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = [0] * (len(self.spec.bounds) + 1) + [0.0]
        row[bisect_left(self.spec.bounds, value)] += 1
        row[-1] += value

    def family(self) -> Metric:
        return histogram_family(self.spec, self.les, {key: list(row) for key, row in self.rows.items()})


EXPECTED_CODES = ("200", "401", "429", "500", "502", "503", "504", "error")


class SelfMetrics:
    """The exporter's `Observer`, and the Collector of its self-metrics."""

    def __init__(self, labels: LabelPolicy, version: str) -> None:
        self._labels = labels
        self._version = version
        self._lock = threading.Lock()
        self._up = 0
        self._last_success: float | None = None
        self._tracked: int | None = None
        self._backlog: int | None = None
        self._spans_exported = 0
        self._export_failures = 0
        self._spans_dropped = 0
        self._abandoned = 0
        self._api_requests: dict[tuple[str, str], int] = {}
        self._rejected: dict[str, int] = dict.fromkeys(REJECTED_RECORDS, 0)
        self._anomalies: dict[str, int] = dict.fromkeys(ANOMALIES, 0)
        self._poll = _Histogram(_POLL)
        self._poll.rows[()] = [0] * (len(POLL_BUCKETS) + 1) + [0.0]  # zero before the first poll
        self._api = _Histogram(_API)
        self._in_progress: dict[tuple[str, str], int] = {}
        self._oldest: dict[str, float] = {}

    def expect_endpoints(self, endpoints: Sequence[str]) -> None:
        """Start the request counters of these endpoints at 0 for the codes alerts and panels
        watch, so `rate()` sees the very first 429 or 5xx rather than a series born at 1."""
        with self._lock:
            for endpoint in endpoints:
                for code in EXPECTED_CODES:
                    self._api_requests.setdefault((endpoint, code), 0)

    # --- Observer --------------------------------------------------------------------------------

    def api_request(self, endpoint: str, code: str, seconds: float) -> None:
        key = (endpoint, code)
        with self._lock:
            self._api_requests[key] = self._api_requests.get(key, 0) + 1
            self._api.observe((endpoint,), seconds)

    def rejected_record(self, what: str) -> None:
        with self._lock:
            self._rejected[what] = self._rejected.get(what, 0) + 1

    def in_progress(self, calls: Sequence[Call], now: float) -> None:
        """Replace the in-progress gauges. Workflows seen before and idle now stay at zero
        rather than vanish, so graphs and alerts read 0, not "no data"."""
        fold_workflow = self._labels.workflow
        fold_status = self._labels.status
        with self._lock:
            counts = dict.fromkeys(self._in_progress, 0)
            oldest = dict.fromkeys(self._oldest, 0.0)
        for call in calls:
            workflow = fold_workflow(call.workflow_label)
            if workflow not in oldest:
                oldest[workflow] = 0.0
                for status in IN_PROGRESS:
                    counts.setdefault((workflow, fold_status(status)), 0)
            key = (workflow, fold_status(call.status))
            counts[key] = counts.get(key, 0) + 1
            age = now - call.created_at.timestamp()
            if age > oldest[workflow]:
                oldest[workflow] = age
        with self._lock:
            self._in_progress = counts
            self._oldest = oldest

    def cycle_done(self, report: CycleReport, now: float) -> None:
        with self._lock:
            self._up = 1 if report.ok else 0
            if report.ok:
                self._last_success = now
            self._poll.observe((), report.duration_seconds)
            self._tracked = report.tracked
            self._backlog = report.export_backlog

    def spans_exported(self, calls: int, spans: int) -> None:
        with self._lock:
            self._spans_exported += spans

    def span_export_failed(self, calls: int) -> None:
        with self._lock:
            self._export_failures += 1

    def spans_dropped(self, calls: int) -> None:
        with self._lock:
            self._spans_dropped += calls

    def trace_anomaly(self, kind: str) -> None:
        with self._lock:
            self._anomalies[kind] = self._anomalies.get(kind, 0) + 1

    def calls_abandoned(self, count: int) -> None:
        with self._lock:
            self._abandoned += count

    # --- Collector -------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._families()
        return iter(families)

    def _families(self) -> list[Metric]:
        out: list[Metric] = [
            _gauge(
                "bem_exporter_up", "1 if the exporter's last poll listed bem's calls successfully, else 0.", self._up
            ),
            _gauge(
                "bem_exporter_build_info",
                "The exporter's version; the value is always 1.",
                1,
                ("version",),
                (self._version,),
            ),
        ]
        if self._last_success is not None:
            out.append(
                _gauge(
                    "bem_exporter_last_successful_poll_timestamp_seconds",
                    "Unix time of the last poll whose listing succeeded (absent until the first one).",
                    self._last_success,
                )
            )
        if self._tracked is not None:
            out.append(
                _gauge(
                    "bem_exporter_tracked_calls",
                    "Pending or running calls the exporter follows, as of the last poll.",
                    self._tracked,
                )
            )
        if self._backlog is not None:
            out.append(
                _gauge(
                    "bem_exporter_export_backlog_calls",
                    "Finished calls whose spans wait to be exported, as of the last poll.",
                    self._backlog,
                )
            )
        out.append(self._poll.family())
        out.append(self._api.family())
        out.append(
            _counter_family(
                "bem_exporter_api_requests_total",
                "HTTP requests to the bem API by endpoint template and status code (error: no response).",
                ("endpoint", "code"),
                self._api_requests,
            )
        )
        out.append(
            _counter("bem_exporter_spans_exported_total", "Spans the trace backend accepted.", self._spans_exported)
        )
        out.append(
            _counter(
                "bem_exporter_span_export_failures_total",
                "Span export attempts that failed (their calls are retried later).",
                self._export_failures,
            )
        )
        out.append(
            _counter(
                "bem_exporter_spans_dropped_total",
                "Finished calls whose spans were given up on (still unexported past the retention window).",
                self._spans_dropped,
            )
        )
        out.append(
            _counter(
                "bem_exporter_calls_abandoned_total",
                "Calls no longer tracked because they stayed pending or running past BEM_ABANDON_AFTER.",
                self._abandoned,
            )
        )
        out.append(
            _counter_family(
                "bem_exporter_rejected_records_total",
                "API records the exporter could not decode and skipped, by kind of record.",
                ("record",),
                {(k,): v for k, v in self._rejected.items()},
            )
        )
        out.append(
            _counter_family(
                "bem_exporter_trace_anomalies_total",
                "Oddities in bem traces that the span builder worked around, by kind (once per call and kind).",
                ("kind",),
                {(k,): v for k, v in self._anomalies.items()},
            )
        )
        out.append(
            _counter_family(
                "bem_exporter_label_overflow_total",
                "Label values folded into 'other' because the label reached BEM_METRICS_MAX_LABEL_VALUES.",
                ("label",),
                {(k,): v for k, v in self._labels.overflows().items()},
            )
        )
        out.append(
            _gauge_family(
                "bem_calls_in_progress",
                "bem calls seen pending or running, as of the last poll.",
                ("workflow_name", "status"),
                self._in_progress,
            )
        )
        out.append(
            _gauge_family(
                "bem_calls_oldest_in_progress_age_seconds",
                "Age (now - createdAt) of the oldest pending or running bem call, as of the last poll; 0 when none.",
                ("workflow_name",),
                {(k,): v for k, v in self._oldest.items()},
            )
        )
        return out


def _gauge(
    name: str, help_text: str, value: float, labels: tuple[str, ...] = (), values: tuple[str, ...] = ()
) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=labels)
    family.add_metric(values, value)
    return family


def _gauge_family(
    name: str, help_text: str, labels: tuple[str, ...], series: dict[tuple[str, str], int] | dict[tuple[str], float]
) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=labels)
    for key, value in series.items():
        family.add_metric(key, value)
    return family


def _counter(name: str, help_text: str, value: float) -> Metric:
    family = CounterMetricFamily(name, help_text)
    family.add_metric((), value)
    return family


def _counter_family(
    name: str, help_text: str, labels: tuple[str, ...], series: dict[tuple[str, str], int] | dict[tuple[str], int]
) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for key, value in series.items():
        family.add_metric(key, value)
    return family

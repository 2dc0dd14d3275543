"""Self-metrics: what the poll loop, the API client and the span exporter report (`Observer`).

These are stock prometheus_client Counters, Gauges and Histograms (thread-safe on their own:
the observer is called from the event loop and from the span exporter's worker thread, and
read by scrapes). They are not staged or persisted: they describe this process and start at
zero on every start. Series that alerts and panels watch are created at zero up front, so
`rate()` sees the first increment; the three "as of the last poll" gauges stay absent until
the first poll reports them (they are registered then).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from exporter.bem.models import Call
from exporter.bem.ratelimit import DECISIONS, DecisionKind
from exporter.ids import (
    CYCLE,
    DUPLICATE_ID,
    END_BEFORE_START,
    MISSING_FINISHED_AT,
    MISSING_STARTED_AT,
    MULTIPLE_ROOTS,
    NUMBER_OUT_OF_RANGE,
    UNBUILDABLE,
    UNKNOWN_EVENT_OWNER,
    UNKNOWN_PARENT,
    UNKNOWN_SOURCE_EVENT,
)
from exporter.metrics.labels import LabelPolicy
from exporter.pipeline import UNEXPECTED_SITES, CycleReport, UnexpectedSite
from exporter.quality.records import QUALITY_RESULTS, QualityResult
from exporter.state.store import WriteFault

# `_created` series would double the counters' samples for nothing a dashboard reads.
disable_created_metrics()  # type: ignore[no-untyped-call]

POLL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
API_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
IN_PROGRESS: Final = ("pending", "running")

TIMESTAMP_OUT_OF_RANGE: Final = "timestamp_out_of_range"
"""A finishedAt far in the future or before createdAt: counted, never fed to a histogram."""

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
    NUMBER_OUT_OF_RANGE,
    TIMESTAMP_OUT_OF_RANGE,
)
StateErrorKind = WriteFault
STATE_ERROR_KINDS: Final[tuple[StateErrorKind, ...]] = (
    "disk_full",
    "io_error",
    "corrupt",
    "fenced",
    "unavailable",
    "other",
)
SERIES_OVERFLOW: Final = "series"
"""The `label` value of `bem_exporter_label_overflow_total` for series folded into `other`
because their family reached its series cap (not a label name: it counts whole series)."""
EXPECTED_CODES: Final = ("200", "401", "429", "500", "502", "503", "504", "error")
WEBHOOK_DELAY_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
"""From seconds (a live delivery) to an hour (bem's retries after an outage of the listener)."""


class SelfMetrics:
    """The exporter's `Observer`; its metrics live on the registry it is given."""

    def __init__(self, labels: LabelPolicy, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._labels = labels
        self._in_progress_lock = threading.Lock()
        self._workflows_seen: set[str] = set()
        self._keys_seen: set[tuple[str, str]] = set()
        self._is_leader = True
        self._register_health(version)
        self._register_state()
        self._register_api()
        self._register_spans()
        self._register_records()
        self._register_operations()
        self._register_quality()
        labels.report_overflows_to(self.label_overflow)

    # --- registration ------------------------------------------------------------------------------

    def _register_health(self, version: str) -> None:
        r = self.registry
        self._up = Gauge(
            "bem_exporter_up", "1 if the exporter's last poll listed bem's calls successfully, else 0.", registry=r
        )
        info = Gauge(
            "bem_exporter_build_info", "The exporter's version; the value is always 1.", ["version"], registry=r
        )
        info.labels(version).set(1)
        self._last_success = Gauge(
            "bem_exporter_last_successful_poll_timestamp_seconds",
            "Unix time of the last poll whose listing succeeded (absent until the first one).",
            registry=None,
        )
        self._tracked = Gauge(
            "bem_exporter_tracked_calls",
            "Pending or running calls the exporter follows, as of the last poll.",
            registry=None,
        )
        self._backlog = Gauge(
            "bem_exporter_export_backlog_calls",
            "Finished calls whose spans wait to be exported, as of the last poll.",
            registry=None,
        )
        self._shown: set[Gauge | Counter] = set()
        self._poll = Histogram(
            "bem_exporter_poll_duration_seconds",
            "Duration of the exporter's poll cycles (listing, refresh, trace fetches, commit).",
            buckets=POLL_BUCKETS,
            unit="seconds",
            registry=r,
        )

    def _register_state(self) -> None:
        """The durable state and, with high availability, this replica's role."""
        r = self.registry
        self._leader = Gauge(
            "bem_exporter_leader",
            "1 when this replica polls bem (always 1 without high availability), else 0.",
            registry=r,
        )
        self._leader.set(1)
        self._leader_transitions = Counter(
            "bem_exporter_leader_transitions_total", "Times this replica gained or lost the polling role.", registry=r
        )
        self._fenced_commits = Counter(
            "bem_exporter_fenced_commits_total",
            "State commits refused because another replica had taken over (nothing was counted).",
            registry=r,
        )
        self._state_errors = Counter(
            "bem_exporter_state_errors_total", "Errors of the durable state, by kind.", ["kind"], registry=r
        )
        for kind in STATE_ERROR_KINDS:
            self._state_errors.labels(kind)

    def _register_api(self) -> None:
        r = self.registry
        self._api_latency = Histogram(
            "bem_exporter_api_request_duration_seconds",
            "Latency of the exporter's HTTP requests to the bem API, by endpoint template.",
            ["endpoint"],
            buckets=API_BUCKETS,
            unit="seconds",
            registry=r,
        )
        self._api_requests = Counter(
            "bem_exporter_api_requests_total",
            "HTTP requests to the bem API by endpoint template and status code (error: no response).",
            ["endpoint", "code"],
            registry=r,
        )
        self._throttled = Counter(
            "bem_exporter_api_throttled_total",
            "Responses from bem that asked the exporter to slow down (429).",
            registry=r,
        )
        self._throttle_seconds = Gauge(
            "bem_exporter_api_throttle_seconds",
            "The wait bem's current Retry-After imposes, in seconds; 0 when not throttled.",
            registry=r,
        )
        self._rate_limit = Gauge(
            "bem_exporter_api_rate_limit",
            "The request rate the exporter currently allows itself, per second.",
            registry=r,
        )
        self._rate_decisions = Counter(
            "bem_exporter_api_rate_decisions_total",
            "Decisions of the adaptive request rate, by kind (why it moved; each is logged with its reason).",
            ["decision"],
            registry=r,
        )
        for kind in DECISIONS:
            self._rate_decisions.labels(kind)
        self._too_large = Counter(
            "bem_exporter_responses_too_large_total",
            "API responses refused because their decoded size exceeded the limit, by endpoint template.",
            ["endpoint"],
            registry=r,
        )
        self._backfill_remaining = Gauge(
            "bem_exporter_backfill_remaining_calls",
            "Calls the running backfill still expects to read (estimate); 0 when no backfill runs.",
            registry=r,
        )

    def _register_spans(self) -> None:
        r = self.registry
        self._spans_exported = Counter(
            "bem_exporter_spans_exported_total", "Spans the trace backend accepted.", registry=r
        )
        self._export_failures = Counter(
            "bem_exporter_span_export_failures_total",
            "Span export attempts that failed (their calls are retried later).",
            registry=r,
        )
        self._spans_dropped = Counter(
            "bem_exporter_spans_dropped_total",
            "Finished calls whose spans were given up on (still unexported past the retention window).",
            registry=r,
        )
        self._unexpected = Counter(
            "bem_exporter_unexpected_errors_total",
            "Exceptions no code path expects (a bug, most likely), caught so that the work goes on, by where; "
            "each is logged at warning with its type and message.",
            ["site"],
            registry=r,
        )
        for site in UNEXPECTED_SITES:
            self._unexpected.labels(site)

    def _register_records(self) -> None:
        r = self.registry
        self._abandoned = Counter(
            "bem_exporter_calls_abandoned_total",
            "Calls no longer tracked because they stayed pending or running past BEM_ABANDON_AFTER.",
            registry=r,
        )
        self._rejected = Counter(
            "bem_exporter_rejected_records_total",
            "API records the exporter could not decode and skipped, by kind of record.",
            ["record"],
            registry=r,
        )
        for record in REJECTED_RECORDS:
            self._rejected.labels(record)
        self._anomalies = Counter(
            "bem_exporter_trace_anomalies_total",
            "Oddities in bem traces that the span builder worked around, by kind (once per call and kind).",
            ["kind"],
            registry=r,
        )
        for kind in ANOMALIES:
            self._anomalies.labels(kind)
        self._overflow = Counter(
            "bem_exporter_label_overflow_total",
            "Label values folded into 'other' because the label reached BEM_METRICS_MAX_LABEL_VALUES "
            '(label="series": series folded because their metric family reached its series cap).',
            ["label"],
            registry=r,
        )
        for name in (*self._labels.folders, SERIES_OVERFLOW):
            self._overflow.labels(name)
        self._register_scrape()

    def _register_scrape(self) -> None:
        """The size of one scrape of the counted metrics, against BEM_MAX_SCRAPE_SAMPLES."""
        r = self.registry
        self._scrape_samples = Gauge(
            "bem_exporter_scrape_samples",
            "Samples of the counted bem_* metrics in a scrape (a histogram series counts its buckets, sum and count).",
            registry=r,
        )
        self._scrape_samples_limit = Gauge(
            "bem_exporter_scrape_samples_limit",
            "BEM_MAX_SCRAPE_SAMPLES: beyond it the largest families fold series into 'other'.",
            registry=r,
        )
        self._scrape_folded = Counter(
            "bem_exporter_scrape_folded_series_total",
            "Series folded into 'other' to keep a scrape within BEM_MAX_SCRAPE_SAMPLES, by metric family "
            "(their counts go on in 'other').",
            ["metric"],
            registry=r,
        )

    def _register_operations(self) -> None:
        r = self.registry
        self._in_progress = Gauge(
            "bem_calls_in_progress",
            "bem calls seen pending or running, as of the last poll.",
            ["workflow_name", "status"],
            registry=r,
        )
        self._oldest = Gauge(
            "bem_calls_oldest_in_progress_age_seconds",
            "Age (now - createdAt) of the oldest pending or running bem call, as of the last poll; 0 when none.",
            ["workflow_name"],
            registry=r,
        )

    def expect_webhooks(self, results: Sequence[str]) -> None:
        """The webhook listener is on: its series exist, every result at zero (without a
        listener they stay absent, which `BemWebhooksSilent` relies on)."""
        r = self.registry
        self._webhooks = Counter(
            "bem_exporter_webhooks_received_total",
            "Webhook deliveries received, by result (accepted, duplicate, bad_signature, stale, unsigned, "
            "malformed, too_large).",
            ["result"],
            registry=r,
        )
        for result in results:
            self._webhooks.labels(result)
        self._webhook_delay = Histogram(
            "bem_exporter_webhook_delay_seconds",
            "Time from an accepted event's createdAt to its receipt by this replica.",
            buckets=WEBHOOK_DELAY_BUCKETS,
            unit="seconds",
            registry=r,
        )
        self._webhook_counted = Counter(
            "bem_exporter_webhook_counted_calls_total",
            "Finished calls counted by a read or a listing that a webhook brought forward (the poll counts "
            "the rest; each call is counted once either way).",
            registry=r,
        )

    def webhook_received(self, result: str, delay: float | None) -> None:
        self._webhooks.labels(result).inc()
        if delay is not None:
            self._webhook_delay.observe(delay)

    def webhook_counted(self, calls: int) -> None:
        self._webhook_counted.inc(calls)

    def _register_quality(self) -> None:
        """Registered by `expect_quality`, when quality reads are on."""
        self._quality_reads = Counter(
            "bem_exporter_quality_reads_total",
            "Reads of bem's function quality metrics by result: success, unavailable (bem's 404: the account "
            "has none) or the API client's error kind; a failed read keeps the last values.",
            ["result"],
            registry=None,
        )
        self._quality_success = Gauge(
            "bem_exporter_quality_last_success_timestamp_seconds",
            "Unix time of the last successful read of bem's function quality metrics (absent until the first).",
            registry=None,
        )

    def expect_quality(self, records: Sequence[str]) -> None:
        """Quality reads are on: show their counters, at 0 for every result and for the
        `records` kinds of rejected items they may report."""
        self._show_once(self._quality_reads)
        for result in QUALITY_RESULTS:
            self._quality_reads.labels(result)
        for record in records:
            self._rejected.labels(record)

    def expect_endpoints(self, endpoints: Sequence[str]) -> None:
        """Start the request counters of these endpoints at 0 for the codes alerts and panels
        watch, so `rate()` sees the very first 429 or 5xx rather than a series born at 1."""
        for endpoint in endpoints:
            self._too_large.labels(endpoint)
            for code in EXPECTED_CODES:
                self._api_requests.labels(endpoint, code)

    # --- Observer --------------------------------------------------------------------------------

    def api_request(self, endpoint: str, code: str, seconds: float) -> None:
        self._api_requests.labels(endpoint, code).inc()
        self._api_latency.labels(endpoint).observe(seconds)

    def rejected_record(self, what: str) -> None:
        self._rejected.labels(what).inc()

    def in_progress(self, calls: Sequence[Call], now: float) -> None:
        """Replace the in-progress gauges. Workflows seen before and idle now stay at zero
        rather than vanish, so graphs and alerts read 0, not "no data"."""
        fold_workflow = self._labels.workflow
        fold_status = self._labels.status
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        for call in calls:
            workflow = fold_workflow(call.workflow_label)
            key = (workflow, fold_status(call.status))
            counts[key] = counts.get(key, 0) + 1
            oldest[workflow] = max(oldest.get(workflow, 0.0), now - call.created_at.timestamp())
        # One writer at a time: two overlapping replacements would leave a mix of both.
        with self._in_progress_lock:
            self._workflows_seen.update(oldest)
            self._keys_seen.update(counts)
            for workflow in oldest:
                self._keys_seen.update((workflow, fold_status(status)) for status in IN_PROGRESS)
            for workflow in self._workflows_seen:
                self._oldest.labels(workflow).set(oldest.get(workflow, 0.0))
            for key in self._keys_seen:
                self._in_progress.labels(*key).set(counts.get(key, 0))

    def cycle_done(self, report: CycleReport, now: float) -> None:
        self._up.set(1 if report.ok else 0)
        if report.ok:
            self._last_success.set(now)
        self._tracked.set(report.tracked)
        self._backlog.set(report.export_backlog)
        self._poll.observe(report.duration_seconds)
        self._show_once(self._tracked, self._backlog)
        if report.ok:
            self._show_once(self._last_success)

    def _show_once(self, *gauges: Gauge | Counter) -> None:
        """Register metrics that stay absent until they hold a value (the first poll)."""
        with self._in_progress_lock:
            for gauge in gauges:
                if gauge not in self._shown:
                    self._shown.add(gauge)
                    self.registry.register(gauge)

    def spans_exported(self, calls: int, spans: int) -> None:
        self._spans_exported.inc(spans)

    def span_export_failed(self, calls: int) -> None:
        self._export_failures.inc()

    def spans_dropped(self, calls: int) -> None:
        self._spans_dropped.inc(calls)

    def trace_anomaly(self, kind: str) -> None:
        self._anomalies.labels(kind).inc()

    def calls_abandoned(self, count: int) -> None:
        self._abandoned.inc(count)

    def unexpected_error(self, site: UnexpectedSite) -> None:
        self._unexpected.labels(site).inc()

    # --- beyond the Observer protocol (fed by the parts that know these facts) --------------------

    def label_overflow(self, label: str, count: int = 1) -> None:
        """`count` values of `label` (or, for `series`, whole series) folded into `other`."""
        self._overflow.labels(label).inc(count)

    def scrape_bounded(self, samples: int, max_samples: int, folded: Mapping[str, int]) -> None:
        """The counted metrics make `samples` samples; `folded` series were just folded."""
        self._scrape_samples.set(samples)
        self._scrape_samples_limit.set(max_samples)
        for metric, count in folded.items():
            self._scrape_folded.labels(metric).inc(count)

    def api_throttled(self, retry_after_seconds: float) -> None:
        """bem answered 429; the exporter now waits `retry_after_seconds` (0 when none given)."""
        self._throttled.inc()
        self._throttle_seconds.set(retry_after_seconds)

    def throttle_cleared(self) -> None:
        self._throttle_seconds.set(0)

    def api_rate_limit(self, requests_per_second: float) -> None:
        self._rate_limit.set(requests_per_second)

    def api_rate_decision(self, kind: DecisionKind) -> None:
        self._rate_decisions.labels(kind).inc()

    def response_too_large(self, endpoint: str) -> None:
        self._too_large.labels(endpoint).inc()

    def state_error(self, kind: StateErrorKind) -> None:
        self._state_errors.labels(kind).inc()

    def backfill_remaining(self, calls: int) -> None:
        self._backfill_remaining.set(calls)

    def leader(self, is_leader: bool) -> None:
        """This replica's role now; a change of role counts one transition."""
        if is_leader != self._is_leader:
            self._leader_transitions.inc()
        self._is_leader = is_leader
        self._leader.set(1 if is_leader else 0)

    def start_as_standby(self) -> None:
        """A replica of a shared state starts as a standby: leader 0, no transition counted."""
        self._is_leader = False
        self._leader.set(0)

    def state_readable(self, ok: bool) -> None:
        """On a standby, which does not poll, `bem_exporter_up` says whether it can read the
        shared state it serves."""
        self._up.set(1 if ok else 0)

    def fenced_commit(self) -> None:
        self._fenced_commits.inc()

    def quality_read(self, result: QualityResult, at: float) -> None:
        """A read of bem's function quality metrics ended with `result`, at epoch `at`."""
        self._quality_reads.labels(result).inc()
        if result == "success":
            self._quality_success.set(at)
            self._show_once(self._quality_success)

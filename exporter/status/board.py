"""What the status page shows, kept in bounded memory and fed by the parts that know it.

The board holds figures only: ids, names, statuses, durations, counts, and texts that passed
through the redactor. It never receives a document, a key or a password; a setting marked
secret is masked here whatever value it is given, so a caller's mistake does not leak one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

from exporter.bem.ratelimit import RateDecision, RateState
from exporter.ids import trace_id_for
from exporter.pipeline import CycleReport, FinishedCall, SpanExporter
from exporter.quality.records import QualityResult
from exporter.redact import MASK, redact_text
from exporter.status.webhooks import WebhookBoard, WebhookSummary

Role = Literal["single", "leader", "standby"]
SettingSource = Literal["flag", "environment", "file", "default"]
CanaryResult = Literal["success", "failure", "timeout", "submit_error"]

CYCLES_KEPT = 20
"""Poll cycles the board remembers (about five minutes at the default 15 s interval)."""
CALLS_KEPT = 25
"""Finished calls the board remembers (the latest counted), shown newest first."""
ERROR_LENGTH = 300
"""Characters of the last API error shown; the rest is cut."""
TRACE_ID_PLACEHOLDER = "{trace_id}"


@dataclass(frozen=True, slots=True)
class CycleFigures:
    at: float
    """Epoch seconds when the cycle ended."""
    ok: bool
    seconds: float
    discovered: int
    refreshed: int
    finished: int
    counted: int
    trace_fetch_failures: int
    rejected: int
    abandoned: int
    tracked: int
    export_backlog: int


@dataclass(frozen=True, slots=True)
class CallLine:
    call_id: str
    workflow: str
    status: str
    duration_seconds: float | None
    finished_at: float | None
    trace_id: str


@dataclass(frozen=True, slots=True)
class ApiHealth:
    state: Literal["unknown", "up", "down"]
    since: float | None
    """Epoch seconds of the last change of state."""
    last_error: str | None
    last_error_at: float | None


@dataclass(frozen=True, slots=True)
class SettingRow:
    name: str
    value: str
    source: SettingSource
    secret: bool = False


@dataclass(frozen=True, slots=True)
class CanarySummary:
    workflow: str
    last_result: CanaryResult | None
    last_duration_seconds: float | None
    last_success_at: float | None
    in_flight: bool


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    until: float
    """Epoch seconds the backfill reaches back to (now minus BEM_LOOKBACK at its start)."""
    reached: float | None
    """Creation time of the oldest call read so far; None before the first page."""
    calls: int
    done: bool


@dataclass(frozen=True, slots=True)
class FoldedFamily:
    metric: str
    folded_series: int
    """Series of this family folded into `other` by the samples bound since the process started."""
    series_cap: int | None
    """The family's series cap as the bound lowered it; None when it was not lowered."""


@dataclass(frozen=True, slots=True)
class ScrapeSummary:
    """The size of a `/metrics` scrape of the counted metrics against its bound."""

    samples: int
    max_samples: int
    folded: tuple[FoldedFamily, ...] = ()
    """The families the bound has folded, largest fold first."""


@dataclass(frozen=True, slots=True)
class QualitySummary:
    """The reader of bem's function quality metrics (`exporter/quality/`), on the leader."""

    interval: float
    last_result: QualityResult | None = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    """When the values shown were read (a failed read keeps them)."""
    functions: int = 0
    """Functions with quality series now."""
    rejected: int = 0
    """Unreadable items skipped by the last successful read."""
    pages: int = 0
    last_error: str | None = None
    """Why the last failed read failed (redacted); kept after a success, like the API's."""
    last_error_at: float | None = None

    def but(self, **changes: object) -> QualitySummary:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RateSummary:
    """The adaptive request rate: where it stands, and the last decision that moved it."""

    state: RateState
    requests_per_second: float | None
    """None until the first request."""
    limit_found: float | None
    last_decision: RateDecision | None
    last_decision_at: float | None
    """Epoch seconds."""


RATE_AT_START = RateSummary("starting", None, None, None, None)
"""Before the first request: no rate, no limit found, no decision."""


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """One consistent view of the board, what both renderers take."""

    version: str
    generated_at: float
    started_at: float
    role: Role
    api: ApiHealth
    cycles: tuple[CycleFigures, ...]
    """Newest first."""
    calls: tuple[CallLine, ...]
    """Newest first."""
    backlog: int
    tracked: int
    canary: CanarySummary | None
    backfill: BackfillProgress | None
    settings: tuple[SettingRow, ...]
    trace_url: str | None
    rate: RateSummary = RATE_AT_START
    scrape: ScrapeSummary | None = None
    webhooks: WebhookSummary | None = None
    """None: no webhook listener."""
    quality: QualitySummary | None = None
    """None when quality reads are off (`BEM_QUALITY_INTERVAL=0`) or not started."""

    def trace_link(self, trace_id: str) -> str | None:
        return self.trace_url.replace(TRACE_ID_PLACEHOLDER, trace_id) if self.trace_url else None


def check_trace_url(template: str) -> str:
    """`template` if it is an http(s) URL holding `{trace_id}`; ValueError naming the problem.
    Only http(s): any other scheme (javascript:, data:) would make the link a script."""
    if urlsplit(template).scheme not in ("http", "https"):
        raise ValueError(f"{template!r} is not an http(s) URL")
    if TRACE_ID_PLACEHOLDER not in template:
        raise ValueError(f"{template!r} does not contain {TRACE_ID_PLACEHOLDER}")
    return template


class StatusBoard:
    """Fed from the event loop and from the span export thread (`watch`), read by the HTTP
    handlers; a lock keeps each snapshot whole."""

    def __init__(
        self,
        version: str,
        *,
        trace_url: str | None = None,
        role: Role = "single",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._version = version
        self._trace_url = check_trace_url(trace_url) if trace_url else None
        self._clock = clock
        self._started_at = clock()
        self._lock = threading.Lock()
        self._role: Role = role
        self._api = ApiHealth("unknown", None, None, None)
        self._cycles: deque[CycleFigures] = deque(maxlen=CYCLES_KEPT)
        self._calls: deque[CallLine] = deque(maxlen=CALLS_KEPT)
        self._backlog = 0
        self._tracked = 0
        self._canary: CanarySummary | None = None
        self._backfill: BackfillProgress | None = None
        self._scrape: ScrapeSummary | None = None
        self._settings: tuple[SettingRow, ...] = ()
        self.webhooks: WebhookBoard | None = None
        """The webhook section, when the listener is on (set by the wiring)."""
        self._quality: QualitySummary | None = None
        self._rate = RATE_AT_START

    def set_role(self, role: Role) -> None:
        with self._lock:
            self._role = role

    def set_settings(self, rows: Iterable[SettingRow]) -> None:
        shown = tuple(_shown_setting(row) for row in rows)
        with self._lock:
            self._settings = shown

    def api_up(self) -> None:
        now = self._clock()
        with self._lock:
            since = self._api.since if self._api.state == "up" else now
            self._api = ApiHealth("up", since, self._api.last_error, self._api.last_error_at)

    def api_down(self, error: str) -> None:
        now = self._clock()
        text = redact_text(error, limit=ERROR_LENGTH)
        with self._lock:
            since = self._api.since if self._api.state == "down" else now
            self._api = ApiHealth("down", since, text, now)

    def cycle_done(self, report: CycleReport) -> None:
        """A finished poll cycle: its figures, the backlog and tracked calls, and API health."""
        if report.ok:
            self.api_up()
        else:
            self.api_down(report.error or "the listing failed")
        figures = _figures(report, self._clock())
        with self._lock:
            self._cycles.appendleft(figures)
            self._backlog = report.export_backlog
            self._tracked = report.tracked

    def calls_finished(self, batch: Sequence[FinishedCall]) -> None:
        """Finished calls, newest last; a call already shown is not shown twice (a delivery
        retry hands the same call on again)."""
        lines = [_call_line(item) for item in batch]
        with self._lock:
            shown = {line.call_id for line in self._calls}
            for line in lines:
                if line.call_id not in shown:
                    shown.add(line.call_id)
                    self._calls.appendleft(line)

    def watch(self, spans: SpanExporter) -> SpanExporter:
        """`spans`, showing on this board every finished call it is given (a tee for wiring
        where the finished calls are not otherwise in reach)."""
        return _Watched(self, spans)

    def set_backlog(self, backlog: int) -> None:
        with self._lock:
            self._backlog = backlog

    def set_canary(self, canary: CanarySummary | None) -> None:
        with self._lock:
            self._canary = canary

    def set_backfill(self, progress: BackfillProgress | None) -> None:
        with self._lock:
            self._backfill = progress

    def set_scrape(self, scrape: ScrapeSummary) -> None:
        with self._lock:
            self._scrape = scrape

    def set_quality(self, quality: QualitySummary | None) -> None:
        """The quality reader's state; its error text is redacted here like the API's."""
        if quality is not None and quality.last_error is not None:
            quality = quality.but(last_error=redact_text(quality.last_error, limit=ERROR_LENGTH))
        with self._lock:
            self._quality = quality

    def rate_changed(self, requests_per_second: float) -> None:
        with self._lock:
            self._rate = replace(self._rate, requests_per_second=requests_per_second)

    def rate_decided(self, decision: RateDecision) -> None:
        now = self._clock()
        with self._lock:
            self._rate = RateSummary(decision.state, decision.rate, decision.limit, decision, now)

    def snapshot(self) -> StatusSnapshot:
        with self._lock:
            return StatusSnapshot(
                version=self._version,
                generated_at=self._clock(),
                started_at=self._started_at,
                role=self._role,
                api=self._api,
                cycles=tuple(self._cycles),
                calls=tuple(sorted(self._calls, key=_finished_order, reverse=True)),
                backlog=self._backlog,
                tracked=self._tracked,
                canary=self._canary,
                backfill=self._backfill,
                settings=self._settings,
                trace_url=self._trace_url,
                scrape=self._scrape,
                webhooks=self.webhooks.summary() if self.webhooks is not None else None,
                quality=self._quality,
                rate=self._rate,
            )


def _finished_order(line: CallLine) -> float:
    return line.finished_at if line.finished_at is not None else 0.0


def _shown_setting(row: SettingRow) -> SettingRow:
    if row.secret:
        return SettingRow(row.name, MASK if row.value else "", row.source, secret=True)
    return SettingRow(row.name, redact_text(row.value), row.source)


def _figures(report: CycleReport, now: float) -> CycleFigures:
    return CycleFigures(
        at=now,
        ok=report.ok,
        seconds=report.duration_seconds,
        discovered=report.discovered,
        refreshed=report.refreshed,
        finished=report.finished,
        counted=report.counted,
        trace_fetch_failures=report.trace_fetch_failures,
        rejected=report.rejected_records,
        abandoned=report.abandoned,
        tracked=report.tracked,
        export_backlog=report.export_backlog,
    )


def _call_line(item: FinishedCall) -> CallLine:
    call = item.call
    finished = call.finished_at
    duration = (finished - call.created_at).total_seconds() if finished is not None else None
    return CallLine(
        call_id=call.call_id,
        workflow=call.workflow_label,
        status=call.status,
        duration_seconds=duration,
        finished_at=finished.timestamp() if finished is not None else None,
        trace_id=trace_id_for(call.call_id),
    )


class _Watched:
    """A span exporter that shows the calls it is given on the board, then passes them on."""

    def __init__(self, board: StatusBoard, spans: SpanExporter) -> None:
        self._board = board
        self._spans = spans

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        self._board.calls_finished(batch)
        return self._spans.export(batch)

    def shutdown(self) -> None:
        self._spans.shutdown()

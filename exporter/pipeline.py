"""The seams between the poll loop and what it feeds.

The poll loop produces `FinishedCall`s and observations; it knows nothing of Prometheus or
OTLP. Metrics (and the canary) implement `CallRecorder`, metrics implement `Observer`; traces
implement `SpanExporter`; delivery takes batches as a `Handoff` and re-reads what it must send
again from a `TraceSource`.

Exactly-once counting rests on a three-step handshake driven by the poll loop's batch:
`stage()` folds a batch into counts that are not yet visible and returns the snapshot that
includes them; the batch writes every recorder's snapshot and the "handled" marks in one
state commit; then `publish()` makes the counts visible (or `discard()` drops them if the
commit failed). A crash at any instant therefore shows Prometheus either the old counts or
the new ones, never an increment that the next start would repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from exporter.bem.models import Call, Trace
from exporter.state.store import WriteFault


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """A call that reached `completed` or `failed`, with its trace as fetched then."""

    call: Call
    trace: Trace


class CallRecorder(Protocol):
    """Counts finished calls; its state is persisted atomically with the poll cursor."""

    def stage(self, batch: Sequence[FinishedCall]) -> bytes:
        """Fold `batch` into pending counts; return the snapshot that includes them."""
        ...

    def publish(self) -> None:
        """The staged snapshot was persisted: make its counts visible."""
        ...

    def discard(self) -> None:
        """The staged snapshot was not persisted: forget it."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Start from a snapshot persisted by an earlier process."""
        ...


class Handoff(Protocol):
    """Takes committed batches for span delivery (delivery's backlog)."""

    def submit(self, batch: Sequence[FinishedCall]) -> None: ...


@dataclass(frozen=True, slots=True)
class Refetched:
    """What a re-read of undelivered calls found. A call in neither set could not be read this
    time (a 429, a timeout, an undecodable record): it is tried again later, never dropped."""

    found: list[FinishedCall] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    """Calls the API answered for without them (or no longer finished): nothing to deliver."""


class SourceUnavailableError(Exception):
    """The whole re-read failed the way an API can fail (unreachable, refusing, malformed):
    the poll loop reports the API's health; delivery only tries again later."""


class TraceSource(Protocol):
    """Where delivery reads again calls whose spans it must send but no longer holds."""

    async def refetch(self, call_ids: Sequence[str]) -> Refetched:
        """Raises `SourceUnavailableError` on a failure of the whole read (the API unreachable);
        any other exception is a bug."""
        ...


class SpanExporter(Protocol):
    """Turns finished calls into spans and delivers them. Blocking; run in a worker thread."""

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        """The number of spans the backend accepted for the whole batch, or None when the
        export failed and the batch must be retried later. Never raises."""
        ...

    def shutdown(self) -> None: ...


@dataclass(slots=True)
class CycleReport:
    """What one poll cycle did; the poll loop fills it in as it goes (the app adds delivery's
    backlog). Logged as one line and fed to the self-metrics."""

    ok: bool = False
    """The listing succeeded and the state is writable (the exporter can see bem and count)."""
    duration_seconds: float = 0.0
    discovered: int = 0
    refreshed: int = 0
    finished: int = 0
    counted: int = 0
    trace_fetch_failures: int = 0
    rejected_records: int = 0
    abandoned: int = 0
    tracked: int = 0
    export_backlog: int = 0
    error: str | None = None


UnexpectedSite = Literal["span_delivery", "span_export", "quality_read"]
"""Where an unexpected exception (a bug, most likely) was caught so that the work goes on."""
UNEXPECTED_SITES: tuple[UnexpectedSite, ...] = ("span_delivery", "span_export", "quality_read")


class Observer(Protocol):
    """What the poll loop and the API client report about themselves (self-metrics)."""

    def api_request(self, endpoint: str, code: str, seconds: float) -> None:
        """One HTTP request to bem: endpoint template, status code or `error`, latency."""
        ...

    def rejected_record(self, what: str) -> None:
        """A record (`call`, `trace`, `function_call`, `event`) that could not be decoded."""
        ...

    def in_progress(self, calls: Sequence[Call], now: float) -> None:
        """The calls seen pending or running in this poll (replaces the previous set)."""
        ...

    def cycle_done(self, report: CycleReport, now: float) -> None: ...

    def spans_exported(self, calls: int, spans: int) -> None: ...

    def span_export_failed(self, calls: int) -> None: ...

    def spans_dropped(self, calls: int) -> None:
        """Calls whose spans were given up on (older than the retention window)."""
        ...

    def trace_anomaly(self, kind: str) -> None:
        """An oddity in a trace that the span builder worked around (`unknown_parent`,
        `cycle`, `multiple_roots`, `missing_finished_at`, `duplicate_id`, ...)."""
        ...

    def calls_abandoned(self, count: int) -> None:
        """Calls dropped from tracking after running longer than the abandon limit."""
        ...

    def unexpected_error(self, site: UnexpectedSite) -> None:
        """An exception no code path expects, caught at `site` so that the work goes on (and
        logged there at warning, with its type and redacted message)."""
        ...

    def state_error(self, kind: WriteFault) -> None:
        """The durable state failed a read or a write (nothing advanced); `kind` says how."""
        ...


class NullObserver:
    """An Observer that ignores everything (tests, and `once` without metrics)."""

    def api_request(self, endpoint: str, code: str, seconds: float) -> None:
        pass

    def rejected_record(self, what: str) -> None:
        pass

    def in_progress(self, calls: Sequence[Call], now: float) -> None:
        pass

    def cycle_done(self, report: CycleReport, now: float) -> None:
        pass

    def spans_exported(self, calls: int, spans: int) -> None:
        pass

    def span_export_failed(self, calls: int) -> None:
        pass

    def spans_dropped(self, calls: int) -> None:
        pass

    def trace_anomaly(self, kind: str) -> None:
        pass

    def calls_abandoned(self, count: int) -> None:
        pass

    def unexpected_error(self, site: UnexpectedSite) -> None:
        pass

    def state_error(self, kind: WriteFault) -> None:
        pass

"""The commands' bodies: wire client, state, sinks and poll loop together, then run them.

The one place that knows every part. Parts know nothing of each other beyond the protocols of
`exporter.pipeline` and `exporter.state.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.backoff import Backoff
from exporter.bem.client import MAX_ATTEMPTS, BemClient, ClientHooks
from exporter.bem.errors import api_host
from exporter.bem.ratelimit import RateDecision
from exporter.canary.driver import RECORDER, CanaryDriver, canary_of
from exporter.config import ApiSettings, Settings
from exporter.ha.leadership import FenceWatch, Leadership
from exporter.ha.mirror import StandbyMirror
from exporter.health import HealthLog
from exporter.metrics import Metrics
from exporter.metrics.observer import SelfMetrics
from exporter.pipeline import CallRecorder, CycleReport, SpanExporter
from exporter.poll import ApiTraces, PollLoop
from exporter.poll.progress import Listener, Progress
from exporter.state import StateStore, StateWriteError
from exporter.state.sqlite import SqliteStore
from exporter.status import BackfillProgress, StatusBoard
from exporter.traces.delivery import Delivery, Retention
from exporter.traces.sink import build_span_exporter

if TYPE_CHECKING:  # psycopg (about 20 MiB) is imported only when the state is in PostgreSQL
    from exporter.state.postgres import PostgresStore

log = logging.getLogger("exporter")

READY_INTERVALS = 3
"""/readyz fails once the last successful listing is older than this many poll intervals."""
OPEN_RETRY_MIN, OPEN_RETRY_MAX = 1.0, 10.0
"""Seconds between attempts to reach a state database that is down at start."""


@dataclass
class Exporter:
    settings: Settings
    client: BemClient
    state: StateStore
    metrics: Metrics
    spans: SpanExporter
    delivery: Delivery
    poller: PollLoop
    leadership: Leadership
    mirror: StandbyMirror
    """What a standby serves (the shared state's counts)."""
    canary: CanaryDriver | None = None

    def is_leader(self) -> bool:
        """Whether this replica polls, exports spans and creates canary calls now (always
        with SQLite)."""
        return self.leadership.is_leader()

    def ready(self) -> bool:
        """A leader (or the single writer): listing recently and writing its state; a
        standby: reading the shared state."""
        if not self.is_leader():
            return self.mirror.readable
        last = self.poller.last_listing_ok
        listing = last is not None and time.time() - last < READY_INTERVALS * self.settings.poll.interval
        return listing and self.poller.state_ok

    async def cycle(self) -> CycleReport:
        """One poll cycle, reported with delivery's backlog (logged by the caller)."""
        report = await self.poller.cycle()
        if self.canary is not None:
            await self.canary.tick()  # in the cycle's task: never interleaved with a batch
        report.export_backlog = self.delivery.backlog
        self.metrics.observer.cycle_done(report, time.time())
        return report


@contextlib.asynccontextmanager
async def open_exporter(
    settings: Settings,
    spans: SpanExporter | None = None,
    status: StatusBoard | None = None,
    progress: Sequence[Listener] = (),
) -> AsyncIterator[Exporter]:
    metrics = Metrics(settings.metrics, __version__, max_series_per_family=settings.metrics.max_series_per_metric)
    opened, leadership = await open_state(settings, metrics.observer, status)
    state: StateStore = FenceWatch(opened, leadership) if leadership.replicated else opened
    span_exporter = spans or build_span_exporter(
        settings.traces, metrics.observer, max_request_bytes=settings.traces.max_request_bytes
    )
    if status is not None:
        span_exporter = status.watch(span_exporter)
    try:
        async with bem_client(settings.api, client_hooks(metrics.observer, status)) as client:
            metrics.observer.expect_endpoints(client.endpoints)
            retention = Retention(window=settings.poll.lookback + settings.poll.interval, every=settings.poll.interval)
            delivery = Delivery(
                span_exporter, state, ApiTraces(client), metrics.observer, settings.traces.max_backlog, retention
            )
            recorders: dict[str, CallRecorder] = {"metrics": metrics.recorder}
            canary = canary_of(settings.canary)
            if canary is not None:
                recorders[RECORDER] = canary  # judged in the transaction of the batch that finishes its call
                metrics.live_registry.register(canary)  # a few series: rendered per scrape, always current
            listeners = (*progress_listeners(metrics.observer, status), *progress)
            poller = PollLoop(
                client,
                state,
                recorders,
                delivery,
                metrics.observer,
                settings.poll,
                settings.api.workflows,
                api_host=api_host(settings.api.url),
                progress=listeners,
            )
            if not leadership.replicated:
                # A replica loads the state when it takes the lease, not before.
                await poller.reload()
                await delivery.reload()
            mirror = StandbyMirror(state, recorders, metrics.observer)
            driver = (
                None
                if canary is None
                else CanaryDriver(
                    canary, settings.canary, client, state, board=status, is_leader=leadership.is_leader
                )
            )
            yield Exporter(
                settings, client, state, metrics, span_exporter, delivery, poller, leadership, mirror, driver
            )
    finally:
        span_exporter.shutdown()
        await state.close()


async def open_state(
    settings: Settings, observer: SelfMetrics, status: StatusBoard | None
) -> tuple[StateStore, Leadership]:
    """The store `settings.state` names, and this replica's role in it: SQLite is always its
    single writer; a PostgreSQL replica starts as a standby."""
    if settings.state.engine == "sqlite":
        return await SqliteStore.open(settings.poll.state_path), Leadership(None, observer, status)
    store = await _open_postgres(settings)
    return store, Leadership(store.lease, observer, status)


async def _open_postgres(settings: Settings) -> PostgresStore:
    """Open the shared state, waiting for a database that is down (one log line for the
    outage); wrong settings raise `StateError` at once."""
    from exporter.state.postgres import PostgresStore

    url = settings.state.url
    assert url is not None, "the postgres engine without a URL"
    password = settings.state.password.get() if settings.state.password is not None else None
    health = HealthLog(log, "state database")
    backoff = Backoff(OPEN_RETRY_MIN, OPEN_RETRY_MAX)
    while True:
        try:
            store = await PostgresStore.open(url, password=password, lease_duration=settings.state.lease)
        except StateWriteError as error:
            health.failing(f"{error}; trying again")
            await asyncio.sleep(backoff.next())
            continue
        health.ok()
        return store


def bem_client(api: ApiSettings, hooks: ClientHooks | None = None, *, max_attempts: int = MAX_ATTEMPTS) -> BemClient:
    """The API client for these settings."""
    return BemClient(
        api.url,
        api.key.get() if api.key is not None else None,
        "v2" if api.version == "v2" else "v3",
        timeout=api.timeout,
        max_concurrency=api.max_concurrency,
        max_rps=api.max_rps,
        max_attempts=max_attempts,
        max_response_bytes=api.max_response_bytes,
        retry_after_cap=api.retry_after_max,
        hooks=hooks,
    )


def client_hooks(observer: SelfMetrics, status: StatusBoard | None = None) -> ClientHooks:
    """What the API client reports, into the self-metrics and /status (the client and its
    adaptive rate log the warnings and decisions)."""

    def request(endpoint: str, code: str, seconds: float) -> None:
        observer.api_request(endpoint, code, seconds)  # looked up per call: bench/worker.py wraps it

    def rejected(what: str, count: int) -> None:
        for _ in range(count):
            observer.rejected_record(what)

    def rate(requests_per_second: float) -> None:
        observer.api_rate_limit(requests_per_second)
        if status is not None:
            status.rate_changed(requests_per_second)

    def rate_decision(decision: RateDecision) -> None:
        observer.api_rate_decision(decision.kind)
        if status is not None:
            status.rate_decided(decision)

    return ClientHooks(
        request=request,
        rejected=rejected,
        too_large=observer.response_too_large,
        throttled=observer.api_throttled,
        throttle_cleared=observer.throttle_cleared,
        rate=rate,
        rate_decision=rate_decision,
    )


def progress_listeners(observer: SelfMetrics, status: StatusBoard | None) -> list[Listener]:
    """Where backfill and catch-up progress goes: the remaining-calls gauge, and /status."""

    def remaining(progress: Progress) -> None:
        observer.backfill_remaining(progress.remaining or 0)

    def board(progress: Progress) -> None:
        if status is not None and progress.kind == "backfill":
            status.set_backfill(BackfillProgress(progress.target, progress.reached, progress.calls, progress.done))

    return [remaining, board]


def log_cycle(report: CycleReport) -> None:
    fields: dict[str, object] = {
        "ok": report.ok,
        "seconds": round(report.duration_seconds, 3),
        "discovered": report.discovered,
        "refreshed": report.refreshed,
        "finished": report.finished,
        "counted": report.counted,
        "trace_fetch_failures": report.trace_fetch_failures,
        "rejected": report.rejected_records,
        "abandoned": report.abandoned,
        "tracked": report.tracked,
        "export_backlog": report.export_backlog,
    }
    if report.error:
        fields["error"] = report.error
    log.info("poll cycle", extra=fields)

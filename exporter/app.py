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
from exporter.ha.hints import HintRelay
from exporter.ha.leadership import FenceWatch, Leadership
from exporter.ha.mirror import StandbyMirror
from exporter.health import HealthLog
from exporter.metrics import Metrics, ScrapeFigures
from exporter.metrics.observer import SelfMetrics
from exporter.pipeline import CallRecorder, CycleReport, SpanExporter
from exporter.poll import ApiTraces, PollLoop
from exporter.poll.hints import HintQueue
from exporter.poll.progress import Listener, Progress
from exporter.quality.gauges import QualityGauges
from exporter.quality.reader import ENDPOINTS as QUALITY_ENDPOINTS
from exporter.quality.reader import FUNCTION_RECORD, METRICS_RECORD, QualityReader
from exporter.quality.watch import QualityWatch
from exporter.state import StateStore, StateWriteError
from exporter.state.sqlite import SqliteStore
from exporter.status import BackfillProgress, FoldedFamily, ScrapeSummary, StatusBoard
from exporter.status.webhooks import WebhookBoard
from exporter.traces.delivery import Delivery, Retention
from exporter.traces.sink import build_span_exporter
from exporter.webhooks import RESULTS, Handover, Hint, Intake, SeenEvents, Verifier

if TYPE_CHECKING:  # psycopg (about 20 MiB) is imported only when the state is in PostgreSQL
    from exporter.state.postgres import PostgresStore
    from exporter.state.postgres_hints import SharedHints
    from exporter.webhooks.listener import WebhookServer  # aiohttp's server: only when webhooks are on

log = logging.getLogger("exporter")

READY_INTERVALS = 3
"""/readyz fails once the last successful listing is older than this many poll intervals."""
OPEN_RETRY_MIN, OPEN_RETRY_MAX = 1.0, 10.0
"""Seconds between attempts to reach a state database that is down at start."""
REPLAY_MARGIN = 60.0
"""Seconds beyond twice the tolerance that accepted event ids are remembered (clock skew)."""


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
    quality: QualityWatch | None = None
    """The leader's reader of bem's function quality metrics; None when `BEM_QUALITY_INTERVAL=0`."""
    webhooks: WebhookServer | None = None
    """The webhook listener (BEM_WEBHOOK_LISTEN), started by `run`."""
    hint_relay: HintRelay | None = None
    """With PostgreSQL: what the leader takes other replicas' webhook hints with."""
    webhook_board: WebhookBoard | None = None

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

    async def follow_hints(self) -> CycleReport:
        """Read what webhooks named, between cycles (in the cycle's task)."""
        report = await self.poller.follow_hints()
        self.metrics.observer.webhook_counted(report.counted)
        if self.webhook_board is not None and self.poller.hints is not None:
            self.webhook_board.hints_followed(report.refreshed, report.counted, self.poller.hints.followed)
        return report


@contextlib.asynccontextmanager
async def open_exporter(
    settings: Settings,
    spans: SpanExporter | None = None,
    status: StatusBoard | None = None,
    progress: Sequence[Listener] = (),
) -> AsyncIterator[Exporter]:
    metrics = Metrics(settings.metrics, __version__, max_series_per_family=settings.metrics.max_series_per_metric)
    opened, leadership, shared_hints = await open_state(settings, metrics.observer, status)
    state: StateStore = FenceWatch(opened, leadership) if leadership.replicated else opened
    span_exporter = spans or build_span_exporter(
        settings.traces, metrics.observer, max_request_bytes=settings.traces.max_request_bytes
    )
    if status is not None:
        span_exporter = status.watch(span_exporter)
        show_scrape(metrics, status)
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
            hints = HintQueue() if settings.webhooks.enabled else None
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
                hints=hints,
            )
            if not leadership.replicated:
                # A replica loads the state when it takes the lease, not before.
                await poller.reload()
                await delivery.reload()
            mirror = StandbyMirror(state, recorders, metrics.observer)
            driver = (
                None
                if canary is None
                else CanaryDriver(canary, settings.canary, client, state, board=status, is_leader=leadership.is_leader)
            )
            quality = quality_watch(settings, client, metrics, status)
            exporter = Exporter(
                settings, client, state, metrics, span_exporter, delivery, poller, leadership, mirror, driver, quality
            )
            if hints is not None:
                wire_webhooks(exporter, hints, shared_hints, status)
            yield exporter
    finally:
        span_exporter.shutdown()
        await state.close()


def wire_webhooks(exporter: Exporter, hints: HintQueue, shared: SharedHints | None, status: StatusBoard | None) -> None:
    """The listener, and how its hints reach the poll loop: in memory with SQLite; through the
    shared state with PostgreSQL, whichever replica leads."""
    from exporter.webhooks.listener import WebhookServer

    settings = exporter.settings.webhooks
    keep = 2 * settings.tolerance + REPLAY_MARGIN
    handover = _in_memory(hints) if shared is None else _shared(shared)
    observer = exporter.metrics.observer
    observer.expect_webhooks(RESULTS)
    board = WebhookBoard(RESULTS, "memory" if shared is None else "postgres")
    if status is not None:
        status.webhooks = board
    verifier = Verifier(
        [secret.get() for secret in settings.secrets],
        settings.tolerance,
        allow_unsigned=settings.allow_unsigned,
        clock=time.time,
    )
    intake = Intake(verifier, handover, SeenEvents(keep, time.monotonic), time.time, (observer, board))
    exporter.webhooks = WebhookServer(settings, exporter.settings.metrics, intake)
    exporter.webhook_board = board
    if shared is not None:
        exporter.hint_relay = HintRelay(shared, hints, keep)


def _in_memory(hints: HintQueue) -> Handover:
    async def hand(hint: Hint) -> bool:
        hints.note(hint.call_id)
        return True

    return hand


def _shared(shared: SharedHints) -> Handover:
    async def hand(hint: Hint) -> bool:
        return await shared.put(hint.event_id, hint.call_id)

    return hand


async def open_state(
    settings: Settings, observer: SelfMetrics, status: StatusBoard | None
) -> tuple[StateStore, Leadership, SharedHints | None]:
    """The store `settings.state` names, this replica's role in it (SQLite is always its single
    writer; a PostgreSQL replica starts as a standby), and the replicas' shared webhook hints."""
    if settings.state.engine == "sqlite":
        return await SqliteStore.open(settings.poll.state_path), Leadership(None, observer, status), None
    store = await _open_postgres(settings)
    return store, Leadership(store.lease, observer, status), store.hints


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


def quality_watch(
    settings: Settings, client: BemClient, metrics: Metrics, status: StatusBoard | None
) -> QualityWatch | None:
    """The reader of bem's function quality metrics and its gauges, or None when turned off."""
    interval = settings.poll.quality_interval
    if not interval:
        return None
    observer = metrics.observer
    observer.expect_quality((FUNCTION_RECORD, METRICS_RECORD))
    observer.expect_endpoints(QUALITY_ENDPOINTS)
    gauges = QualityGauges(metrics.labels)
    metrics.rare_registry.register(gauges)  # rendered when a read changes them, not per scrape
    gauges.on_change = metrics.rare_changed

    def rejected(record: str, count: int) -> None:
        for _ in range(count):
            observer.rejected_record(record)

    reader = QualityReader(client, settings.api.workflows, rejected=rejected)
    return QualityWatch(reader, gauges, observer, interval, board=status)


def progress_listeners(observer: SelfMetrics, status: StatusBoard | None) -> list[Listener]:
    """Where backfill and catch-up progress goes: the remaining-calls gauge, and /status."""

    def remaining(progress: Progress) -> None:
        observer.backfill_remaining(progress.remaining or 0)

    def board(progress: Progress) -> None:
        if status is not None and progress.kind == "backfill":
            status.set_backfill(BackfillProgress(progress.target, progress.reached, progress.calls, progress.done))

    return [remaining, board]


def show_scrape(metrics: Metrics, status: StatusBoard) -> None:
    """The scrape's size against its bound, and what the bound folded, on /status."""

    def shown(figures: ScrapeFigures) -> None:
        # A family folded before a restart shows with its lowered cap, even with 0 folds since.
        names = {name for name, count in figures.folded.items() if count} | set(figures.caps)
        families = [FoldedFamily(name, figures.folded.get(name, 0), figures.caps.get(name)) for name in names]
        families.sort(key=lambda family: (-family.folded_series, family.metric))
        status.set_scrape(ScrapeSummary(figures.samples, figures.max_samples, tuple(families)))

    metrics.recorder.on_scrape = shown
    shown(metrics.recorder.scrape_figures())


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

"""The commands' bodies: wire client, state, sinks and poll loop together, then run them.

The one place that knows every part. Parts know nothing of each other beyond the protocols of
`exporter.pipeline` and `exporter.state.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from exporter import __version__
from exporter.bem.client import MAX_ATTEMPTS, ApiError, BemClient, ClientHooks, ListQuery
from exporter.config import ApiSettings, Secret, Settings
from exporter.delivery import Delivery, Retention
from exporter.metrics import Metrics
from exporter.metrics.observer import SelfMetrics
from exporter.pipeline import CycleReport, FinishedCall, SpanExporter
from exporter.poll import ApiTraces, PollLoop
from exporter.redact import safe_url
from exporter.server import HttpServer
from exporter.state import StateStore
from exporter.state.sqlite import SqliteStore
from exporter.status import StatusBoard
from exporter.traces import build_span_exporter
from exporter.tracetree import render_tree

log = logging.getLogger("exporter")

READY_INTERVALS = 3
"""/readyz fails once the last successful listing is older than this many poll intervals."""


@dataclass
class Exporter:
    settings: Settings
    client: BemClient
    state: StateStore
    metrics: Metrics
    spans: SpanExporter
    delivery: Delivery
    poller: PollLoop

    def ready(self) -> bool:
        last = self.poller.last_listing_ok
        listing = last is not None and time.time() - last < READY_INTERVALS * self.settings.poll.interval
        return listing and self.poller.state_ok

    async def cycle(self) -> CycleReport:
        """One poll cycle, reported with delivery's backlog (logged by the caller)."""
        report = await self.poller.cycle()
        report.export_backlog = self.delivery.backlog
        self.metrics.observer.cycle_done(report, time.time())
        return report


@contextlib.asynccontextmanager
async def open_exporter(
    settings: Settings, spans: SpanExporter | None = None, status: StatusBoard | None = None
) -> AsyncIterator[Exporter]:
    metrics = Metrics(settings.metrics, __version__)
    state = await SqliteStore.open(settings.poll.state_path)
    span_exporter = spans or build_span_exporter(settings.traces, metrics.observer)
    if status is not None:
        span_exporter = status.watch(span_exporter)
    try:
        async with bem_client(settings.api, client_hooks(metrics.observer)) as client:
            metrics.observer.expect_endpoints(client.endpoints)
            retention = Retention(window=settings.poll.lookback + settings.poll.interval, every=settings.poll.interval)
            delivery = Delivery(
                span_exporter, state, ApiTraces(client), metrics.observer, settings.traces.max_backlog, retention
            )
            recorders = {"metrics": metrics.recorder}
            poller = PollLoop(
                client, state, recorders, delivery, metrics.observer, settings.poll, settings.api.workflows
            )
            await poller.reload()
            await delivery.reload()
            yield Exporter(settings, client, state, metrics, span_exporter, delivery, poller)
    finally:
        span_exporter.shutdown()
        await state.close()


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


def client_hooks(observer: SelfMetrics) -> ClientHooks:
    """What the API client reports, into the self-metrics (the client logs the warnings)."""

    def request(endpoint: str, code: str, seconds: float) -> None:
        observer.api_request(endpoint, code, seconds)  # looked up per call: bench/worker.py wraps it

    def rejected(what: str, count: int) -> None:
        for _ in range(count):
            observer.rejected_record(what)

    return ClientHooks(
        request=request, rejected=rejected, too_large=observer.response_too_large, throttled=observer.api_throttled
    )


def log_cycle(report: CycleReport) -> None:
    fields: dict[str, object] = {
        "ok": report.ok,
        "seconds": round(report.duration_seconds, 3),
        "discovered": report.discovered,
        "refreshed": report.refreshed,
        "finished": report.finished,
        "handed_on": report.handed_on,
        "trace_fetch_failures": report.trace_fetch_failures,
        "rejected": report.rejected_records,
        "abandoned": report.abandoned,
        "tracked": report.tracked,
        "export_backlog": report.export_backlog,
    }
    if report.error:
        fields["error"] = report.error
    log.info("poll cycle", extra=fields)


async def once(settings: Settings) -> int:
    """One full cycle, delivery included; a one-line summary on stdout."""
    async with open_exporter(settings) as exporter:
        await exporter.delivery.deliver()
        report = await exporter.cycle()
        log_cycle(report)
        delivered = await exporter.delivery.deliver()
    print(
        f"{'ok' if report.ok and delivered else 'failed'}: discovered {report.discovered}, "
        f"finished {report.finished}, handed on {report.handed_on}, tracked {report.tracked}, "
        f"spans {'delivered' if delivered else 'NOT delivered (retried next run)'}, "
        f"{report.duration_seconds:.2f}s" + (f"; {report.error}" if report.error else "")
    )
    return 0 if report.ok and delivered else 1


async def run(settings: Settings, spans: SpanExporter | None = None) -> int:
    """Poll forever, serve /metrics, stop cleanly on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    status = StatusBoard(__version__)
    async with open_exporter(settings, spans, status) as exporter:
        server = HttpServer(settings.metrics, exporter.metrics, exporter.ready, status)
        url = await server.start()
        log.info("bem-exporter running", extra={"metrics": f"{url}/metrics", "api": safe_url(settings.api.url)})
        worker = asyncio.create_task(exporter.delivery.run(stop))
        try:
            await _poll_until(exporter, stop, status)
        finally:
            await _shut_down(exporter, worker, settings.poll.shutdown_grace)
            await server.stop()
    log.info("bem-exporter stopped")
    return 0


async def _poll_until(exporter: Exporter, stop: asyncio.Event, status: StatusBoard) -> None:
    interval = exporter.settings.poll.interval
    while not stop.is_set():
        started = time.monotonic()
        cycle = asyncio.create_task(exporter.cycle())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({cycle, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not cycle.done():
            # Stop taking new pages; give the batch in progress the grace period to commit.
            exporter.poller.stop()
            done, _ = await asyncio.wait({cycle}, timeout=exporter.settings.poll.shutdown_grace)
            if not done:
                cycle.cancel()
                log.warning("abandoned the poll cycle in progress; it is picked up after restart")
                with contextlib.suppress(asyncio.CancelledError):
                    await cycle
                return
        _log_cycle_result(cycle)
        if not cycle.cancelled() and cycle.exception() is None:
            status.cycle_done(cycle.result())
        remaining = interval - (time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(remaining, 0.0))


def _log_cycle_result(cycle: asyncio.Task[CycleReport]) -> None:
    if cycle.cancelled():
        return
    failure = cycle.exception()
    if failure is not None:
        # A bug or a state write failure; keep polling, the state is consistent per batch.
        log.error("poll cycle crashed", extra={"error": f"{type(failure).__name__}: {failure}"})
        return
    log_cycle(cycle.result())


async def _shut_down(exporter: Exporter, worker: asyncio.Task[None], grace: float) -> None:
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    try:
        delivered = await asyncio.wait_for(exporter.delivery.deliver(refetch=False), timeout=grace)
    except TimeoutError:
        delivered = False
    if not delivered:
        log.warning("some spans were not delivered before exit; they are sent after restart")


async def check(settings: Settings) -> int:
    """Reach the API and the OTLP endpoint; say what is wrong."""
    print("settings: ok")
    healthy = True
    async with bem_client(settings.api, max_attempts=2) as client:
        try:
            await client.list_calls(ListQuery(limit=1))
            print(f"api: ok ({safe_url(settings.api.url)}, {settings.api.version})")
        except ApiError as error:
            print(f"api: FAILED ({safe_url(settings.api.url)}): {error}")
            healthy = False
    if settings.traces.exporter != "otlp":
        print(f"traces: exporter {settings.traces.exporter}")
    elif _reachable(settings.traces.endpoint):
        print(f"otlp: reachable ({settings.traces.protocol} {_without_query(settings.traces.endpoint)})")
    else:
        print(f"otlp: UNREACHABLE ({settings.traces.protocol} {_without_query(settings.traces.endpoint)})")
        healthy = False
    return 0 if healthy else 1


def _without_query(url: str) -> str:
    """The endpoint as shown: no credentials, query or fragment (they may carry secrets)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


class TreePrinter:
    """The demo's span exporter when no OTLP endpoint is set: a few calls as trees on stdout."""

    def __init__(self, per_batch: int = 2) -> None:
        self._per_batch = per_batch

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        for item in batch[: self._per_batch]:
            print(render_tree(item), flush=True)
        return sum(len(item.trace.function_calls) + 1 for item in batch)

    def shutdown(self) -> None:
        pass


async def demo(settings: Settings, simulator_rate: float, prefill: int) -> int:
    from exporter.bem.simulator import Simulator, SimulatorConfig, SimulatorServer

    simulator = Simulator(SimulatorConfig(seed=7, arrival_rate=simulator_rate, prefill=prefill, history=1800.0))
    with SimulatorServer(simulator) as sim_url:
        settings = replace(settings, api=replace(settings.api, url=sim_url, key=_sim_key()))
        spans: SpanExporter | None = None
        if settings.traces.exporter == "otlp" and not settings.traces.endpoint_configured:
            spans = TreePrinter()
        host = settings.metrics.listen_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(
            f"bem-exporter demo: simulated bem API at {sim_url}\n"
            f"  metrics:   http://{shown}:{settings.metrics.listen_port}/metrics\n"
            f"  readiness: http://{shown}:{settings.metrics.listen_port}/readyz\n"
            f"  status:    http://{shown}:{settings.metrics.listen_port}/status\n"
            + (
                "  traces:    printed below as trees; set OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 "
                "to send them to Tempo, Jaeger or a Collector\n"
                if spans is not None
                else f"  traces:    {settings.traces.protocol} {settings.traces.endpoint}\n"
            )
            + "  stop with Ctrl-C",
            flush=True,
        )
        return await run(settings, spans)


def _sim_key() -> Secret | None:
    from exporter.bem.simulator import SimulatorConfig

    key = SimulatorConfig().api_key
    return Secret(key) if key else None


def fail(message: str) -> int:
    print(f"bem-exporter: error: {message}", file=sys.stderr)
    return 1

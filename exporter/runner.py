"""`bem-exporter run`: poll forever, serve /metrics and /status, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time

from exporter import __version__
from exporter.app import Exporter, log_cycle, open_exporter
from exporter.config import Settings
from exporter.pipeline import CycleReport, SpanExporter
from exporter.redact import safe_url
from exporter.server import HttpServer
from exporter.status import SettingRow, StatusBoard

log = logging.getLogger("exporter")


async def run(settings: Settings, spans: SpanExporter | None = None) -> int:
    """Poll forever, serve /metrics, stop cleanly on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    status = StatusBoard(__version__, trace_url=settings.status.trace_url)
    status.set_settings(SettingRow(row.name, row.value, row.source) for row in settings.resolved)
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

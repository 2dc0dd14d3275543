"""`bem-exporter run`: poll forever, serve /metrics and /status, stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

from exporter import __version__
from exporter.app import Exporter, log_cycle, open_exporter
from exporter.config import Settings
from exporter.pipeline import CycleReport, SpanExporter
from exporter.poll.hints import HintQueue
from exporter.redact import safe_url
from exporter.server import HttpServer
from exporter.state import StateError, StateWriteError
from exporter.status import SettingRow, StatusBoard
from exporter.webhooks.listener import PATH as WEBHOOK_PATH

log = logging.getLogger("exporter")


async def run(settings: Settings, spans: SpanExporter | None = None) -> int:
    """Poll forever, serve /metrics, stop cleanly on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    opened = False

    def on_signal() -> None:
        stop.set()
        if not opened and main is not None:
            main.cancel()  # still waiting for the state database: nothing to finish

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    status = StatusBoard(__version__, trace_url=settings.status.trace_url)
    status.set_settings(SettingRow(row.name, row.value, row.source) for row in settings.resolved)
    try:
        async with open_exporter(settings, spans, status) as exporter:
            opened = True
            await _serve(exporter, stop, status)
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
    log.info("bem-exporter stopped")
    return 0


async def _serve(exporter: Exporter, stop: asyncio.Event, status: StatusBoard) -> None:
    settings = exporter.settings
    server = HttpServer(settings.metrics, exporter.metrics, exporter.ready, status)
    url = await server.start()
    try:
        webhooks = await _listen_for_webhooks(exporter)
        log.info(
            "bem-exporter running",
            extra={"metrics": f"{url}/metrics", "api": safe_url(settings.api.url), **webhooks},
        )
        if exporter.leadership.replicated:
            await _replicate(exporter, stop, status)
        else:
            await _lead(exporter, stop, status)
    finally:
        if exporter.webhooks is not None:
            await exporter.webhooks.stop()
        await server.stop()


async def _listen_for_webhooks(exporter: Exporter) -> dict[str, str]:
    """Start the webhook listener, if there is one; its URL for the start line."""
    if exporter.webhooks is None:
        return {}
    url = f"{await exporter.webhooks.start()}{WEBHOOK_PATH}"
    if exporter.webhook_board is not None:
        exporter.webhook_board.listening(url)
    return {"webhooks": url}


async def _replicate(exporter: Exporter, stop: asyncio.Event, status: StatusBoard) -> None:
    """Stand by until this replica holds the lease, lead until it loses it, again until stopped."""
    leadership = exporter.leadership
    try:
        while not stop.is_set():
            epoch = await _stand_by(exporter, stop)
            if epoch is None:
                return
            if not await _take_over(exporter, epoch):
                continue
            reason = await _lead(exporter, stop, status)
            if reason is None:
                return
            leadership.step_down(reason)
    finally:
        await leadership.release()


async def _stand_by(exporter: Exporter, stop: asyncio.Event) -> int | None:
    """Serve the shared state's counts and campaign for the lease; its epoch, or None when
    stopped first."""
    interval = exporter.settings.poll.interval
    lease = exporter.settings.state.lease
    campaign = asyncio.create_task(exporter.leadership.campaign(min(interval, lease / 3)))
    stopper = asyncio.create_task(stop.wait())
    try:
        while not campaign.done() and not stop.is_set():
            await exporter.mirror.refresh()
            await asyncio.wait({campaign, stopper}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not campaign.done():
            campaign.cancel()
    return campaign.result() if campaign.done() and not campaign.cancelled() else None


async def _take_over(exporter: Exporter, epoch: int) -> bool:
    """Load the state as it is now under the new lease; False (lease given back) if it
    cannot be read."""
    try:
        await exporter.poller.reload()
        await exporter.delivery.reload()
    except (StateError, StateWriteError) as error:
        log.warning("took the leader lease but cannot load the state; giving it back", extra={"error": str(error)})
        await exporter.leadership.release()
        return False
    exporter.mirror.forget()
    exporter.leadership.took_over(epoch)
    return True


async def _lead(exporter: Exporter, stop: asyncio.Event, status: StatusBoard) -> str | None:
    """Poll and deliver until stopped (None) or, with a lease, until it is lost (why)."""
    term = asyncio.Event()
    worker = asyncio.create_task(exporter.delivery.run(term))
    # Beside the poll loop, never in its way: its own task, on the leader only.
    quality = asyncio.create_task(exporter.quality.run()) if exporter.quality is not None else None
    polling = asyncio.create_task(_poll_until(exporter, stop, status))
    lost = asyncio.create_task(exporter.leadership.lost()) if exporter.leadership.replicated else None
    relay = asyncio.create_task(exporter.hint_relay.run()) if exporter.hint_relay is not None else None
    reason: str | None = None
    try:
        await asyncio.wait({polling} | ({lost} if lost else set()), return_when=asyncio.FIRST_COMPLETED)
        if lost is not None and lost.done():
            reason = lost.result()
    finally:
        term.set()
        if relay is not None:
            await _cancel(relay)
        if quality is not None:
            await _cancel(quality)
        for task in (polling, lost):
            if task is not None and not task.done():
                task.cancel()  # lost: the cycle in progress could only be refused
        await asyncio.gather(polling, *([lost] if lost else []), return_exceptions=True)
        if reason is None:
            await _shut_down(exporter, worker, exporter.settings.poll.shutdown_grace)
        else:
            await _cancel(worker)
    return reason


async def _poll_until(exporter: Exporter, stop: asyncio.Event, status: StatusBoard) -> None:
    interval = exporter.settings.poll.interval
    while not stop.is_set():
        started = time.monotonic()
        cycle = await _step(exporter, exporter.cycle(), stop)
        if cycle is None:
            return
        _log_cycle_result(cycle)
        if not cycle.cancelled() and cycle.exception() is None:
            status.cycle_done(cycle.result())
        if exporter.leadership.replicated and not exporter.poller.state_ok:
            await _reload_after_failure(exporter)
        if not await _between_cycles(exporter, stop, started + interval):
            return


async def _step(
    exporter: Exporter, work: Coroutine[Any, Any, CycleReport], stop: asyncio.Event
) -> asyncio.Task[CycleReport] | None:
    """Run a cycle (or a hinted step) as a task; on a stop, give it the grace period. None when
    it was abandoned."""
    task = asyncio.create_task(work)
    try:
        if not await _finish_cycle(exporter, task, stop):
            return None
    finally:
        if not task.done():
            task.cancel()  # this task was cancelled (the lease was lost): so is its step
            await asyncio.gather(task, return_exceptions=True)
    return task


async def _between_cycles(exporter: Exporter, stop: asyncio.Event, next_cycle: float) -> bool:
    """Wait for the next cycle; meanwhile follow webhook hints as they come due, in this task
    (so never interleaved with a batch). False when a step was abandoned on a stop."""
    hints = exporter.poller.hints
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_cycle:
            return True
        due = hints.next_due() if hints is not None else None
        if due is not None and due <= now:
            step = await _step(exporter, exporter.follow_hints(), stop)
            if step is None:
                return False
            _log_hinted_step(step)
            continue
        wake = next_cycle if due is None else min(due, next_cycle)
        await _wait_for_any(stop, hints, wake - now)
    return True


async def _wait_for_any(stop: asyncio.Event, hints: HintQueue | None, timeout: float) -> None:
    """Until stopped, a hint arrives, or `timeout` seconds passed."""
    waits: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait())}
    if hints is not None:
        waits.add(asyncio.create_task(hints.wait(timeout)))
    try:
        await asyncio.wait(waits, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _log_hinted_step(step: asyncio.Task[CycleReport]) -> None:
    if step.cancelled():
        return
    failure = step.exception()
    if failure is not None:
        log.error("reading calls webhooks named crashed", extra={"error": f"{type(failure).__name__}: {failure}"})
        return
    report = step.result()
    log.debug(
        "followed webhook hints",
        extra={
            "refreshed": report.refreshed,
            "discovered": report.discovered,
            "counted": report.counted,
            "error": report.error,
        },
    )


async def _reload_after_failure(exporter: Exporter) -> None:
    """After a failed write the shared state may hold a batch whose COMMIT broke on its way
    back (the store then refuses commits until it was loaded again): continue from what it
    holds. In-memory state only follows successful commits, so this changes nothing else."""
    with contextlib.suppress(StateError, StateWriteError):  # the next cycle reports the fault
        await exporter.poller.reload()
        await exporter.delivery.reload()


async def _finish_cycle(exporter: Exporter, cycle: asyncio.Task[CycleReport], stop: asyncio.Event) -> bool:
    """Wait for `cycle`; on a stop, give the batch in progress the grace period to commit.
    False when it was abandoned."""
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({cycle, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if cycle.done():
        return True
    # Stop taking new pages; give the batch in progress the grace period to commit.
    exporter.poller.stop()
    done, _ = await asyncio.wait({cycle}, timeout=exporter.settings.poll.shutdown_grace)
    if done:
        return True
    cycle.cancel()
    log.warning("abandoned the poll cycle in progress; it is picked up after restart")
    with contextlib.suppress(asyncio.CancelledError):
        await cycle
    return False


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
    await _cancel(worker)
    try:
        delivered = await asyncio.wait_for(exporter.delivery.deliver(refetch=False), timeout=grace)
    except TimeoutError:
        delivered = False
    if not delivered:
        log.warning("some spans were not delivered before exit; they are sent after restart")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

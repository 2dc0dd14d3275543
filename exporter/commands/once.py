"""`bem-exporter once`: one full cycle, delivery included, and a one-line summary.

The summary says what happened in an SRE's words: calls discovered, finished and counted, the
calls still tracked, and the spans: delivered (how many calls' traces, including any an earlier
run had left), none to deliver, or left waiting for the next run. Its time is the whole run,
the wait on the trace backend included.
"""

from __future__ import annotations

import asyncio
import sys
import time

from exporter.app import Exporter, log_cycle, open_exporter
from exporter.config import Settings
from exporter.pipeline import CycleReport
from exporter.poll.progress import ProgressBar

CAMPAIGN_INTERVAL = 0.5
"""Seconds between tries for the leader lease while `once` waits for it (shared state)."""


async def once(settings: Settings) -> int:
    """One full cycle, delivery included; a one-line summary on stdout."""
    started = time.monotonic()
    # A bar only for a person watching: logs and pipes get the progress log lines alone.
    bar = ProgressBar() if sys.stderr.isatty() else None
    async with open_exporter(settings, progress=[bar] if bar is not None else []) as exporter:
        if exporter.leadership.replicated and not await _lead(exporter):
            print(
                "failed: another replica holds the leader lease (BEM_STATE_URL); "
                "`once` counts only as the leader, so nothing is counted twice"
            )
            return 1
        try:
            return await _cycle(exporter, started, bar)
        finally:
            await exporter.leadership.release()


async def _lead(exporter: Exporter) -> bool:
    """With shared state: take the lease (waiting at most one lease and one poll interval)
    and load the state under it."""
    wait = exporter.settings.state.lease + exporter.settings.poll.interval
    try:
        epoch = await asyncio.wait_for(exporter.leadership.campaign(CAMPAIGN_INTERVAL), timeout=wait)
    except TimeoutError:
        return False
    await exporter.poller.reload()
    await exporter.delivery.reload()
    exporter.leadership.took_over(epoch)
    return True


async def _cycle(exporter: Exporter, started: float, bar: ProgressBar | None) -> int:
    left_before = await exporter.state.count_unexported()
    await exporter.delivery.deliver()
    earlier = left_before - await exporter.state.count_unexported()
    try:
        report = await _cycle_delivering(exporter)
    finally:
        if bar is not None:
            bar.close()
    log_cycle(report)
    await exporter.delivery.deliver()
    waiting = await exporter.state.count_unexported()
    spans = _spans(exporter, left_before + report.counted - waiting, earlier, waiting)
    ok = report.ok and waiting == 0
    print(_summary(ok, report, spans, time.monotonic() - started))
    return 0 if ok else 1


async def _cycle_delivering(exporter: Exporter) -> CycleReport:
    """The cycle with delivery's worker beside it, as `run` has it: each page's spans leave
    once the page is committed, instead of a whole backfill's finished calls and traces
    waiting in memory for the cycle to end (3,000 calls held about 28 MiB)."""
    stop = asyncio.Event()
    worker = asyncio.create_task(exporter.delivery.run(stop))
    try:
        return await exporter.cycle()
    finally:
        stop.set()
        await worker


def _summary(ok: bool, report: CycleReport, spans: str, seconds: float) -> str:
    return (
        f"{'ok' if ok else 'failed'}: discovered {report.discovered}, finished {report.finished}, "
        f"counted {report.counted}, tracked {report.tracked}, {spans}, {seconds:.2f}s"
        + (f"; {report.error}" if report.error else "")
    )


def _spans(exporter: Exporter, delivered: int, earlier: int, waiting: int) -> str:
    """The spans' part of the summary, counted in calls (one trace each)."""
    if exporter.settings.traces.exporter == "none":
        return "spans not sent (OTEL_TRACES_EXPORTER=none)"
    parts = []
    if delivered > 0:
        left = f", {earlier} left by an earlier run" if earlier > 0 else ""
        parts.append(f"spans delivered ({_calls(delivered)}{left})")
    if waiting > 0:
        parts.append(f"spans left waiting ({_calls(waiting)}; the next run sends them)")
    return ", ".join(parts) or "no spans to deliver"


def _calls(count: int) -> str:
    return f"{count} call{'' if count == 1 else 's'}"

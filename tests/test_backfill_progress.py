"""A backfill and a catch-up say how far they are: log lines, the remaining-calls gauge and
/status report the right counts, against the simulator over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SIM_KEY, Clock, CollectingExporter, RecordingRecorder

from exporter.app import bem_client, progress_listeners
from exporter.config import ApiSettings, MetricsSettings, PollSettings, Secret
from exporter.metrics import Metrics
from exporter.pipeline import NullObserver
from exporter.poll import ApiTraces, PollLoop
from exporter.poll.progress import Progress
from exporter.state.sqlite import SqliteStore
from exporter.status import StatusBoard
from exporter.traces.delivery import Delivery, Retention

Start = Callable[..., Any]
REMAINING = "bem_exporter_backfill_remaining_calls"


class Watched:
    """A poll loop whose progress goes where `app` sends it, plus a record of what the gauge
    said at each report."""

    def __init__(self, url: str, clock: Clock) -> None:
        self.api = ApiSettings(url=url, key=Secret(SIM_KEY), version="v3", max_rps=1000, timeout=5)
        state_path = str(Path(tempfile.mkdtemp()) / "state.sqlite")
        self.poll = PollSettings(interval=15.0, lookback=3 * 3600.0, state_path=state_path)
        self.clock = clock
        self.metrics = Metrics(MetricsSettings(), "test")
        self.board = StatusBoard("test")
        self.seen: list[tuple[Progress, float | None]] = []

    def gauge(self) -> float | None:
        return self.metrics.live_registry.get_sample_value(REMAINING)

    def note(self, progress: Progress) -> None:
        self.seen.append((progress, self.gauge()))

    async def cycles(self, count: int) -> None:
        state = await SqliteStore.open(self.poll.state_path)
        retention = Retention(window=self.poll.lookback + self.poll.interval, every=self.poll.interval)
        listeners = [*progress_listeners(self.metrics.observer, self.board), self.note]
        try:
            async with bem_client(self.api, max_attempts=3) as client:
                delivery = Delivery(
                    CollectingExporter(), state, ApiTraces(client), NullObserver(), 10_000, retention, clock=self.clock
                )
                recorders = {"metrics": RecordingRecorder()}
                poller = PollLoop(
                    client, state, recorders, delivery, NullObserver(), self.poll, clock=self.clock, progress=listeners
                )
                await poller.reload()
                await delivery.reload()
                for _ in range(count):
                    self.clock.advance(1.0)
                    await poller.cycle()
        finally:
            await state.close()


def lines(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == message]


def test_backfill_reports_calls_done_total_and_remaining(
    sim_factory: Start, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    simulator, url = sim_factory(prefill=350, history=1800.0, arrival_rate=0.0)
    assert len(simulator.calls()) == 350
    watched = Watched(url, clock)
    with caplog.at_level(logging.INFO, logger="exporter.poll"):
        asyncio.run(watched.cycles(1))

    first = lines(caplog, "backfill progress")[0]  # after the first page of 100
    assert (first.calls_done, first.calls_total_estimate, first.calls_remaining) == (100, 350, 250)
    [finished] = lines(caplog, "backfill finished")
    assert (finished.calls_done, finished.calls_total_estimate, finished.calls_remaining) == (350, 350, 0)
    # The gauge says what the log says, page by page: 250, 150, 50 calls left, then none.
    assert [(p.calls, gauge) for p, gauge in watched.seen] == [(100, 250), (200, 150), (300, 50), (350, 0)]
    backfill = watched.board.snapshot().backfill
    assert backfill is not None
    assert (backfill.calls, backfill.done) == (350, True)
    assert backfill.until == pytest.approx(clock.now - 3 * 3600.0)


def test_a_catch_up_of_several_pages_reports_its_calls(
    sim_factory: Start, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    simulator, url = sim_factory(prefill=20, history=600.0, arrival_rate=0.0)
    watched = Watched(url, clock)
    asyncio.run(watched.cycles(1))
    for _ in range(230):  # downtime: 230 new calls, more than two pages, wait behind the cursor
        clock.advance(1.0)
        simulator.create_call("invoice-intake")
    watched.seen.clear()
    with caplog.at_level(logging.INFO, logger="exporter.poll"):
        asyncio.run(watched.cycles(1))

    [finished] = lines(caplog, "catch-up finished")
    assert (finished.calls_done, finished.calls_remaining) == (230, 0)
    counts = [p.calls for p, _ in watched.seen]  # pages re-read the overlap behind the cursor
    assert len(counts) == 3 and counts == sorted(counts) and counts[-1] == 230
    assert [gauge for _, gauge in watched.seen][-1] == 0
    first = lines(caplog, "catch-up progress")[0]
    assert first.calls_done == counts[0]
    assert first.calls_remaining == first.calls_total_estimate - counts[0]


def test_one_page_of_news_is_no_catch_up(sim_factory: Start, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    simulator, url = sim_factory(prefill=20, history=600.0, arrival_rate=0.0)
    watched = Watched(url, clock)
    asyncio.run(watched.cycles(1))
    for _ in range(30):
        simulator.create_call("invoice-intake")
    watched.seen.clear()
    with caplog.at_level(logging.INFO, logger="exporter.poll"):
        asyncio.run(watched.cycles(1))
    assert watched.seen == []
    assert not lines(caplog, "catch-up progress")

"""The poll loop against the simulator over real HTTP: discovery, refresh, hand-on, faults."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from conftest import SIM_KEY, Clock, CollectingExporter, RecordingRecorder

from exporter.app import bem_client
from exporter.config import ApiSettings, PollSettings, Secret
from exporter.pipeline import CycleReport, NullObserver
from exporter.poll import ApiTraces, PollLoop
from exporter.state.sqlite import SqliteStore
from exporter.traces.delivery import Delivery, Retention

Start = Callable[..., Any]


class Harness:
    """A poller over a state file, with sink doubles that survive 'restarts'."""

    def __init__(self, url: str, clock: Clock, state_path: str | None = None, version: str = "v3", **poll: Any) -> None:
        if state_path is None:  # a file: each run() is a restart, and :memory: forgets everything
            state_path = str(Path(tempfile.mkdtemp()) / "state.sqlite")
        self.api = ApiSettings(url=url, key=Secret(SIM_KEY), version=version, max_rps=1000, timeout=5)
        self.poll = PollSettings(**{"interval": 15.0, "lookback": 3600.0, "state_path": state_path, **poll})
        self.clock = clock
        self.recorder = RecordingRecorder()
        self.exporter = CollectingExporter()
        self.reports: list[CycleReport] = []

    async def cycles(self, count: int, step: float = 15.0, between: Callable[[int], None] | None = None) -> None:
        state = await SqliteStore.open(self.poll.state_path)
        retention = Retention(window=self.poll.lookback + self.poll.interval, every=self.poll.interval)
        try:
            async with bem_client(self.api, max_attempts=3) as client:
                traces = ApiTraces(client)
                delivery = Delivery(
                    self.exporter,
                    state,
                    traces,
                    NullObserver(),
                    max_backlog=10_000,
                    retention=retention,
                    clock=self.clock,
                )
                recorders = {"metrics": self.recorder}
                poller = PollLoop(client, state, recorders, delivery, NullObserver(), self.poll, clock=self.clock)
                await poller.reload()
                await delivery.reload()
                for index in range(count):
                    self.clock.advance(step)  # time passes, then the cycle looks
                    if between is not None:
                        between(index)
                    self.reports.append(await poller.cycle())
                    await delivery.deliver()
        finally:
            await state.close()

    def run(self, count: int, step: float = 15.0, between: Callable[[int], None] | None = None) -> None:
        asyncio.run(self.cycles(count, step, between))


def finished_ids(simulator: Any, since: float | None = None) -> set[str]:
    return {
        call["callID"]
        for call in simulator.calls()
        if call["status"] in ("completed", "failed")
        and (since is None or datetime.fromisoformat(call["createdAt"]).timestamp() >= since)
    }


def test_backfill_then_every_finished_call_handed_exactly_once(sim_factory: Start, clock: Clock) -> None:
    simulator, url = sim_factory(prefill=400, history=1800.0, arrival_rate=0.0)
    ids_in_creation_order = [call["callID"] for call in simulator.calls()]
    assert ids_in_creation_order != sorted(ids_in_creation_order), "the simulator's ids must not sort by time"
    harness = Harness(url, clock)
    harness.run(1, step=0.0)
    assert set(harness.recorder.published) == finished_ids(simulator)
    harness.run(60, step=60.0)  # an hour later everything in flight has finished
    truth = finished_ids(simulator)
    assert len(truth) == 400
    assert set(harness.recorder.published) == truth
    assert set(harness.recorder.published.values()) == {1}
    assert harness.exporter.exported == harness.recorder.published


def test_first_start_respects_lookback(sim_factory: Start, clock: Clock) -> None:
    simulator, url = sim_factory(prefill=300, history=3 * 3600.0, arrival_rate=0.0)
    harness = Harness(url, clock, lookback=3600.0)
    harness.run(1, step=0.0)
    in_window = finished_ids(simulator, since=clock.now - 3600.0)
    assert 0 < len(in_window) < len(finished_ids(simulator))
    assert set(harness.recorder.published) == in_window


def test_live_traffic_across_restarts_counts_each_call_once(sim_factory: Start, clock: Clock, tmp_path: Path) -> None:
    simulator, url = sim_factory(prefill=50, history=600.0, arrival_rate=2.0, seed=3)
    state_path = str(tmp_path / "state.sqlite")
    first = Harness(url, clock, state_path)
    first.run(10)
    second = Harness(url, clock, state_path)  # a restart: new process, same state
    second.run(10)

    def quiet(index: int) -> None:
        if index == 0:
            simulator.config.arrival_rate = 0.0

    third = Harness(url, clock, state_path)
    third.run(40, step=60.0, between=quiet)
    handed = first.recorder.published + second.recorder.published + third.recorder.published
    assert set(handed) == finished_ids(simulator)
    assert set(handed.values()) == {1}
    assert len(handed) > 100


def test_refresh_is_batched_by_100_ids(sim_factory: Start, clock: Clock) -> None:
    # Calls that run long: after discovery they stay in flight for several cycles.
    simulator, url = sim_factory(prefill=0, arrival_rate=0.0, speed=0.05)
    for _ in range(250):
        simulator.create_call("invoice-intake")
    harness = Harness(url, clock)
    harness.run(1, step=1.0)
    assert harness.reports[-1].tracked == 250
    before = sum(simulator.requests.values())
    harness.run(1, step=1.0)
    report = harness.reports[-1]
    assert report.refreshed == 250
    # 3 refresh requests (100 + 100 + 50 ids) and 1 discovery page
    assert sum(simulator.requests.values()) - before == 4


def test_requests_per_finished_call_approach_one(sim_factory: Start, clock: Clock) -> None:
    simulator, url = sim_factory(prefill=1000, history=1800.0, arrival_rate=0.0)
    harness = Harness(url, clock)
    harness.run(40, step=90.0)
    handed = sum(harness.recorder.published.values())
    assert handed == len(finished_ids(simulator)) == 1000
    requests = sum(simulator.requests.values())
    assert requests / handed < 1.1, simulator.requests


def test_faults_lose_nothing(sim_factory: Start, clock: Clock) -> None:
    simulator, url = sim_factory(prefill=300, history=1800.0, arrival_rate=0.5, seed=11)
    faults = simulator.config.faults
    faults.rate_429, faults.retry_after = 0.2, 0.01
    faults.rate_5xx = 0.1
    faults.malformed_rate = 0.05
    faults.truncated_rate = 0.05
    harness = Harness(url, clock)
    harness.run(10)
    assert any(report.rejected_records for report in harness.reports)

    def calm(index: int) -> None:
        if index == 0:
            faults.rate_429 = faults.rate_5xx = faults.malformed_rate = faults.truncated_rate = 0.0
            simulator.config.arrival_rate = 0.0

    harness.run(40, step=60.0, between=calm)
    assert set(harness.recorder.published) == finished_ids(simulator)
    assert set(harness.recorder.published.values()) == {1}


def test_api_down_then_back(sim_factory: Start, clock: Clock) -> None:
    simulator, url = sim_factory(prefill=100, history=900.0, arrival_rate=0.2)
    harness = Harness(url, clock)
    harness.run(2)

    def outage(index: int) -> None:
        simulator.config.faults.down = index < 3
        if index == 3:
            simulator.config.arrival_rate = 0.0

    harness.run(40, step=60.0, between=outage)
    assert [r.ok for r in harness.reports[2:5]] == [False, False, False]
    assert all("cannot connect" in (r.error or "") or "after" in (r.error or "") for r in harness.reports[2:5])
    assert harness.reports[-1].ok
    assert set(harness.recorder.published) == finished_ids(simulator)
    assert set(harness.recorder.published.values()) == {1}


def test_spans_wait_while_the_backend_is_down(sim_factory: Start, clock: Clock, tmp_path: Path) -> None:
    simulator, url = sim_factory(prefill=200, history=900.0, arrival_rate=0.0)
    harness = Harness(url, clock, str(tmp_path / "s.sqlite"))
    harness.exporter.down = True
    harness.run(20, step=60.0)
    assert not harness.exporter.exported
    assert len(harness.recorder.published) == len(finished_ids(simulator))
    harness.exporter.down = False
    harness.run(1)
    assert harness.exporter.exported == harness.recorder.published


def test_v2_mode(sim_factory: Start, clock: Clock) -> None:
    simulator, url = sim_factory(prefill=120, history=900.0, arrival_rate=0.0)
    harness = Harness(url, clock, version="v2")
    harness.run(30, step=60.0)
    assert set(harness.recorder.published) == finished_ids(simulator)
    assert all(" /v2/" in endpoint for endpoint in simulator.requests), simulator.requests

"""The batch and the reload, against the simulator over real HTTP and a real SQLite state:
several named recorders staged, committed once, published all or discarded all; memory that
moves only with a commit; a second loop taking over from the store at any moment."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from conftest import SIM_KEY, Clock, RecordingRecorder

from exporter.app import bem_client
from exporter.config import ApiSettings, PollSettings, Secret
from exporter.pipeline import NullObserver
from exporter.poll import PollLoop
from exporter.state.sqlite import SqliteStore

T = TypeVar("T")


class NamedRecorder(RecordingRecorder):
    """Snapshots carry the recorder's name and what it published, so a restore is checkable."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.restored: list[bytes] = []

    def stage(self, batch: Any) -> bytes:
        super().stage(batch)
        return f"{self.name}:{len(self.published) + len(batch)}".encode()

    def restore(self, snapshot: bytes) -> None:
        self.restored.append(snapshot)


class Handoff:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, batch: Any) -> None:
        self.submitted.extend(item.call.call_id for item in batch)


def _with_loop(
    url: str, path: Path, clock: Clock, recorders: dict[str, NamedRecorder], handoff: Handoff
) -> Callable[[Callable[[PollLoop, SqliteStore], Awaitable[T]]], T]:
    api = ApiSettings(url=url, key=Secret(SIM_KEY), version="v3", max_rps=1000, timeout=5)
    poll = PollSettings(interval=15.0, lookback=3600.0, state_path=str(path))

    def run(work: Callable[[PollLoop, SqliteStore], Awaitable[T]]) -> T:
        async def life() -> T:
            store = await SqliteStore.open(str(path))
            try:
                async with bem_client(api, max_attempts=2) as client:
                    loop = PollLoop(client, store, recorders, handoff, NullObserver(), poll, clock=clock)
                    await loop.reload()
                    return await work(loop, store)
            finally:
                await store.close()

        return asyncio.run(life())

    return run


def test_every_recorder_is_committed_once_and_a_standby_reloads_it_all(
    sim_factory: Callable[..., Any], clock: Clock, tmp_path: Path
) -> None:
    simulator, url = sim_factory(prefill=150, history=900.0, arrival_rate=0.0, speed=0.05)
    recorders = {"metrics": NamedRecorder("metrics"), "canary": NamedRecorder("canary")}
    handoff = Handoff()
    path = tmp_path / "state.sqlite"

    async def one_cycle(loop: PollLoop, store: SqliteStore) -> tuple[int, dict[str, bytes]]:
        report = await loop.cycle()
        assert report.ok, report.error
        return loop.tracked, (await store.load()).snapshots

    tracked, snapshots = _with_loop(url, path, clock, recorders, handoff)(one_cycle)
    finished = {c["callID"] for c in simulator.calls() if c["status"] in ("completed", "failed")}
    assert finished and tracked > 0
    assert set(recorders["metrics"].published) == set(recorders["canary"].published) == finished
    assert sorted(handoff.submitted) == sorted(finished)
    assert set(snapshots) == {"metrics", "canary"}

    standby = {"metrics": NamedRecorder("metrics"), "canary": NamedRecorder("canary")}

    async def take_over(loop: PollLoop, store: SqliteStore) -> int:
        return loop.tracked

    assert _with_loop(url, path, clock, standby, Handoff())(take_over) == tracked
    assert standby["metrics"].restored == [snapshots["metrics"]]
    assert standby["canary"].restored == [snapshots["canary"]]


def test_a_failed_commit_discards_every_recorder_and_moves_nothing(
    sim_factory: Callable[..., Any], clock: Clock, tmp_path: Path
) -> None:
    simulator, url = sim_factory(prefill=50, history=900.0, arrival_rate=0.0, speed=0.05)
    recorders = {"metrics": NamedRecorder("metrics"), "canary": NamedRecorder("canary")}
    handoff = Handoff()
    path = tmp_path / "state.sqlite"

    async def fenced_cycle(loop: PollLoop, store: SqliteStore) -> tuple[bool, str | None, bool, int]:
        os.remove(path)  # the file under the running loop is gone: every commit is refused
        report = await loop.cycle()
        return report.ok, report.error, loop.state_ok, loop.tracked

    ok, error, state_ok, tracked = _with_loop(url, path, clock, recorders, handoff)(fenced_cycle)
    assert not ok and not state_ok
    assert error is not None and error.startswith("state write failing:") and "removed or replaced" in error
    assert tracked == 0
    assert not recorders["metrics"].published and not recorders["canary"].published
    assert not handoff.submitted
    assert simulator.calls()  # there was something to count

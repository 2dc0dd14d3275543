"""What a standby serves: the counts of the shared state, read again every poll interval.

A standby does not poll bem, but it serves `/metrics` with exactly the values the leader last
committed, so every replica shows the same series and Prometheus may scrape one or all. Only
a snapshot newer than the one shown is published: the committed `bem_calls_total` only grows
(every snapshot is written with a batch of at least one finished call), so a snapshot whose
total is not larger than the one shown is the same or an older one (a database that failed
over to a lagging copy), and a counter never goes backwards on a replica.

Reading needs no lease. `readable` is the standby's health: `bem_exporter_up` and `/readyz`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from exporter.health import HealthLog
from exporter.metrics.recorder import CALLS_TOTAL, MetricsRecorder
from exporter.pipeline import CallRecorder
from exporter.state.store import StateError, StateStore, StateWriteError

log = logging.getLogger("exporter")


class ReadObserver(Protocol):
    def state_readable(self, ok: bool) -> None: ...


class StandbyMirror:
    def __init__(self, store: StateStore, recorders: Mapping[str, CallRecorder], observer: ReadObserver) -> None:
        self._store = store
        self._recorders = recorders
        self._observer = observer
        self._shown: dict[str, bytes] = {}
        self._health = HealthLog(log, "standby read of the shared state")
        self.readable = False
        """Whether the last read of the state succeeded."""

    async def refresh(self) -> None:
        """Read the state; show every snapshot newer than the one shown."""
        try:
            stored = await self._store.load()
        except (StateError, StateWriteError) as error:
            self._read(False, str(error))
            return
        for name, snapshot in stored.snapshots.items():
            recorder = self._recorders.get(name)
            if recorder is not None and self._newer(name, recorder, snapshot):
                recorder.restore(snapshot)
                self._shown[name] = snapshot
        self._read(True)

    def forget(self) -> None:
        """The recorders were written by this replica as leader: compare with what they show."""
        self._shown.clear()

    def _newer(self, name: str, recorder: CallRecorder, snapshot: bytes) -> bool:
        if snapshot == self._shown.get(name):
            return False
        if isinstance(recorder, MetricsRecorder):
            return _calls_total(recorder, snapshot) > sum(recorder.store.published.counters[CALLS_TOTAL].values())
        return True

    def _read(self, ok: bool, error: str = "") -> None:
        self.readable = ok
        self._observer.state_readable(ok)
        if ok:
            self._health.ok()
        else:
            self._health.failing(error)


def _calls_total(recorder: MetricsRecorder, snapshot: bytes) -> int:
    try:
        tables = recorder.store.load(snapshot, lambda _names, _key: True)
    except ValueError:  # unreadable: never shown (restore would reset the counters)
        return -1
    return sum(tables.counters[CALLS_TOTAL].values())

"""One poll cycle: discovery, then refresh and abandonment, reported as one `CycleReport`.

The parts share the in-memory `Position`, which `reload` fills from the store at any moment
(a start, or a standby taking over) together with every recorder's snapshot. A state fault
ends the cycle without advancing anything, is logged once per change as what it is, and makes
the exporter not ready (`state_ok`) until a commit succeeds again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from exporter.bem.client import ApiError, BemClient
from exporter.config import PollSettings
from exporter.health import HealthLog
from exporter.pipeline import CallRecorder, CycleReport, Handoff, Observer
from exporter.poll.batch import Batch
from exporter.poll.discovery import Discovery
from exporter.poll.hinted import HintedReads
from exporter.poll.hints import HintQueue
from exporter.poll.listing import Listing
from exporter.poll.position import Position
from exporter.poll.progress import Listener
from exporter.poll.refresh import Refresh
from exporter.poll.traces import ApiTraces
from exporter.state.store import StateError, StateStore, StateWriteError, fault_of

log = logging.getLogger("exporter.poll")


class PollLoop:
    def __init__(
        self,
        client: BemClient,
        store: StateStore,
        recorders: Mapping[str, CallRecorder],
        handoff: Handoff,
        observer: Observer,
        settings: PollSettings,
        workflows: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        api_host: str | None = None,
        progress: Sequence[Listener] = (),
        hints: HintQueue | None = None,
    ) -> None:
        self._store = store
        self._recorders = recorders
        self._observer = observer
        self._clock = clock
        self._listing = Listing(client, clock, api_host)
        self._batch = Batch(store, recorders, ApiTraces(client), handoff, Position())
        self._discovery = Discovery(self._listing, self._batch, store, settings, workflows, clock, progress)
        self._refresh = Refresh(client, self._batch, observer, settings, clock)
        self.hints = hints
        """Calls webhooks named (None: no webhook listener); `follow_hints` reads them."""
        self._hinted = None if hints is None else HintedReads(client, self._batch, store, hints, workflows)
        self._state = HealthLog(log, "state write")
        self._loaded = False

    @property
    def tracked(self) -> int:
        return len(self._batch.position.tracked)

    @property
    def last_listing_ok(self) -> float | None:
        """Epoch seconds of the last successful list request (readiness)."""
        return self._listing.last_ok

    @property
    def state_ok(self) -> bool:
        """False from a failed state read or commit until a commit succeeds again."""
        return self._state.healthy is not False

    def stop(self) -> None:
        """Start no new page; the cycle in progress ends after its current batch."""
        self._discovery.stopping = self._refresh.stopping = True

    async def reload(self) -> None:
        """Take cursor, tracked calls, backfill and every recorder's counts from the store."""
        stored = await self._store.load()
        self._batch.position.reload(stored)
        for name, recorder in self._recorders.items():
            snapshot = stored.snapshots.get(name)
            if snapshot is not None:
                recorder.restore(snapshot)
        self._loaded = True

    async def cycle(self) -> CycleReport:
        started = time.monotonic()
        report = CycleReport()
        self._batch.in_progress = {}
        if self.hints is not None:
            self.hints.listed()
        listed = await self._run_parts(report)
        report.ok = listed and self.state_ok
        if report.ok:
            self._observer.in_progress(list(self._batch.in_progress.values()), self._clock())
        report.duration_seconds = time.monotonic() - started
        report.tracked = self.tracked
        return report

    async def _run_parts(self, report: CycleReport) -> bool:
        """Run discovery, refresh and abandonment; whether discovery listed all it wanted to."""
        self._listing.cycle_started()
        commits = self._batch.commits
        listed = False
        try:
            if not self._loaded:
                await self.reload()
            await self._discovery.run(report)
            listed = True
            await self._refresh.run(report)
            await self._refresh.abandon_stuck(report)
        except ApiError as failure:
            report.error = self._listing.describe(failure)
            self._listing.cycle_ended(listed, failure)
            self._writable_if_committed(commits)
            return listed
        except (StateError, StateWriteError) as failure:
            # Not "recovered" by a commit earlier in this cycle: the state failed last.
            self._state_failed(failure, report)
            return listed
        self._listing.cycle_ended(True, None)
        self._writable_if_committed(commits)
        return True

    async def follow_hints(self) -> CycleReport:
        """Between cycles, in the same task: read the calls webhooks named that are due, and
        list early when asked. Counted calls go through the same batch commit as the poll's; a
        failure leaves them to the next step or cycle (logged by the next cycle if it lasts)."""
        assert self.hints is not None and self._hinted is not None, "no webhook hints to follow"
        started = time.monotonic()
        report = CycleReport()
        call_ids, listing = self.hints.take_due()
        commits = self._batch.commits
        try:
            if not self._loaded:
                await self.reload()
            if call_ids:
                await self._hinted.read(call_ids, report)
            if listing:
                await self._discovery.run(report)
        except ApiError as failure:
            report.error = self._listing.describe(failure)
        except (StateError, StateWriteError) as failure:
            self._state_failed(failure, report)
        self._writable_if_committed(commits)
        report.ok = report.error is None
        if report.ok and report.counted:
            self._observer.in_progress(list(self._batch.in_progress.values()), self._clock())
        report.duration_seconds = time.monotonic() - started
        report.tracked = self.tracked
        return report

    def _state_failed(self, failure: StateError | StateWriteError, report: CycleReport) -> None:
        report.error = f"state write failing: {failure}"
        self._state.failing(str(failure), level=logging.ERROR)
        self._observer.state_error(fault_of(failure))

    def _writable_if_committed(self, commits_before: int) -> None:
        if self._batch.commits > commits_before:
            self._state.ok()

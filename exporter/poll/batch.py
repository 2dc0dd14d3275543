"""One batch: stage -> commit -> publish -> hand to delivery.

Every named recorder stages the batch, one state commit writes their snapshots with the
handled marks, tracked calls and cursor, and only then do the counts become visible, the
in-memory position advance and the spans go to delivery. A failed commit discards every
staged count and advances nothing: the same calls are found and handled again next cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.bem.models import Call
from exporter.pipeline import CallRecorder, CycleReport, FinishedCall, Handoff
from exporter.poll.position import Position
from exporter.poll.traces import ApiTraces
from exporter.state.store import Changes, StateStore


@dataclass(slots=True)
class Sighting:
    """Calls a page (or a refresh) showed, and where the cycle already saw them."""

    calls: Sequence[Call]
    seen: set[str] = field(default_factory=set)
    """Call ids already handled by this cycle's discovery (the overlap behind the cursor)."""
    refreshed: bool = False
    """Tracked calls read again by id: known to be unhandled, so no look-up of handled marks."""


class Batch:
    def __init__(
        self,
        store: StateStore,
        recorders: Mapping[str, CallRecorder],
        traces: ApiTraces,
        handoff: Handoff,
        position: Position,
    ) -> None:
        self._store = store
        self._recorders = recorders
        self._traces = traces
        self._handoff = handoff
        self.position = position
        self.in_progress: dict[str, Call] = {}
        """Calls seen pending or running in the cycle under way."""
        self.commits = 0
        """Successful commits so far (a cycle that made one knows the state is writable)."""

    async def take(self, sighting: Sighting, changes: Changes, report: CycleReport) -> None:
        """Track what is in flight, hand on what finished, and commit it all as one batch."""
        candidates = [call for call in sighting.calls if call.call_id not in sighting.seen]
        if not sighting.refreshed:
            known = await self._store.handled([call.call_id for call in candidates])
            tracked = self.position.tracked
            candidates = [call for call in candidates if call.call_id not in known and call.call_id not in tracked]
            report.discovered += len(candidates)
        finished = self._sort(candidates, changes)
        report.finished += len(finished)
        batch, failed = await self._traces.fetch(finished)
        report.trace_fetch_failures += len(failed)
        # Keep a call whose trace failed tracked: the next refresh sees it finished and fetches again.
        self._track(failed, changes)
        changes.handled = [(item.call.call_id, item.call.created_at.timestamp()) for item in batch]
        changes.untracked = [item.call.call_id for item in batch if item.call.call_id in self.position.tracked]
        await self.write(changes, batch)
        report.counted += len(batch)

    async def write(self, changes: Changes, batch: Sequence[FinishedCall] = ()) -> None:
        """Stage every recorder, commit once, then publish all (or discard all on failure)."""
        staged: list[CallRecorder] = []
        try:
            if batch:
                for name, recorder in self._recorders.items():
                    changes.snapshots[name] = recorder.stage(batch)
                    staged.append(recorder)
            await self._store.commit(changes)
        except BaseException:
            for recorder in staged:
                recorder.discard()
            raise
        self.commits += 1
        for recorder in staged:
            recorder.publish()
        self.position.advance(changes)
        self._handoff.submit(batch)

    def _sort(self, calls: Sequence[Call], changes: Changes) -> list[Call]:
        """The finished calls; the others are in progress, and tracked when new."""
        finished: list[Call] = []
        for call in calls:
            if call.finished:
                finished.append(call)
                self.in_progress.pop(call.call_id, None)
            else:
                self.in_progress[call.call_id] = call
                self._track([call], changes)
        return finished

    def _track(self, calls: Sequence[Call], changes: Changes) -> None:
        for call in calls:
            if call.call_id not in self.position.tracked:
                changes.tracked.append((call.call_id, call.created_at.timestamp()))

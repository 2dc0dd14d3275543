"""What the poll loop keeps in memory between cycles: a copy of the stored state.

It changes only through `advance`, with changes the state has just committed, so memory never
runs ahead of the disk (a failed commit leaves both where they were), and `Position.of` rebuilds
it again from the store at any moment (`reload`: a start, or a standby taking over).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.state.store import Backfill, Changes, Stored


@dataclass(slots=True)
class Position:
    cursor: list[str] = field(default_factory=list)
    """The last call ids listed in creation order, newest last (the overlap re-read each cycle)."""
    tracked: dict[str, float] = field(default_factory=dict)
    """Call id -> createdAt epoch of calls seen pending or running."""
    backfill: Backfill | None = None

    def reload(self, stored: Stored) -> None:
        self.cursor = list(stored.cursor)
        self.tracked = dict(stored.tracked)
        self.backfill = stored.backfill

    def advance(self, committed: Changes) -> None:
        if committed.cursor is not None:
            self.cursor = list(committed.cursor)
        if committed.backfill_done:
            self.backfill = None
        elif committed.backfill is not None:
            self.backfill = committed.backfill
        for call_id, created in committed.tracked:
            self.tracked[call_id] = created
        for call_id in committed.untracked:
            self.tracked.pop(call_id, None)

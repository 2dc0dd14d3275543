"""What the poll loop and delivery need from durable state, whatever engine keeps it.

No engine is imported here: SQLite (`exporter.state.sqlite`) and PostgreSQL implement
`StateStore`, and the contract tests (tests/test_state_contract.py) run against each.

Exactly-once counting rests on `commit`: one call writes everything a batch changed (handled
marks, tracked calls, the cursor, the backfill's progress, the recorders' snapshots) or, when
it raises, nothing at all. Callers advance their in-memory state only after it returned.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

WriteFault = Literal["disk_full", "io_error", "corrupt", "fenced", "unavailable", "other"]


class StateError(Exception):
    """The state cannot be opened or used at all; the one-line message names BEM_STATE_PATH
    (or the engine's setting) and says what to do."""


class StateWriteError(Exception):
    """A write (a commit, an export mark, a prune) failed and changed nothing."""

    def __init__(self, kind: WriteFault, message: str) -> None:
        super().__init__(message)
        self.kind: WriteFault = kind


def fault_of(error: StateError | StateWriteError) -> WriteFault:
    """What went wrong, for `bem_exporter_state_errors_total{kind}`: a state that cannot be
    used at all is `unavailable`."""
    return error.kind if isinstance(error, StateWriteError) else "unavailable"


class FencedError(StateWriteError):
    """This process may no longer write: another writer holds the state (a lost leader lease,
    or a state file replaced under the running exporter)."""

    def __init__(self, message: str) -> None:
        super().__init__("fenced", message)


@dataclass(frozen=True, slots=True)
class Backfill:
    """A first-start scan (newest to oldest) that has not reached the lookback boundary yet."""

    until: float
    """Calls created before this epoch second are out of the lookback window."""
    after: str | None = None
    """The last call id the scan has handled (its `startingAfter` in descending order)."""


@dataclass(slots=True)
class Changes:
    """Everything one batch changes, written in one transaction."""

    handled: list[tuple[str, float]] = field(default_factory=list)
    """(call id, createdAt epoch) of calls handed to the sinks: counted, spans not yet exported."""
    tracked: list[tuple[str, float]] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    cursor: list[str] | None = None
    backfill: Backfill | None = None
    backfill_done: bool = False
    snapshots: dict[str, bytes] = field(default_factory=dict)
    """Recorder name -> the snapshot that includes this batch's staged counts."""


@dataclass(frozen=True, slots=True)
class Stored:
    """Everything the poll loop keeps in memory, as the state holds it now."""

    cursor: list[str] = field(default_factory=list)
    tracked: dict[str, float] = field(default_factory=dict)
    """Call id -> createdAt epoch of calls seen pending or running."""
    backfill: Backfill | None = None
    snapshots: dict[str, bytes] = field(default_factory=dict)


class WriterGuard(Protocol):
    """Makes sure this process is the only writer (a file lock, a leader lease). Blocking:
    engines call it from their own worker, never on the event loop."""

    def verify(self) -> None:
        """Raise `FencedError` when this process may no longer write."""
        ...

    def release(self) -> None: ...


class StateStore(Protocol):
    """Durable state. Every method may raise `StateError` (the store is unusable); the writing
    ones raise `StateWriteError` when the write failed and changed nothing."""

    async def load(self) -> Stored:
        """The cursor, tracked calls, backfill and snapshots as stored now (a start, or a
        standby taking over)."""
        ...

    async def handled(self, call_ids: Collection[str]) -> set[str]:
        """Which of `call_ids` were already handed to the sinks."""
        ...

    async def commit(self, changes: Changes) -> None:
        """Write all of `changes` atomically, or raise and write nothing."""
        ...

    async def mark_exported(self, call_ids: Sequence[str]) -> None:
        """Their spans were delivered (or given up on): no longer `unexported`."""
        ...

    async def unexported(self, limit: int, skip: Collection[str] = ()) -> list[str]:
        """Up to `limit` handled calls whose spans are not delivered, oldest first, not in `skip`."""
        ...

    async def count_unexported(self) -> int: ...

    async def prune(self, created_before: float, keep: Collection[str] = ()) -> int:
        """Forget handled calls created before `created_before`, except unexported ones in
        `keep` (spans still on their way); return how many forgotten ones were unexported
        (given up on: the caller counts them as dropped)."""
        ...

    async def close(self) -> None: ...

"""This replica's role: the single writer (SQLite), or leader or standby of a shared
PostgreSQL state.

A standby campaigns for the leader lease (timed by the database's clock, see
`exporter.state.lease`); the runner reloads the state when it gets it and calls `took_over`.
The lease is lost when its renewal fails past the local deadline (`Lease.keep` returns) or a
write is refused by the fence (`FenceWatch` sees the `FencedError`), whichever comes first:
`lost()` returns, the runner stops polling and delivery at once and calls `step_down`, which
says so in one log line. Nothing here polls: the runner drives the parts, this module only
holds and reports the role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence
from typing import Protocol

from exporter.state.store import Changes, FencedError, StateStore, Stored
from exporter.status.board import Role

log = logging.getLogger("exporter")


class LeaseHolder(Protocol):
    """What leadership needs of `exporter.state.lease.Lease`."""

    async def campaign(self, interval: float) -> int: ...

    async def keep(self) -> str: ...

    async def release(self) -> None: ...


class RoleObserver(Protocol):
    def leader(self, is_leader: bool) -> None: ...

    def start_as_standby(self) -> None: ...

    def fenced_commit(self) -> None: ...


class RoleBoard(Protocol):
    def set_role(self, role: Role) -> None: ...


class Leadership:
    """The role of this replica. Without a lease (SQLite) it is always the writer."""

    def __init__(self, lease: LeaseHolder | None, observer: RoleObserver, board: RoleBoard | None = None) -> None:
        self._lease = lease
        self._observer = observer
        self._board = board
        self._leading = lease is None
        self._epoch: int | None = None
        self._fenced = asyncio.Event()
        self._fence_reason = ""
        if lease is not None:
            observer.start_as_standby()
        self._show("single" if lease is None else "standby")

    @property
    def replicated(self) -> bool:
        """True when replicas share the state and this one may be a standby."""
        return self._lease is not None

    def is_leader(self) -> bool:
        """Whether this replica polls, exports spans and creates canary calls now."""
        return self._leading

    async def campaign(self, interval: float) -> int:
        """Wait until this replica holds the lease; its epoch."""
        assert self._lease is not None, "campaign without a lease"
        return await self._lease.campaign(interval)

    def took_over(self, epoch: int) -> None:
        """The state was reloaded under the lease of `epoch`: lead."""
        self._leading, self._epoch = True, epoch
        self._fenced.clear()
        self._observer.leader(True)
        self._show("leader")
        log.info(f"took the leader lease (epoch {epoch}): polling")

    async def lost(self) -> str:
        """Renew the lease while it holds; return why it was lost."""
        assert self._lease is not None, "no lease to keep"
        keeper = asyncio.create_task(self._lease.keep())
        fence = asyncio.create_task(self._fenced.wait())
        try:
            await asyncio.wait({keeper, fence}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keeper.cancel()
            fence.cancel()
        if keeper.done() and not keeper.cancelled():
            return keeper.result()
        return self._fence_reason

    def fenced(self, error: FencedError, *, commit: bool) -> None:
        """A write was refused because the lease is gone (`FenceWatch` reports it)."""
        if commit:
            self._observer.fenced_commit()
        if self._leading and not self._fenced.is_set():
            self._fence_reason = str(error)
            self._fenced.set()

    def step_down(self, reason: str) -> None:
        """Polling and delivery have stopped: stand by, and say so once."""
        self._leading = False
        self._observer.leader(False)
        self._show("standby")
        log.warning(f"lost the leader lease (epoch {self._epoch}): standing by", extra={"reason": reason})

    async def release(self) -> None:
        """Give the lease up, so that a standby takes over without waiting for it to expire."""
        self._leading = self._lease is None
        if self._lease is not None:
            await self._lease.release()

    def _show(self, role: Role) -> None:
        if self._board is not None:
            self._board.set_role(role)


class FenceWatch:
    """A `StateStore` that tells leadership when a write is refused by the fence, so that the
    leader steps down at the first refused write instead of at its next renewal."""

    def __init__(self, store: StateStore, leadership: Leadership) -> None:
        self._store = store
        self._fenced = leadership.fenced

    async def load(self) -> Stored:
        return await self._store.load()

    async def handled(self, call_ids: Collection[str]) -> set[str]:
        return await self._store.handled(call_ids)

    async def commit(self, changes: Changes) -> None:
        try:
            await self._store.commit(changes)
        except FencedError as error:
            self._fenced(error, commit=True)
            raise

    async def mark_exported(self, call_ids: Sequence[str]) -> None:
        try:
            await self._store.mark_exported(call_ids)
        except FencedError as error:
            self._fenced(error, commit=False)
            raise

    async def unexported(self, limit: int, skip: Collection[str] = ()) -> list[str]:
        return await self._store.unexported(limit, skip)

    async def count_unexported(self) -> int:
        return await self._store.count_unexported()

    async def prune(self, created_before: float, keep: Collection[str] = ()) -> int:
        try:
            return await self._store.prune(created_before, keep)
        except FencedError as error:
            self._fenced(error, commit=False)
            raise

    async def close(self) -> None:
        await self._store.close()

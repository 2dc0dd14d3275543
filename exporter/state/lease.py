"""The leader lease: which replica may write the shared PostgreSQL state, with a fencing token.

One row of `bem_lease` names the holder, the time its lease runs out and an epoch. Time is the
database's (`clock_timestamp()`), never a replica's: replicas whose clocks disagree still agree
on who holds the lease. A replica takes the lease only when it is free or expired, and every
takeover increments the epoch. The holder renews it every third of its duration; a replica that
cannot renew before its lease would run out stops on its own (`keep()` returns), and one that
was paused past its lease and wakes up still believes it leads, which is why every write of the
state checks holder, epoch and expiry inside its own transaction (`verify`), with the lease row
locked so that a takeover waits for that transaction and the new leader loads the state after
it. A write that fails that check raises `FencedError` and changes nothing.

Local deadline: after a renewal sent at monotonic time t the lease is treated as ending at
t + duration, which is never later than the database's expiry (the server stamped it after t).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from exporter.state.postgres_connect import Pool, Target, classify, describe
from exporter.state.store import FencedError, StateWriteError

NAME = "leader"
RENEWALS_PER_LEASE = 3

_TAKE = """
INSERT INTO bem_lease AS lease (name, holder, epoch, acquired_at, expires_at)
VALUES (%(name)s, %(holder)s, 1, clock_timestamp(), clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, epoch = lease.epoch + 1,
    acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
WHERE lease.holder IS NULL OR lease.expires_at <= clock_timestamp()
RETURNING epoch
"""
_RENEW = """
UPDATE bem_lease SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s AND expires_at > clock_timestamp()
RETURNING epoch
"""
_RELEASE = """
UPDATE bem_lease SET holder = NULL, expires_at = clock_timestamp()
WHERE name = %(name)s AND holder = %(holder)s AND epoch = %(epoch)s
"""
_STATUS = """
SELECT holder, epoch, extract(epoch FROM expires_at - clock_timestamp())::float8 FROM bem_lease WHERE name = %(name)s
"""
_VERIFY = """
SELECT holder, epoch, expires_at > clock_timestamp() FROM bem_lease WHERE name = %(name)s FOR SHARE
"""


def default_holder() -> str:
    """This replica's name in the lease: host (the pod's name on Kubernetes), pid, and a
    random tag, so a restarted process is never mistaken for its predecessor."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """The lease as the database sees it now."""

    holder: str | None
    epoch: int
    remaining: float
    """Seconds until it runs out by the database's clock; 0 or less: expired."""

    @property
    def held(self) -> bool:
        return self.holder is not None and self.remaining > 0


class Lease:
    """One replica's side of the lease. `epoch` is the fencing token while it holds it."""

    def __init__(
        self,
        pool: Pool,
        target: Target,
        duration: float,
        holder: str | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder or default_holder()
        self.duration = duration
        self._pool = pool
        self._target = target
        self._monotonic = monotonic
        self._epoch: int | None = None
        self._deadline = 0.0
        self._lost: str | None = None
        """Why a write found the lease gone (for `keep()`'s answer)."""

    @property
    def epoch(self) -> int | None:
        """The epoch this replica holds, or None: standby, or its lease ran out by the local
        (conservative) deadline."""
        if self._epoch is not None and self._monotonic() >= self._deadline:
            self._epoch = None
        return self._epoch

    @property
    def renew_interval(self) -> float:
        return self.duration / RENEWALS_PER_LEASE

    # -- one round trip each ---------------------------------------------------------------

    async def acquire(self) -> int | None:
        """Take the lease if it is free or expired; return the new epoch, or None when another
        replica holds it (or a commit of the leader holds its row for longer than a moment)."""
        sent = self._monotonic()
        params = {"name": NAME, "holder": self.holder, "ttl": self.duration}
        try:
            async with self._pool.connection() as connection, connection.transaction():
                # A leader's commit holds the row: wait a moment, not for ever.
                await connection.execute("SET LOCAL lock_timeout = '2s'")
                row = await (await connection.execute(_TAKE, params)).fetchone()
        except psycopg.errors.LockNotAvailable:
            return None
        except psycopg.Error as error:
            raise self._fault("take the leader lease", error) from None
        if row is None:
            return None
        self._epoch, self._deadline, self._lost = int(row[0]), sent + self.duration, None
        return self._epoch

    async def renew(self) -> bool:
        """Extend the lease this replica holds; False when it no longer holds it."""
        epoch = self.epoch
        if epoch is None:
            return False
        sent = self._monotonic()
        row = await self._fetch_one(_RENEW, "renew the leader lease", ttl=self.duration, epoch=epoch)
        if row is None:
            self._epoch = None
            return False
        self._deadline = sent + self.duration
        return True

    async def release(self) -> None:
        """Give the lease up (a clean stop), so a standby takes over without waiting for it
        to run out. Best effort: when the database is unreachable the lease simply expires."""
        epoch, self._epoch = self._epoch, None
        if epoch is None:
            return
        try:
            async with self._pool.connection() as connection:
                await connection.execute(_RELEASE, {"name": NAME, "holder": self.holder, "epoch": epoch})
        except psycopg.Error:
            pass  # it runs out by itself within `duration`

    async def status(self) -> LeaseStatus | None:
        """Who holds the lease now (None: no replica ever held it)."""
        row = await self._fetch_one(_STATUS, "read the leader lease")
        if row is None:
            return None
        return LeaseStatus(holder=row[0], epoch=int(row[1]), remaining=float(row[2]))

    async def verify(self, connection: AsyncConnection[TupleRow]) -> None:
        """Inside a write transaction: lock the lease row and raise `FencedError` unless this
        replica still holds it, with the epoch it was given, unexpired."""
        epoch = self.epoch
        if epoch is None:
            raise FencedError("this replica does not hold the leader lease; it does not write the state")
        row = await (await connection.execute(_VERIFY, {"name": NAME})).fetchone()
        if row is None or row[0] != self.holder or int(row[1]) != epoch or not row[2]:
            self._epoch, self._lost = None, f"leader lease (epoch {epoch}) lost: {_successor(row)}"
            raise FencedError(f"{self._lost}; this write was refused")

    # -- loops -----------------------------------------------------------------------------

    async def campaign(self, interval: float) -> int:
        """Wait until this replica holds the lease; return its epoch. Tries every `interval`
        seconds (a database that is down is simply tried again)."""
        while True:
            try:
                epoch = await self.acquire()
            except StateWriteError:
                epoch = None
            if epoch is not None:
                return epoch
            await asyncio.sleep(interval)

    async def keep(self) -> str:
        """Renew the lease until it is lost; return why, in words for the one log line of a
        leader stepping down. A renewal that cannot reach the database is retried every
        second until the local deadline; a write refused by the fence ends it too."""
        failure = ""
        while self.epoch is not None:
            wait = self.renew_interval if not failure else min(1.0, self.renew_interval)
            await asyncio.sleep(max(0.0, min(wait, (self._deadline - self._monotonic()) / 2)))
            if self.epoch is None:
                break
            try:
                if not await self.renew():
                    return f"leader lease lost: {await self._describe_successor()}"
                failure = ""
            except StateWriteError as error:
                failure = f" (last attempt: {error})"
        return self._lost or f"leader lease ran out before it could be renewed{failure}"

    # -- internals -------------------------------------------------------------------------

    async def _fetch_one(self, sql: LiteralString, doing: str, **values: object) -> tuple[Any, ...] | None:
        params = {"name": NAME, "holder": self.holder, **values}
        try:
            async with self._pool.connection() as connection:
                return await (await connection.execute(sql, params)).fetchone()
        except psycopg.Error as error:
            raise self._fault(doing, error) from None

    async def _describe_successor(self) -> str:
        try:
            status = await self.status()
        except StateWriteError:
            return "expired or taken over"
        if status is None or status.holder is None:
            return "released"
        return f"taken over by {status.holder} (epoch {status.epoch})"

    def _fault(self, doing: str, error: psycopg.Error) -> StateWriteError:
        kind = classify(error)
        return StateWriteError(kind, f"cannot {doing} at {self._target.shown}: {describe(self._target, error)}")


def _successor(row: tuple[Any, ...] | None) -> str:
    if row is None or row[0] is None:
        return "released"
    if not row[2]:
        return f"expired (last holder {row[0]}, epoch {row[1]})"
    return f"taken over by {row[0]} (epoch {row[1]})"

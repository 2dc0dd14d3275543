"""The PostgreSQL engine of `StateStore`: state shared by replicas, written by the leader alone.

The same data as the SQLite engine (cursor, backfill progress, tracked calls, handled marks
with their export flag, recorder snapshots), one transaction per batch. Every write first
locks the lease row and checks this replica's holder and epoch there (`Lease.verify`), so a
replica that lost the lease while paused or partitioned cannot write, and a standby's takeover
waits for a commit in flight and then loads the state it left.

Reads need no lease: a standby may read the shared state. Every failure of the database (down,
restarting, failing over, too slow) is a `StateWriteError` with its kind (`unavailable` for
all of those), for reads too: the poll loop retries a cycle, it does not stop.

A commit whose COMMIT itself failed (the connection broke at that instant) may have been
applied. The caller discarded that batch, so writing more on top of it could lose its counts:
such a store refuses further commits until the state was loaded again (`load()`), which gives
the caller the truth whichever way the COMMIT went.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import suppress
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from exporter.state.lease import Lease
from exporter.state.postgres_connect import (
    Pool,
    Target,
    Timeouts,
    classify,
    connection_kwargs,
    describe,
    open_pool,
    parse_target,
)
from exporter.state.postgres_hints import SharedHints
from exporter.state.postgres_schema import migrate
from exporter.state.store import Backfill, Changes, StateError, StateWriteError, Stored

Connection = AsyncConnection[TupleRow]
_T = TypeVar("_T")
POOL_SIZE = 4
"""Connections: the poll loop's commit, delivery's marks, lease renewals, /status reads."""


class PostgresStore:
    def __init__(self, pool: Pool, target: Target, lease: Lease, hints: SharedHints) -> None:
        self.lease = lease
        self.hints = hints
        """Webhook hints from any replica to the leader."""
        self._pool = pool
        self._target = target
        self._in_doubt = False

    @classmethod
    async def open(
        cls, url: str, *, password: str | None = None, lease_duration: float = 15.0, holder: str | None = None
    ) -> PostgresStore:
        """Connect, create or migrate the schema. `StateError` (one line naming
        `BEM_STATE_URL`, no password) when the settings are wrong: an unusable URL, a wrong
        password, a missing database, a newer schema. `StateWriteError` with kind
        `unavailable` when the database cannot be reached now: open again later."""
        target = parse_target(url, password)
        timeouts = Timeouts(lease_duration)
        kwargs = connection_kwargs(target, timeouts)
        pool = await open_pool(target, kwargs, POOL_SIZE, timeouts.wait)
        try:
            async with pool.connection() as connection:
                await migrate(connection, target.shown)
        except psycopg.Error as error:
            await pool.close()
            raise StateError(
                f"BEM_STATE_URL: cannot set up the state in {target.shown}: {describe(target, error)}"
            ) from None
        except BaseException:
            await pool.close()
            raise
        lease = Lease(pool, target, lease_duration, holder)
        return cls(pool, target, lease, SharedHints(pool, target, lease, kwargs))

    # -- reads -----------------------------------------------------------------------------

    async def load(self) -> Stored:
        stored = await self._read(_load)
        self._in_doubt = False
        return stored

    async def handled(self, call_ids: Collection[str]) -> set[str]:
        ids = list(call_ids)
        sql = "SELECT call_id FROM bem_handled WHERE call_id = ANY(%s::text[])"
        rows = await self._read(lambda db: _rows(db, sql, ids))
        return {str(row[0]) for row in rows}

    async def unexported(self, limit: int, skip: Collection[str] = ()) -> list[str]:
        sql = (
            "SELECT call_id FROM bem_handled WHERE NOT exported AND NOT call_id = ANY(%s::text[]) "
            "ORDER BY created_at, call_id LIMIT %s"
        )
        rows = await self._read(lambda db: _rows(db, sql, list(skip), limit))
        return [str(row[0]) for row in rows]

    async def count_unexported(self) -> int:
        rows = await self._read(lambda db: _rows(db, "SELECT count(*) FROM bem_handled WHERE NOT exported"))
        return int(rows[0][0])

    # -- writes ----------------------------------------------------------------------------

    async def commit(self, changes: Changes) -> None:
        if self._in_doubt:
            raise StateWriteError(
                "unavailable",
                "the previous commit's outcome is unknown (the connection broke during COMMIT); "
                "the state must be loaded again before the next commit",
            )
        await self._write(lambda db: _commit(db, changes), decisive=True)

    async def mark_exported(self, call_ids: Sequence[str]) -> None:
        ids = list(call_ids)
        sql = "UPDATE bem_handled SET exported = true WHERE call_id = ANY(%s::text[])"
        await self._write(lambda db: _execute(db, sql, ids))

    async def prune(self, created_before: float, keep: Collection[str] = ()) -> int:
        kept = list(keep)
        return await self._write(lambda db: _prune(db, created_before, kept))

    async def close(self) -> None:
        await self.lease.release()
        await self._pool.close()

    # -- transactions ----------------------------------------------------------------------

    async def _read(self, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        try:
            async with self._pool.connection() as connection, connection.transaction():
                return await work(connection)
        except psycopg.Error as error:
            raise self._fault("read", error) from None

    async def _write(self, work: Callable[[Connection], Awaitable[_T]], *, decisive: bool = False) -> _T:
        """Run `work` in one transaction after the lease check. `decisive`: a COMMIT that
        fails leaves the store in doubt (see the module's docstring)."""
        try:
            async with self._pool.connection() as connection:
                result = await _attempt(connection, lambda: self._fenced(connection, work))
                try:
                    await connection.commit()
                except psycopg.Error:
                    self._in_doubt = decisive
                    raise
                return result
        except psycopg.Error as error:
            raise self._fault("write", error) from None

    async def _fenced(self, connection: Connection, work: Callable[[Connection], Awaitable[_T]]) -> _T:
        await self.lease.verify(connection)
        return await work(connection)

    def _fault(self, doing: str, error: psycopg.Error) -> StateWriteError:
        kind = classify(error)
        where = self._target.shown
        return StateWriteError(kind, f"cannot {doing} the state in {where}: {describe(self._target, error)}")


async def _attempt(connection: Connection, work: Callable[[], Awaitable[_T]]) -> _T:
    """`work` inside the connection's open transaction, rolled back when it raises."""
    try:
        return await work()
    except BaseException:
        # A broken connection has no transaction left to undo; the pool discards it.
        with suppress(psycopg.Error):
            await connection.rollback()
        raise


async def _rows(db: Connection, sql: LiteralString, *params: object) -> list[tuple[Any, ...]]:
    cursor = await db.execute(sql, params)
    return await cursor.fetchall()


async def _execute(db: Connection, sql: LiteralString, *params: object) -> None:
    await db.execute(sql, params)


async def _load(db: Connection) -> Stored:
    # One snapshot of the database: a standby reading while the leader commits sees one batch
    # or the next, never half of one.
    await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    meta = {str(key): str(value) for key, value in await _rows(db, "SELECT key, value FROM bem_meta")}
    progress = json.loads(meta["backfill"]) if "backfill" in meta else None
    tracked = await _rows(db, "SELECT call_id, created_at FROM bem_tracked")
    snapshots = await _rows(db, "SELECT name, value FROM bem_snapshots")
    return Stored(
        cursor=list(json.loads(meta["cursor"])) if "cursor" in meta else [],
        tracked={str(call_id): float(created) for call_id, created in tracked},
        backfill=Backfill(float(progress["until"]), progress.get("after")) if progress else None,
        snapshots={str(name): bytes(blob) for name, blob in snapshots},
    )


async def _commit(db: Connection, changes: Changes) -> None:
    if changes.handled:
        ids, created = zip(*changes.handled, strict=True)
        await _execute(
            db,
            "INSERT INTO bem_handled (call_id, created_at) SELECT * FROM unnest(%s::text[], %s::float8[]) "
            "ON CONFLICT (call_id) DO NOTHING",
            list(ids),
            list(created),
        )
    tracked = dict(changes.tracked)  # the last entry of a call wins, as in one upsert per entry
    if tracked:
        await _execute(
            db,
            "INSERT INTO bem_tracked SELECT * FROM unnest(%s::text[], %s::float8[]) "
            "ON CONFLICT (call_id) DO UPDATE SET created_at = EXCLUDED.created_at",
            list(tracked),
            list(tracked.values()),
        )
    if changes.untracked:
        await _execute(db, "DELETE FROM bem_tracked WHERE call_id = ANY(%s::text[])", list(changes.untracked))
    await _commit_meta(db, changes)
    if changes.snapshots:
        await _execute(
            db,
            "INSERT INTO bem_snapshots SELECT * FROM unnest(%s::text[], %s::bytea[]) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            list(changes.snapshots),
            list(changes.snapshots.values()),
        )


async def _commit_meta(db: Connection, changes: Changes) -> None:
    upsert = "INSERT INTO bem_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
    if changes.cursor is not None:
        await _execute(db, upsert, "cursor", json.dumps(changes.cursor))
    if changes.backfill_done:
        await _execute(db, "DELETE FROM bem_meta WHERE key = 'backfill'")
    elif changes.backfill is not None:
        await _execute(
            db, upsert, "backfill", json.dumps({"until": changes.backfill.until, "after": changes.backfill.after})
        )


async def _prune(db: Connection, created_before: float, kept: list[str]) -> int:
    """Delete what is older than the boundary: delivered marks, and undelivered ones not in
    `kept`; return how many undelivered ones went (given up on)."""
    rows = await _rows(
        db,
        "DELETE FROM bem_handled WHERE created_at < %s AND (exported OR NOT call_id = ANY(%s::text[])) "
        "RETURNING exported",
        created_before,
        kept,
    )
    return sum(1 for (exported,) in rows if not exported)

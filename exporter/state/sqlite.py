"""The SQLite engine of `StateStore`: one file, one process, one transaction per batch.

A crash at any instant leaves either the state before a batch or after it. WAL with
`synchronous=NORMAL` survives a killed process (not necessarily a power cut, which costs at
most the last batches, re-handled once).

Every call runs in one dedicated worker thread, which alone uses the connection: the event
loop (polling, /metrics) never waits on the disk. The single-writer guard (a file lock, see
`exporter.state.lock`) is given to the engine and checked before every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from exporter.state.lock import FileLock
from exporter.state.migrations import migrate
from exporter.state.store import Backfill, Changes, StateError, StateWriteError, Stored, WriteFault, WriterGuard

_SQL_BATCH = 500  # ids per statement, under SQLite's variable limit
_T = TypeVar("_T")
_FAULTS: dict[int, WriteFault] = {
    sqlite3.SQLITE_FULL: "disk_full",
    sqlite3.SQLITE_IOERR: "io_error",
    sqlite3.SQLITE_READONLY: "io_error",
    sqlite3.SQLITE_CANTOPEN: "io_error",
    sqlite3.SQLITE_CORRUPT: "corrupt",
    sqlite3.SQLITE_NOTADB: "corrupt",
    sqlite3.SQLITE_BUSY: "unavailable",
    sqlite3.SQLITE_LOCKED: "unavailable",
}
_WORDS: dict[WriteFault, str] = {
    "disk_full": "disk full",
    "io_error": "I/O error",
    "corrupt": "state file corrupt",
    "fenced": "fenced off",
    "unavailable": "state busy",
    "other": "database error",
}


def classify(error: sqlite3.Error) -> WriteFault:
    """What a failed SQLite call means for the operator (primary result code, not extended)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return "other"
    return _FAULTS.get(code & 0xFF, "other")


class SqliteStore:
    def __init__(self, path: str, worker: ThreadPoolExecutor, db: sqlite3.Connection, guard: WriterGuard | None):
        self._path = path
        self._worker = worker
        self._db = db
        self._guard = guard

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        """Lock `path` (except `:memory:`), open or create it, migrate an older schema."""
        guard = None if path == ":memory:" else FileLock.acquire(path)
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        try:
            db = await asyncio.get_running_loop().run_in_executor(worker, _connect, path, guard)
        except BaseException:
            worker.shutdown()
            if guard is not None:
                guard.release()
            raise
        return cls(path, worker, db, guard)

    async def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._guarded_read, work)

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._transaction, work)

    def _guarded_read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return work(self._db)
        except sqlite3.Error as error:
            raise StateError(f"BEM_STATE_PATH: {self._path!r}: cannot read the state ({_one_line(error)})") from None

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._guard is not None:
            self._guard.verify()
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            result = work(db)
            db.execute("COMMIT")
        except sqlite3.Error as error:
            _roll_back(db)
            kind = classify(error)
            raise StateWriteError(kind, f"{_WORDS[kind]} ({_one_line(error)})") from None
        except BaseException:
            _roll_back(db)
            raise
        return result

    async def load(self) -> Stored:
        return await self._call(_load)

    async def handled(self, call_ids: Collection[str]) -> set[str]:
        ids = list(call_ids)
        return await self._call(lambda db: _handled(db, ids))

    async def commit(self, changes: Changes) -> None:
        await self._write(lambda db: _commit(db, changes))

    async def mark_exported(self, call_ids: Sequence[str]) -> None:
        ids = [(call_id,) for call_id in call_ids]
        await self._write(lambda db: db.executemany("UPDATE handled SET exported = 1 WHERE call_id = ?", ids))

    async def unexported(self, limit: int, skip: Collection[str] = ()) -> list[str]:
        excluded = set(skip)
        return await self._call(lambda db: _unexported(db, limit, excluded))

    async def count_unexported(self) -> int:
        return await self._call(lambda db: _count_unexported(db))

    async def prune(self, created_before: float, keep: Collection[str] = ()) -> int:
        kept = set(keep)
        return await self._write(lambda db: _prune(db, created_before, kept))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._db.close)
        self._worker.shutdown()
        if self._guard is not None:
            self._guard.release()


def _connect(path: str, guard: WriterGuard | None) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as error:
        raise StateError(f"BEM_STATE_PATH: cannot open {path!r} ({error})") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        _check_integrity(db)  # before any write: a damaged file gets nothing added to it
        migrate(db, path)
    except (sqlite3.DatabaseError, ValueError) as error:
        db.close()
        raise StateError(
            f"BEM_STATE_PATH: {path!r} is not a readable bem-exporter state file ({_one_line(error)}); "
            "move it aside to start afresh (see docs/reliability.md: calls within BEM_LOOKBACK are re-read)"
        ) from None
    except BaseException:
        db.close()
        raise
    if guard is not None:
        guard.verify()
    return db


def _check_integrity(db: sqlite3.Connection) -> None:
    """Read every page once at start: a corrupt file (or WAL) is refused here, in one line,
    rather than failing at the first query that reaches the damaged page."""
    verdict = db.execute("PRAGMA quick_check(1)").fetchone()
    if verdict is None or verdict[0] != "ok":
        raise sqlite3.DatabaseError(f"integrity check: {verdict[0] if verdict else 'no answer'}")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _roll_back(db: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (a full disk): then there is nothing to undo.
    # If ROLLBACK fails too, the transaction is gone either way; the original error is reported.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return str(row[0]) if row is not None else None


def _load(db: sqlite3.Connection) -> Stored:
    cursor = _meta(db, "cursor")
    backfill = _meta(db, "backfill")
    progress = json.loads(backfill) if backfill is not None else None
    return Stored(
        cursor=list(json.loads(cursor)) if cursor is not None else [],
        tracked=dict(db.execute("SELECT call_id, created_at FROM tracked").fetchall()),
        backfill=Backfill(float(progress["until"]), progress.get("after")) if progress else None,
        snapshots={str(name): bytes(blob) for name, blob in db.execute("SELECT name, value FROM snapshots")},
    )


def _handled(db: sqlite3.Connection, call_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(call_ids):
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in db.execute(f"SELECT call_id FROM handled WHERE call_id IN ({marks})", chunk))
    return found


def _unexported(db: sqlite3.Connection, limit: int, excluded: set[str]) -> list[str]:
    rows = db.execute(
        "SELECT call_id FROM handled WHERE exported = 0 ORDER BY created_at LIMIT ?", (limit + len(excluded),)
    )
    return [row[0] for row in rows if row[0] not in excluded][:limit]


def _count_unexported(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM handled WHERE exported = 0").fetchone()[0])


def _commit(db: sqlite3.Connection, changes: Changes) -> None:
    db.executemany("INSERT OR IGNORE INTO handled (call_id, created_at) VALUES (?, ?)", changes.handled)
    db.executemany("INSERT OR REPLACE INTO tracked VALUES (?, ?)", changes.tracked)
    db.executemany("DELETE FROM tracked WHERE call_id = ?", ((cid,) for cid in changes.untracked))
    if changes.cursor is not None:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('cursor', ?)", (json.dumps(changes.cursor),))
    if changes.backfill_done:
        db.execute("DELETE FROM meta WHERE key = 'backfill'")
    elif changes.backfill is not None:
        value = json.dumps({"until": changes.backfill.until, "after": changes.backfill.after})
        db.execute("INSERT OR REPLACE INTO meta VALUES ('backfill', ?)", (value,))
    db.executemany("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", changes.snapshots.items())


def _prune(db: sqlite3.Connection, created_before: float, kept: set[str]) -> int:
    waiting = db.execute("SELECT call_id FROM handled WHERE exported = 0 AND created_at < ?", (created_before,))
    dropped = [(row[0],) for row in waiting.fetchall() if row[0] not in kept]
    db.execute("DELETE FROM handled WHERE created_at < ? AND exported = 1", (created_before,))
    db.executemany("DELETE FROM handled WHERE call_id = ?", dropped)
    return len(dropped)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _SQL_BATCH):
        yield items[start : start + _SQL_BATCH]

"""Durable state in SQLite: what is tracked, what was handled, the cursor, the counters.

One transaction per batch writes everything a batch changed, so a crash at any instant leaves
either the state before the batch or after it. WAL with `synchronous=NORMAL` survives a killed
process (not necessarily a power cut, which costs at most the last batches, re-handled once).

One process at a time: an exclusive lock on `<path>.lock` makes a second exporter on the same
file refuse to start.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import IO

from exporter.state.store import Changes, Backfill, StateError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tracked (call_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS handled (
    call_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    exported INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS handled_unexported ON handled (created_at) WHERE exported = 0;
CREATE INDEX IF NOT EXISTS handled_created ON handled (created_at);
"""
_SQL_BATCH = 500  # ids per statement, under SQLite's variable limit


class State:
    def __init__(self, db: sqlite3.Connection, lock: IO[str] | None) -> None:
        self._db = db
        self._lock = lock

    @classmethod
    def open(cls, path: str) -> State:
        lock = None if path == ":memory:" else _lock(path)
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                raise StateError(
                    f"BEM_STATE_PATH: {path!r} has state schema {int(version[0])}, this version reads "
                    f"{SCHEMA_VERSION}; use a matching bem-exporter version"
                )
            db.execute("SELECT count(*) FROM handled").fetchone()
        except (sqlite3.DatabaseError, ValueError) as error:
            if lock is not None:
                lock.close()
            raise StateError(
                f"BEM_STATE_PATH: {path!r} is not a readable bem-exporter state file ({error}); "
                "move it aside to start afresh (see docs/reliability.md: calls within BEM_LOOKBACK are re-read)"
            ) from None
        return cls(db, lock)

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()

    # -- reads ---------------------------------------------------------------------------------

    def tracked(self) -> dict[str, float]:
        return dict(self._db.execute("SELECT call_id, created_at FROM tracked").fetchall())

    def cursor(self) -> list[str]:
        raw = self._meta("cursor")
        return list(json.loads(raw)) if raw is not None else []

    def backfill(self) -> Backfill | None:
        raw = self._meta("backfill")
        if raw is None:
            return None
        data = json.loads(raw)
        return Backfill(until=float(data["until"]), after=data.get("after"))

    def snapshot(self, name: str) -> bytes | None:
        raw = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"snapshot:{name}",)).fetchone()
        return bytes(raw[0]) if raw is not None else None

    def handled(self, call_ids: Iterable[str]) -> set[str]:
        """Which of `call_ids` were already handed to the sinks."""
        found: set[str] = set()
        for chunk in _chunks(list(call_ids)):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT call_id FROM handled WHERE call_id IN ({marks})", chunk)
            found.update(row[0] for row in rows)
        return found

    def unexported(self, limit: int, skip: Sequence[str] = ()) -> list[str]:
        """Handled calls whose spans were not delivered yet, oldest first."""
        rows = self._db.execute(
            "SELECT call_id FROM handled WHERE exported = 0 ORDER BY created_at LIMIT ?", (limit + len(skip),)
        )
        excluded = set(skip)
        return [row[0] for row in rows if row[0] not in excluded][:limit]

    def count_unexported(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM handled WHERE exported = 0").fetchone()[0])

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row is not None else None

    # -- writes --------------------------------------------------------------------------------

    def commit(self, changes: Changes) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
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
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                ((f"snapshot:{name}", blob) for name, blob in changes.snapshots.items()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def mark_exported(self, call_ids: Sequence[str]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("UPDATE handled SET exported = 1 WHERE call_id = ?", ((cid,) for cid in call_ids))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def prune(self, created_before: float, keep: Iterable[str] = ()) -> int:
        """Forget handled calls created before the retention boundary; return how many of
        them still had spans waiting (given up on: the caller counts them as dropped).

        `keep`: calls whose spans are still on their way (the delivery's in-memory backlog).
        They stay until delivered: counting them as dropped and then delivering them would
        make `bem_exporter_spans_dropped_total` claim losses that did not happen."""
        kept = set(keep)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            waiting = self._db.execute(
                "SELECT call_id FROM handled WHERE exported = 0 AND created_at < ?", (created_before,)
            ).fetchall()
            dropped = [(row[0],) for row in waiting if row[0] not in kept]
            self._db.execute("DELETE FROM handled WHERE created_at < ? AND exported = 1", (created_before,))
            self._db.executemany("DELETE FROM handled WHERE call_id = ?", dropped)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(dropped)


def _lock(path: str) -> IO[str]:
    lock_path = os.path.abspath(path) + ".lock"
    try:
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
    except OSError as error:
        raise StateError(f"BEM_STATE_PATH: cannot create {lock_path!r}: {error.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StateError(
            f"BEM_STATE_PATH: {path!r} is in use by another bem-exporter process; give each exporter its own state file"
        ) from None
    return handle


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _SQL_BATCH):
        yield items[start : start + _SQL_BATCH]

"""The SQLite state's schema, as a list of steps from version N to N+1.

The file records its version (`meta.schema`). On start every step from the file's version up
to `SCHEMA_VERSION` runs in one transaction, so an upgrade is all or nothing; a file written by
a newer bem-exporter is refused, never altered.

Version 0 is an empty file. Version 1 was the first release's layout (recorder snapshots in
`meta` as `snapshot:<name>`); version 2 gives snapshots their own table, one row per recorder.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from exporter.state.store import StateError

Migration = Callable[[sqlite3.Connection], None]


def _create(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.execute("CREATE TABLE tracked (call_id TEXT PRIMARY KEY, created_at REAL NOT NULL)")
    db.execute(
        "CREATE TABLE handled (call_id TEXT PRIMARY KEY, created_at REAL NOT NULL, exported INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("CREATE INDEX handled_unexported ON handled (created_at) WHERE exported = 0")
    db.execute("CREATE INDEX handled_created ON handled (created_at)")


def _snapshots_table(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE snapshots (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.execute(
        "INSERT INTO snapshots SELECT substr(key, length('snapshot:') + 1), value FROM meta WHERE key LIKE 'snapshot:%'"
    )
    db.execute("DELETE FROM meta WHERE key LIKE 'snapshot:%'")


MIGRATIONS: tuple[Migration, ...] = (_create, _snapshots_table)
"""`MIGRATIONS[n]` takes a file from version n to n + 1."""
SCHEMA_VERSION = len(MIGRATIONS)


def stored_version(db: sqlite3.Connection) -> int:
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("no schema version recorded")
    return int(row[0])


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the file at `path` to `SCHEMA_VERSION`, or refuse a newer one (`StateError`)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = stored_version(db)
        if version > SCHEMA_VERSION:
            raise StateError(
                f"BEM_STATE_PATH: {path!r} has state schema version {version}, this bem-exporter reads up to "
                f"version {SCHEMA_VERSION}; run the bem-exporter version that wrote it, or move the file aside"
            )
        for step in MIGRATIONS[version:]:
            step(db)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise

"""The PostgreSQL state's schema, as a list of steps from version N to N+1.

The database records its version in `bem_schema`. On start every step from the stored version
up to `SCHEMA_VERSION` runs in one transaction (PostgreSQL's DDL is transactional, so an
upgrade is all or nothing) under an advisory lock, so replicas starting together migrate once.
A database written by a newer bem-exporter is refused, never altered: a rolling upgrade starts
the new version's pods, which migrate, and the old ones then stop at their next start.

Version 1 holds the same data as the SQLite engine's version 2, plus the leader lease; version
2 adds the webhook hints that replicas hand to the leader.
"""

from __future__ import annotations

from typing import LiteralString

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from exporter.state.store import StateError

_CREATE: tuple[LiteralString, ...] = (
    "CREATE TABLE bem_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE bem_tracked (call_id text PRIMARY KEY, created_at double precision NOT NULL)",
    """CREATE TABLE bem_handled (
        call_id text PRIMARY KEY,
        created_at double precision NOT NULL,
        exported boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX bem_handled_unexported ON bem_handled (created_at) WHERE NOT exported",
    "CREATE INDEX bem_handled_created ON bem_handled (created_at)",
    "CREATE TABLE bem_snapshots (name text PRIMARY KEY, value bytea NOT NULL)",
    # One row per lease name. `holder` is NULL after a release; `epoch` only ever grows.
    """CREATE TABLE bem_lease (
        name text PRIMARY KEY,
        holder text,
        epoch bigint NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    )""",
)

_HINTS: tuple[LiteralString, ...] = (
    # Webhook hints from any replica to the leader (exporter/state/postgres_hints.py).
    """CREATE TABLE bem_hints (
        event_id text PRIMARY KEY,
        call_id text,
        received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        taken boolean NOT NULL DEFAULT false
    )""",
    "CREATE INDEX bem_hints_waiting ON bem_hints (received_at) WHERE NOT taken",
)

MIGRATIONS: tuple[tuple[LiteralString, ...], ...] = (_CREATE, _HINTS)
"""`MIGRATIONS[n]`: the statements that take the database from version n to n + 1."""
SCHEMA_VERSION = len(MIGRATIONS)
_LOCK_KEY = 0x62656D5F73746174  # "bem_stat": one advisory lock for every replica's migration


async def migrate(connection: AsyncConnection[TupleRow], shown: str) -> None:
    """Bring the database to `SCHEMA_VERSION`, or refuse a newer one (`StateError`)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await connection.execute("CREATE TABLE IF NOT EXISTS bem_schema (version integer NOT NULL)")
        version = await _stored_version(connection)
        if version > SCHEMA_VERSION:
            raise StateError(
                f"BEM_STATE_URL: {shown} has state schema version {version}, this bem-exporter reads up to "
                f"version {SCHEMA_VERSION}; run the bem-exporter version that wrote it"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                await connection.execute(statement)
        await connection.execute("DELETE FROM bem_schema")
        await connection.execute("INSERT INTO bem_schema VALUES (%s)", (SCHEMA_VERSION,))


async def _stored_version(connection: AsyncConnection[TupleRow]) -> int:
    cursor = await connection.execute("SELECT version FROM bem_schema")
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0

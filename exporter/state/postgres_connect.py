"""Reaching the PostgreSQL state database: the connection pool, and what its errors mean.

The password (from the URL, `PGPASSWORD`, or given separately) never leaves in an error: libpq
and psycopg may echo the connection string, so every message that leaves this module is cut
down by `redact_text` with the password masked.

Sessions are set up for a leader that may be paused or partitioned: a transaction idle for
longer than the lease is ended by the server (it would otherwise hold the lease row's lock and
block a standby's takeover), and slow statements are cancelled rather than waited on forever.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, TypeAlias

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from exporter.redact import redact_text, safe_url
from exporter.state.store import StateError, StateWriteError, WriteFault

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]

SETTING = "BEM_STATE_URL"
_SCHEMES = ("postgresql://", "postgres://")
_FAULTS_BY_STATE: dict[str, WriteFault] = {
    "53100": "disk_full",
    "58030": "io_error",
    "XX001": "corrupt",
    "XX002": "corrupt",
}
_REFUSED = (
    "password authentication failed",
    "no password supplied",
    "does not exist",
    "pg_hba.conf",
    "not permitted to log in",
    "invalid integer value",
    "invalid connection option",
)
"""Signs (libpq gives no SQLSTATE for a refused connection) that the settings are wrong rather
than the database away: waiting will not help, the operator must change BEM_STATE_URL."""
_UNAVAILABLE_CLASSES = ("08", "40", "53", "57", "25")
"""Connection, rollback (serialization), resources, operator intervention (shutdown,
cancelled statement), read-only transaction (connected to a standby after a failover)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long to wait on the database, derived from the lease: a leader must see an
    operation fail, and retry its renewal, several times before its lease runs out."""

    lease: float

    @property
    def wait(self) -> float:
        """Seconds an operation waits for a connection before it fails as `unavailable`."""
        return min(10.0, max(1.0, self.lease / 3))

    @property
    def connect(self) -> int:
        """libpq's `connect_timeout` (whole seconds, at least 2)."""
        return min(5, max(2, int(self.lease / 3)))

    @property
    def statement(self) -> float:
        return max(5.0, self.lease)

    @property
    def idle_in_transaction(self) -> float:
        """A paused leader inside a transaction would hold the lease row's lock for ever."""
        return self.lease


@dataclass(frozen=True, slots=True)
class Target:
    """Where the state lives, in a form safe to print."""

    url: str
    password: str | None

    @property
    def shown(self) -> str:
        return safe_url(self.url)

    @property
    def secrets(self) -> tuple[str, ...]:
        found = (self.password, _url_password(self.url), os.environ.get("PGPASSWORD"))
        return tuple(secret for secret in found if secret)

    def scrub(self, text: str) -> str:
        return redact_text(text, self.secrets, limit=300)


def parse_target(url: str, password: str | None = None) -> Target:
    """Check that `url` is a PostgreSQL URL libpq accepts; `StateError` naming the setting if not."""
    target = Target(url, password)
    if not url.startswith(_SCHEMES):
        raise StateError(f"{SETTING}: expected postgresql://user@host:port/database, got {target.shown!r}")
    try:
        parameters = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise StateError(f"{SETTING}: not a valid PostgreSQL URL ({_first_line(target.scrub(str(error)))})") from None
    ports = str(parameters.get("port") or "5432").split(",")
    if not all(port.isdigit() and 0 < int(port) < 65536 for port in ports):
        raise StateError(f"{SETTING}: the port of {target.shown!r} is not a number from 1 to 65535")
    return target


def connection_kwargs(target: Target, timeouts: Timeouts) -> dict[str, Any]:
    """libpq parameters beside the URL (they override it)."""
    options = (
        f"-c statement_timeout={int(timeouts.statement * 1000)} "
        f"-c idle_in_transaction_session_timeout={int(timeouts.idle_in_transaction * 1000)}"
    )
    kwargs: dict[str, Any] = {
        "connect_timeout": timeouts.connect,
        "application_name": "bem-exporter",
        "options": options,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    if target.password:
        kwargs["password"] = target.password
    return kwargs


async def open_pool(target: Target, kwargs: dict[str, Any], size: int, wait: float) -> Pool:
    """A pool of up to `size` connections, opened only after one connection succeeded, so that
    a wrong password or a missing database is reported as what it is (`StateError`)."""
    await probe(target, kwargs)
    # The pool logs every failed reconnection; an outage is the exporter's health log's to
    # report, once per transition, and a library's message is not ours to vouch for.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    pool: Pool = AsyncConnectionPool(
        target.url,
        kwargs=dict(kwargs),
        min_size=1,
        max_size=size,
        timeout=wait,
        # After the database restarted every pooled connection is dead: check before use,
        # so the first operation after an outage succeeds instead of failing once more.
        check=AsyncConnectionPool.check_connection,
        reconnect_timeout=0,
        open=False,
        name="bem-state",
    )
    await pool.open(wait=True, timeout=wait)
    return pool


async def probe(target: Target, kwargs: dict[str, Any]) -> None:
    """One connection: `StateError` when the settings are wrong (the server refused them),
    `StateWriteError("unavailable")` when the database cannot be reached now (try again)."""
    try:
        connection = await AsyncConnection.connect(target.url, **kwargs)
    except psycopg.Error as error:
        message = describe(target, error)
        if isinstance(error, psycopg.ProgrammingError) or any(sign in message for sign in _REFUSED):
            raise StateError(f"{SETTING}: cannot use {target.shown}: {message}") from None
        raise StateWriteError("unavailable", f"cannot reach the state database {target.shown}: {message}") from None
    await connection.close()


def classify(error: psycopg.Error) -> WriteFault:
    """What a failed database call means for the operator."""
    state = error.sqlstate or ""
    if state in _FAULTS_BY_STATE:
        return _FAULTS_BY_STATE[state]
    if state[:2] in _UNAVAILABLE_CLASSES or isinstance(error, psycopg.OperationalError):
        return "unavailable"
    return "other"


def describe(target: Target, error: psycopg.Error) -> str:
    """One line about `error`, without the password or the connection string."""
    return _first_line(target.scrub(str(error))) or type(error).__name__


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def _url_password(url: str) -> str | None:
    try:
        return conninfo_to_dict(url).get("password")  # type: ignore[return-value]
    except psycopg.ProgrammingError:
        return None

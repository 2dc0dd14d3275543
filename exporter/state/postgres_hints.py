"""Webhook hints between replicas: any replica stores one, the leader takes them.

A webhook may reach any replica, but only the leader polls. A replica that accepts a delivery
inserts its hint (the event's id, the call it names) into `bem_hints` and `NOTIFY`s the
channel in the same transaction, and answers bem 2xx only after that commit: the hint is then
safe whichever replica leads, or none yet (the next leader takes it when it takes over). The
insert needs no lease (a standby writes it) and is idempotent on the event id, so a delivery
that two replicas both accepted is a hint once; the answer says which was first.

The leader `LISTEN`s on a connection of its own, and on each notification takes every hint not
taken yet: a write like any other of the leader's, checked against its lease in the same
transaction (`Lease.verify`), so a deposed leader cannot take hints the new one needs. Taken
rows stay for `keep` seconds, the window in which a repeat of the event could still be
accepted, then go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection

from exporter.backoff import Backoff
from exporter.health import HealthLog
from exporter.state.lease import Lease
from exporter.state.postgres_connect import Pool, Target, classify, describe
from exporter.state.store import StateWriteError

log = logging.getLogger("exporter.state")

CHANNEL: Final = "bem_hints"
_PUT = """
INSERT INTO bem_hints (event_id, call_id) VALUES (%s, %s) ON CONFLICT (event_id) DO NOTHING RETURNING 1
"""
_TAKE = "UPDATE bem_hints SET taken = true WHERE NOT taken RETURNING call_id"
_FORGET = "DELETE FROM bem_hints WHERE taken AND received_at < clock_timestamp() - make_interval(secs => %s)"


class SharedHints:
    def __init__(self, pool: Pool, target: Target, lease: Lease, connect_kwargs: dict[str, Any]) -> None:
        self._pool = pool
        self._target = target
        self._lease = lease
        self._connect_kwargs = dict(connect_kwargs)

    async def put(self, event_id: str, call_id: str | None) -> bool:
        """Store a hint for the leader and wake it; False when this event was stored already."""
        try:
            async with self._pool.connection() as connection, connection.transaction():
                row = await (await connection.execute(_PUT, (event_id, call_id))).fetchone()
                if row is not None:
                    await connection.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        except psycopg.Error as error:
            raise self._fault("store a webhook hint", error) from None
        return row is not None

    async def take(self, keep: float) -> list[str | None]:
        """The leader: every hint not taken yet (the calls they name; None for an event naming
        none). Raises `FencedError` when this replica no longer holds the lease."""
        try:
            async with self._pool.connection() as connection, connection.transaction():
                await self._lease.verify(connection)
                rows = await (await connection.execute(_TAKE)).fetchall()
                await connection.execute(_FORGET, (keep,))
        except psycopg.Error as error:
            raise self._fault("take webhook hints", error) from None
        return [None if row[0] is None else str(row[0]) for row in rows]

    async def listen(self, wake: Callable[[], None]) -> None:
        """Forever: `wake()` on each notification, and after each (re)connection (hints stored
        while nobody listened). A lost connection is opened again with a backoff."""
        health = HealthLog(log, "webhook hint notifications")
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                connection = await AsyncConnection.connect(self._target.url, autocommit=True, **self._connect_kwargs)
                async with connection:
                    await connection.execute("LISTEN bem_hints")  # CHANNEL
                    health.ok()
                    backoff.reset()
                    wake()
                    async for _ in connection.notifies():
                        wake()
            except psycopg.Error as error:
                health.failing(describe(self._target, error))
            await asyncio.sleep(backoff.next())

    def _fault(self, doing: str, error: psycopg.Error) -> StateWriteError:
        where = self._target.shown
        return StateWriteError(classify(error), f"cannot {doing} in {where}: {describe(self._target, error)}")

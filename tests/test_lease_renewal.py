"""The lease keeper renews a lease that has less than one renewal interval left.

A takeover can start keeping its lease late: the acquisition waited for the lease row (a
takeover waits up to 2 s for it) or the state load was slow, and the local deadline counts
from the moment the acquisition was *sent*. The keeper must then renew before that deadline,
not sleep up to it and give the lease up (which made a fresh leader step down a second after
taking over, in tests/test_failover.py on a loaded machine)."""

from __future__ import annotations

import asyncio
import time

from exporter.state.postgres import PostgresStore

LEASE = 6.0
"""Renewed every 2 s."""
LATE = 4.5
"""How late the keeper starts: 1.5 s of the lease left, less than the renewal interval."""


def test_a_lease_with_less_than_a_renewal_interval_left_is_renewed(postgres_url: str) -> None:
    async def scenario() -> str | None:
        store = await PostgresStore.open(postgres_url, lease_duration=LEASE, holder="late")
        try:
            assert await store.lease.acquire() is not None
            # The lease's own clock, moved on as if the takeover had taken LATE seconds
            # (the database's lease is fresh: only the replica's deadline is near).
            store.lease._monotonic = lambda: time.monotonic() + LATE
            keeping = asyncio.create_task(store.lease.keep())
            await asyncio.sleep(LEASE - LATE + 1.0)  # past the deadline the keeper started with
            outcome = keeping.result() if keeping.done() else None
            keeping.cancel()
            assert store.lease.epoch is not None, outcome
            return outcome
        finally:
            await store.close()

    assert asyncio.run(scenario()) is None  # still keeping it

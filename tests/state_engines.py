"""The state engines the contract tests run against, by name. A new engine adds its name to
`ENGINES` and a branch to `opener`: every test of tests/test_state_contract.py then runs on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from exporter.state import StateStore
from exporter.state.postgres import PostgresStore
from exporter.state.sqlite import SqliteStore

ENGINES = ["sqlite", "postgres"]

Opener = Callable[[], Awaitable[StateStore]]
"""Opens the same durable store each time it is called (a reopen is a new process)."""


def opener(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Opener:
    if engine == "postgres":
        # A fresh database on the session's real PostgreSQL server (tests/postgres_server.py).
        url = str(request.getfixturevalue("postgres_url"))

        async def open_postgres() -> StateStore:
            store = await PostgresStore.open(url)
            # Writes are fenced by the leader lease: the store under test leads. The previous
            # process released it on close, so a reopen takes it again (a new epoch).
            if await store.lease.acquire() is None:
                raise AssertionError("the contract's store could not take the leader lease")
            return store

        return open_postgres
    if engine == "sqlite":
        path = str(tmp_path / "state.sqlite")

        async def open_sqlite() -> StateStore:
            return await SqliteStore.open(path)

        return open_sqlite
    raise ValueError(f"unknown state engine {engine!r}")

"""The state engines the contract tests run against, by name. A new engine adds its name to
`ENGINES` and a branch to `opener`: every test of tests/test_state_contract.py then runs on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from exporter.state import StateStore
from exporter.state.sqlite import SqliteStore

ENGINES = ["sqlite"]

Opener = Callable[[], Awaitable[StateStore]]
"""Opens the same durable store each time it is called (a reopen is a new process)."""


def opener(engine: str, tmp_path: Path) -> Opener:
    if engine == "sqlite":
        path = str(tmp_path / "state.sqlite")

        async def open_sqlite() -> StateStore:
            return await SqliteStore.open(path)

        return open_sqlite
    raise ValueError(f"unknown state engine {engine!r}")

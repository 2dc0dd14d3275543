"""Durable state: the `StateStore` protocol and its data (`store`), the SQLite engine
(`sqlite`, with its schema steps in `migrations`), and the single-writer file lock (`lock`)."""

from exporter.state.store import (
    Backfill,
    Changes,
    FencedError,
    StateError,
    StateStore,
    StateWriteError,
    Stored,
    WriteFault,
    WriterGuard,
)

__all__ = [
    "Backfill",
    "Changes",
    "FencedError",
    "StateError",
    "StateStore",
    "StateWriteError",
    "Stored",
    "WriteFault",
    "WriterGuard",
]

"""The SQLite engine's own matters: the single-process lock, corrupt and foreign files, schema
versions and migrations, faults classified as what they are, a file replaced while running.
(What every engine must do is in tests/test_state_contract.py.)"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from exporter.state import Changes, FencedError, StateError, Stored
from exporter.state.migrations import SCHEMA_VERSION
from exporter.state.sqlite import SqliteStore, classify

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE tracked (call_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE handled (call_id TEXT PRIMARY KEY, created_at REAL NOT NULL, exported INTEGER NOT NULL DEFAULT 0);
CREATE INDEX handled_unexported ON handled (created_at) WHERE exported = 0;
CREATE INDEX handled_created ON handled (created_at);
INSERT INTO meta VALUES ('schema', '1');
"""
"""The layout bem-exporter 0.1 wrote (schema version 1): snapshots lived in `meta`."""


def opened(path: Path | str) -> SqliteStore:
    return asyncio.run(SqliteStore.open(str(path)))


async def _open_twice(path: str) -> None:
    first = await SqliteStore.open(path)
    try:
        await SqliteStore.open(path)
    finally:
        await first.close()


def test_second_process_refuses(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite")
    with pytest.raises(StateError, match="in use by another bem-exporter process"):
        asyncio.run(_open_twice(path))
    asyncio.run(opened(path).close())  # released on close


def test_a_symlink_shares_the_lock(tmp_path: Path) -> None:
    real = tmp_path / "real.sqlite"
    link = tmp_path / "link.sqlite"
    link.symlink_to(real)

    async def both() -> None:
        first = await SqliteStore.open(str(real))
        try:
            await SqliteStore.open(str(link))
        finally:
            await first.close()

    with pytest.raises(StateError, match="in use by another bem-exporter process"):
        asyncio.run(both())
    assert not (tmp_path / "link.sqlite.lock").exists()


def test_a_directory_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"^BEM_STATE_PATH: .* is a directory"):
        opened(tmp_path)
    assert not list(tmp_path.iterdir())  # no stray lock file beside it


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=r"not a readable bem-exporter state file.*move it aside"):
        opened(path)
    assert path.read_bytes().startswith(b"this is not sqlite")  # never silently reset


def test_a_damaged_page_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = opened(path)
    asyncio.run(store.commit(Changes(handled=[(f"call-{n:06d}", float(n)) for n in range(5000)])))
    asyncio.run(store.close())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = b"\xa5" * 4096  # a torn page in the middle of the index
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match=r"not a readable bem-exporter state file"):
        opened(path)


def _write_v1(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO meta VALUES ('cursor', '[\"x\"]')")
    db.execute("INSERT INTO meta VALUES ('snapshot:metrics', ?)", (b"\x01counts",))
    db.execute("INSERT INTO tracked VALUES ('t', 5.0)")
    db.execute("INSERT INTO handled VALUES ('h', 6.0, 0)")
    db.commit()
    db.close()


def test_an_older_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _write_v1(path)

    async def load() -> tuple[Stored, list[str]]:
        store = await SqliteStore.open(str(path))
        try:
            return await store.load(), await store.unexported(10)
        finally:
            await store.close()

    assert asyncio.run(load()) == (
        Stored(cursor=["x"], tracked={"t": 5.0}, snapshots={"metrics": b"\x01counts"}),
        ["h"],
    )
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (str(SCHEMA_VERSION),)
    assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'snapshot:%'").fetchone() == (0,)
    db.close()


def test_a_newer_file_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    asyncio.run(opened(path).close())
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError) as refused:
        opened(path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message and f"up to version {SCHEMA_VERSION}" in message
    assert path.read_bytes() == before  # never altered


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _write_v1(path)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE snapshots (clash INTEGER)")  # step 1 -> 2 cannot create its table
    db.commit()
    db.close()
    with pytest.raises(StateError, match="not a readable bem-exporter state file"):
        opened(path)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)
    assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'snapshot:%'").fetchone() == (1,)
    db.close()


def test_memory_state_needs_no_file() -> None:
    async def work() -> Stored:
        store = await SqliteStore.open(":memory:")
        await store.commit(Changes(cursor=["a"]))
        loaded = await store.load()
        await store.close()
        return loaded

    assert asyncio.run(work()).cursor == ["a"]


def test_sqlite_runs_off_the_event_loop(tmp_path: Path) -> None:
    threads: set[str] = set()

    async def work() -> None:
        store = await SqliteStore.open(str(tmp_path / "s.sqlite"))
        # The worker thread is the only one the connection accepts (check_same_thread is on).
        await store.commit(Changes(handled=[("a", 1.0)]))
        threads.update(t.name for t in threading.enumerate() if t.name.startswith("state"))
        await store.close()

    asyncio.run(work())
    assert threads and threading.current_thread().name not in threads


def test_a_replaced_file_fences_the_running_exporter(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"

    async def work() -> str:
        store = await SqliteStore.open(str(path))
        try:
            await store.commit(Changes(cursor=["a"]))
            for leftover in tmp_path.glob("s.sqlite*"):
                os.remove(leftover)  # an operator "starting afresh" under a running exporter
            with pytest.raises(FencedError) as fenced:
                await store.commit(Changes(cursor=["b"]))
            return str(fenced.value)
        finally:
            await store.close()

    message = asyncio.run(work())
    assert "removed or replaced" in message
    assert not path.exists()  # nothing written into a new file behind a second exporter's back


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (sqlite3.SQLITE_FULL, "disk_full"),
        (sqlite3.SQLITE_IOERR, "io_error"),
        (sqlite3.SQLITE_IOERR_WRITE, "io_error"),
        (sqlite3.SQLITE_CORRUPT, "corrupt"),
        (sqlite3.SQLITE_NOTADB, "corrupt"),
        (sqlite3.SQLITE_BUSY, "unavailable"),
        (sqlite3.SQLITE_MISMATCH, "other"),
    ],
)
def test_faults_are_classified(code: int, kind: str) -> None:
    error = sqlite3.OperationalError("x")
    error.sqlite_errorcode = code
    assert classify(error) == kind

"""The state engines side by side: commits per second and CPU per commit, SQLite next to
PostgreSQL, through the `StateStore` the poll loop uses.

    python bench/state.py                     # 400 commits of each shape on each engine
    python bench/state.py --commits 100       # quicker
    python bench/run.py --state ...           # the same, as a phase of the whole benchmark

Each commit is what one poll batch writes (`Changes`): handled marks for `batch` finished
calls, their tracked rows removed and as many new ones added, the cursor, and the metrics
recorder's snapshot (`--snapshot` bytes; a real one is ~17 KiB for 150 calls of 10
workflows). Shapes: a batch of 1 (a quiet workload: one call per poll) and of 100 (a backfill
page). SQLite: a file in a temporary directory (WAL, `synchronous=NORMAL`, as the exporter
opens it). PostgreSQL: a cluster of its own on loopback started like the tests' one
(tests/postgres_server.py), but with its production durability (`fsync`, full-page writes and
`synchronous_commit` on: every commit waits for its WAL flush); each commit takes the lease
row's lock and checks the epoch, as every leader commit does.

Measured: wall time (commits one after another, as the poll loop makes them), the CPU of this
process (`getrusage`: the exporter's side) and, for PostgreSQL, the CPU of the server's
processes (`/proc/<pid>/stat` of the postmaster and its children). Prints a table and returns
the figures as a dict (`run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from postgres_server import _SETTINGS, PostgresServer  # noqa: E402  (tests/: the tests' server)

from exporter.state.postgres import PostgresStore  # noqa: E402
from exporter.state.sqlite import SqliteStore  # noqa: E402
from exporter.state.store import Changes, StateStore  # noqa: E402

SHAPES = (1, 100)
"""Finished calls per commit."""
TICKS = os.sysconf("SC_CLK_TCK")


class DurablePostgres(PostgresServer):
    """The tests' server with production durability (the tests turn fsync off for speed)."""

    def start(self, timeout: float = 30) -> None:
        durable = {**_SETTINGS, "fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}
        original = dict(_SETTINGS)
        _SETTINGS.update(durable)
        try:
            super().start(timeout)
        finally:
            _SETTINGS.clear()
            _SETTINGS.update(original)

    def cpu_seconds(self) -> float:
        """User + system CPU of the postmaster and every process it started (backends,
        WAL writer, checkpointer), as of now, those that exited included (the postmaster
        reaped them: its children's times)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            pid, ppid = int(entry.name), int(fields[1])
            if pid == postmaster:
                total += int(fields[13]) + int(fields[14])
            if pid == postmaster or ppid == postmaster:
                total += int(fields[11]) + int(fields[12])
        return total / TICKS


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batch_changes(number: int, batch: int, snapshot: bytes) -> Changes:
    """What one poll batch writes: `batch` calls finished (handled, untracked), as many new
    ones seen running (tracked), the cursor, the recorder's snapshot."""
    now = time.time()
    finished = [f"cl_{number:07d}_{index:03d}" for index in range(batch)]
    running = [f"cl_{number + 1:07d}_{index:03d}" for index in range(batch)]
    return Changes(
        handled=[(call_id, now) for call_id in finished],
        tracked=[(call_id, now) for call_id in running],
        untracked=finished,
        cursor=[finished[-1]],
        snapshots={"metrics": snapshot},
    )


async def measure(
    store: StateStore, commits: int, batch: int, snapshot: bytes, server_cpu: Callable[[], float]
) -> dict[str, Any]:
    await store.commit(batch_changes(0, batch, snapshot))  # warm: tables, pages, connections
    cpu0, server0, wall0 = own_cpu(), server_cpu(), time.perf_counter()
    for number in range(1, commits + 1):
        await store.commit(batch_changes(number, batch, snapshot))
    wall, cpu, server = time.perf_counter() - wall0, own_cpu() - cpu0, server_cpu() - server0
    return {
        "batch": batch,
        "commits": commits,
        "commits_per_s": commits / wall,
        "calls_per_s": commits * batch / wall,
        "wall_ms_per_commit": wall / commits * 1e3,
        "exporter_cpu_ms_per_commit": cpu / commits * 1e3,
        "server_cpu_ms_per_commit": server / commits * 1e3,
    }


async def engine_runs(
    open_store: Callable[[int], Awaitable[StateStore]],
    commits: int,
    snapshot: bytes,
    server_cpu: Callable[[], float],
) -> list[dict[str, Any]]:
    runs = []
    for batch in SHAPES:
        store = await open_store(batch)
        try:
            runs.append(await measure(store, commits, batch, snapshot, server_cpu))
        finally:
            await store.close()
    return runs


def run(commits: int = 400, snapshot_bytes: int = 20_000) -> dict[str, Any]:
    """Both engines, every shape; the figures as a dict (see the module's docstring)."""
    snapshot = os.urandom(snapshot_bytes)
    with tempfile.TemporaryDirectory(prefix="bem-bench-state-") as tmp:

        async def sqlite(batch: int) -> StateStore:
            return await SqliteStore.open(str(Path(tmp) / f"state-{batch}.sqlite"))

        sqlite_runs = asyncio.run(engine_runs(sqlite, commits, snapshot, lambda: 0.0))
    with DurablePostgres() as server:

        async def postgres(batch: int) -> StateStore:
            store = await PostgresStore.open(server.create_database(), holder=f"bench-{batch}")
            assert await store.lease.acquire() is not None
            return store

        postgres_runs = asyncio.run(engine_runs(postgres, commits, snapshot, server.cpu_seconds))
    return {
        "commits": commits,
        "snapshot_bytes": snapshot_bytes,
        "sqlite": sqlite_runs,
        "postgresql": postgres_runs,
        "postgresql_settings": "fsync=on, full_page_writes=on, synchronous_commit=on; loopback TCP, SCRAM",
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'engine':<11} {'batch':>5} {'commits/s':>10} {'calls/s':>9} {'wall ms':>8} "
        f"{'exporter CPU ms':>16} {'server CPU ms':>14}  (per commit)"
    ]
    for engine in ("sqlite", "postgresql"):
        for row in result[engine]:
            server = f"{row['server_cpu_ms_per_commit']:.2f}" if engine == "postgresql" else "(in-process)"
            lines.append(
                f"{engine:<11} {row['batch']:>5} {row['commits_per_s']:>10.0f} {row['calls_per_s']:>9.0f} "
                f"{row['wall_ms_per_commit']:>8.2f} {row['exporter_cpu_ms_per_commit']:>16.2f} {server:>14}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="state engines: commits per second (see docs/performance.md)")
    parser.add_argument("--commits", type=int, default=400, help="measured commits per engine and shape (400)")
    parser.add_argument("--snapshot", type=int, default=20_000, help="bytes of the recorder snapshot per commit")
    parser.add_argument("--json", metavar="FILE", help="also write the figures there")
    args = parser.parse_args(argv)
    result = run(args.commits, args.snapshot)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

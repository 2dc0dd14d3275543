"""The state's disk misbehaving under a running exporter: a full filesystem, a file removed or
replaced, a corrupt database or WAL at start. The exporter runs as users run it (the CLI as a
subprocess) against the simulator over loopback; the simulator's count of finished calls is
the truth the counters must reach, exactly, once the disk is usable again."""

from __future__ import annotations

import errno
import itertools
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_helpers import log_records
from processes import ExporterProcess, run_command, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

FULL_SECONDS = 6.0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of its own (CI runs as root), so filling it fills nothing else."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem says it is full."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    # Byte by byte: the last partial block too, so not a page is left for the WAL.
    with open(filler, "ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\0")
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def _state_lines(exporter: ExporterProcess, prefix: str) -> list[str]:
    return [str(r["msg"]) for r in log_records(exporter) if str(r.get("msg", "")).startswith(prefix)]


def _ready(exporter: ExporterProcess) -> int:
    return httpx.get(f"{exporter.url}/readyz", timeout=5).status_code


def _up(exporter: ExporterProcess) -> float:
    return exporter.samples("bem_exporter_up")[()]


def _state_errors(exporter: ExporterProcess) -> dict[str, float]:
    """`bem_exporter_state_errors_total` by kind (every kind is there from the start)."""
    samples = exporter.samples("bem_exporter_state_errors_total")
    return {dict(labels)["kind"]: value for labels, value in samples.items()}


def test_a_full_disk_is_reported_and_loses_nothing_once_space_is_back(small_fs: Path, tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=100, history=600.0, arrival_rate=20.0, speed=20.0, seed=51))
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(url, small_fs / "state.sqlite", log_path=tmp_path / "exporter.log")
        try:
            exporter.start()
            wait_until(lambda: sum(exporter.calls_total().values()) > 50, 30, what="first counts")
            filler = _fill(small_fs)
            wait_until(lambda: _state_lines(exporter, "state write failing: disk full"), 30, what="disk full reported")
            wait_until(lambda: _ready(exporter) == 503 and _up(exporter) == 0.0, 10, what="not ready while full")
            assert _state_errors(exporter)["disk_full"] >= 1, _state_errors(exporter)
            frozen = exporter.calls_total()
            time.sleep(FULL_SECONDS)  # calls go on arriving and finishing; none may be lost
            assert exporter.calls_total() == frozen  # nothing counted that is not stored
            filler.unlink()
            wait_until(lambda: _ready(exporter) == 200 and _up(exporter) == 1.0, 20, what="ready once space is back")
            simulator.config.arrival_rate = 0.0
            wait_until(lambda: set(simulator.status_counts()) <= {"completed", "failed"}, 30, what="all finished")
            truth = dict(Counter(simulator.finished_counts()))
            wait_until(lambda: exporter.calls_total() == truth, 30, what="counters equal to the truth")
        finally:
            exporter.stop()
        # One line per change of state: a write that still fits on the full disk (a WAL page
        # reused) may recover it briefly, but never two failing lines in a row.
        changes = _state_lines(exporter, "state write")
        assert changes[0].startswith("state write failing: disk full"), changes
        assert changes[-1] == "state write recovered", changes
        assert all(a != b for a, b in itertools.pairwise(changes)), changes
        assert not _state_lines(exporter, "poll cycle crashed")
        # And the counts that were stored are the ones a restart shows.
        with ExporterProcess(url, small_fs / "state.sqlite", log_path=tmp_path / "again.log") as again:
            assert again.calls_total() == truth


def test_a_state_file_removed_under_a_running_exporter_stops_it_counting(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=50, history=600.0, arrival_rate=10.0, speed=20.0, seed=52))
    state = tmp_path / "state" / "state.sqlite"
    state.parent.mkdir()
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(url, state, log_path=tmp_path / "exporter.log")
        try:
            exporter.start()
            wait_until(lambda: sum(exporter.calls_total().values()) > 20, 30, what="first counts")
            shutil.rmtree(state.parent)  # "start afresh" under a running exporter
            wait_until(lambda: _state_lines(exporter, "state write failing"), 20, what="removal reported")
            wait_until(lambda: _ready(exporter) == 503 and _up(exporter) == 0.0, 10, what="not ready")
            assert "removed or replaced" in _state_lines(exporter, "state write failing")[0]
            assert _state_errors(exporter)["fenced"] >= 1, _state_errors(exporter)
            assert not state.exists()  # it wrote no new file behind a new exporter's back
        finally:
            exporter.stop()
        assert len(_state_lines(exporter, "state write failing")) == 1


def _wal_with_a_broken_table(state: Path, copy: Path) -> None:
    """A state whose committed WAL (not yet checkpointed) points a table at a page that does
    not exist: the main file alone is sound, the WAL makes it malformed."""
    db = sqlite3.connect(state)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("PRAGMA writable_schema=ON")
    db.execute("UPDATE sqlite_master SET rootpage = 999999 WHERE name = 'tracked'")
    db.commit()
    shutil.copy(state, copy)
    shutil.copy(state.with_name(state.name + "-wal"), copy.with_name(copy.name + "-wal"))
    db.close()


@pytest.mark.parametrize("damage", ["wal", "page"])
def test_a_corrupt_state_at_start_is_one_line_and_exit_1(tmp_path: Path, damage: str) -> None:
    simulator = Simulator(SimulatorConfig(prefill=200, history=600.0, arrival_rate=0.0, seed=53))
    state = tmp_path / "state.sqlite"
    broken = tmp_path / "broken.sqlite"
    with SimulatorServer(simulator) as url:
        assert run_command("once", url, state).returncode == 0
        if damage == "wal":
            _wal_with_a_broken_table(state, broken)
        else:
            data = bytearray(state.read_bytes())
            data[4096 * 2 : 4096 * 3] = b"\xa5" * 4096  # page 3: a table's b-tree, past the schema
            broken.write_bytes(bytes(data))
        results = [run_command("once", url, broken) for _ in range(2)]
    for result in results:  # refused each time: never silently reset to a fresh state
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("bem-exporter: error: BEM_STATE_PATH: ")
        assert "not a readable bem-exporter state file" in lines[0]

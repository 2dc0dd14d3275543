"""Leadership in the running exporter: `bem-exporter run` replicas sharing a real PostgreSQL.

Each replica is a real process of the CLI; the simulator runs in the test process, so its
truth about finished calls is at hand. Short runs: the heavy failover runs (20 kills, SIGSTOP,
a database down under traffic) are in tests/test_failover.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_helpers import log_records
from postgres_server import PostgresServer
from processes import ROOT, ExporterProcess, wait_until
from status_helpers import finished_calls

from exporter.config import MetricsSettings
from exporter.ha.mirror import StandbyMirror
from exporter.metrics import Metrics
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.state import Changes
from exporter.state.sqlite import SqliteStore

LEASE = "3s"
CONVERGE = 60.0
"""Seconds the tests wait for a state they expect (generous: the machine is shared)."""


def replica(api_url: str, state_url: str, tmp_path: Path, name: str) -> ExporterProcess:
    """A `run` process on the shared state (BEM_STATE_URL, so no BEM_STATE_PATH)."""
    process = ExporterProcess(
        api_url,
        tmp_path / name,
        env={"BEM_STATE_URL": state_url, "BEM_LEADER_LEASE": LEASE, "BEM_POLL_INTERVAL": "500ms"},
    )
    del process.env["BEM_STATE_PATH"]
    return process


def is_leader(process: ExporterProcess) -> bool:
    return process.samples("bem_exporter_leader") == {(): 1.0}


def role(process: ExporterProcess) -> str:
    return str(httpx.get(f"{process.url}/status.json", timeout=5).json()["role"])


def messages(process: ExporterProcess) -> list[str]:
    return [str(record.get("msg")) for record in log_records(process)]


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimulatorConfig(prefill=120, history=600.0, arrival_rate=8.0, speed=20.0, seed=12))
    with SimulatorServer(sim) as url:
        yield sim, url


def settle(sim: Simulator) -> Counter[tuple[str, str]]:
    """Stop new calls, wait until every call finished: the truth the counters must reach."""
    sim.config.arrival_rate = 0.0
    wait_until(lambda: set(sim.status_counts()) <= {"completed", "failed"}, CONVERGE, what="all calls finished")
    return Counter(sim.finished_counts())


@contextlib.contextmanager
def two_replicas(api_url: str, state_url: str, tmp_path: Path) -> Iterator[tuple[ExporterProcess, ExporterProcess]]:
    """Two replicas, started one after the other; (leader, standby) once one leads."""
    first = replica(api_url, state_url, tmp_path, "a")
    second = replica(api_url, state_url, tmp_path, "b")
    try:
        first.start()
        second.start()
        wait_until(lambda: is_leader(first) or is_leader(second), CONVERGE, what="a leader")
        yield (first, second) if is_leader(first) else (second, first)
    finally:
        first.__exit__()  # kill -9 whatever still runs
        second.__exit__()


def test_one_leader_and_a_standby_serving_the_same_counts(
    simulator: tuple[Simulator, str], postgres_url: str, tmp_path: Path
) -> None:
    sim, url = simulator
    with two_replicas(url, postgres_url, tmp_path) as (leader, standby):
        truth = settle(sim)
        wait_until(lambda: leader.calls_total() == dict(truth), CONVERGE, what="the leader counting the truth")
        wait_until(lambda: standby.calls_total() == leader.calls_total(), CONVERGE, what="the standby's counts")
        assert [is_leader(leader), is_leader(standby)] == [True, False]
        assert (role(leader), role(standby)) == ("leader", "standby")
        # A healthy standby: ready, and up (it reads the state it serves).
        assert httpx.get(f"{standby.url}/readyz", timeout=5).status_code == 200
        assert standby.samples("bem_exporter_up") == {(): 1.0}
        # Only the leader polls bem.
        assert sum(standby.samples("bem_exporter_api_requests_total").values()) == 0
        assert sum(leader.samples("bem_exporter_api_requests_total").values()) > 0
    assert sum(truth.values()) > 120


def test_kill_9_of_the_leader_the_standby_takes_over_and_counts_exactly(
    simulator: tuple[Simulator, str], postgres_url: str, tmp_path: Path
) -> None:
    sim, url = simulator
    with two_replicas(url, postgres_url, tmp_path) as (leader, standby):
        wait_until(lambda: sum(leader.calls_total().values()) > 0, CONVERGE, what="the leader counting")
        leader.kill()
        wait_until(lambda: is_leader(standby), CONVERGE, what="the standby taking over")
        truth = settle(sim)
        wait_until(lambda: standby.calls_total() == dict(truth), CONVERGE, what="counters equal to the truth")
        assert role(standby) == "leader"
        assert standby.samples("bem_exporter_leader_transitions_total") == {(): 1.0}
        assert any(message.startswith("took the leader lease (epoch 2)") for message in messages(standby))


def test_sigterm_releases_the_lease_and_the_standby_takes_over(
    simulator: tuple[Simulator, str], postgres_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    sim, url = simulator
    database = postgres_url.rsplit("/", 1)[1]
    with two_replicas(url, postgres_url, tmp_path) as (leader, standby):
        assert leader.stop(signal.SIGTERM) == 0
        # Released before the process exited: nobody holds it until the standby takes it.
        holders = postgres_server.execute("SELECT holder, epoch FROM bem_lease", database)
        assert holders == [(None, 1)] or holders[0][1] == 2
        wait_until(lambda: is_leader(standby), CONVERGE, what="the standby taking over")
        truth = settle(sim)
        wait_until(lambda: standby.calls_total() == dict(truth), CONVERGE, what="counters equal to the truth")


def test_a_leader_paused_past_its_lease_steps_down_in_one_line(
    simulator: tuple[Simulator, str], postgres_url: str, tmp_path: Path
) -> None:
    sim, url = simulator
    with two_replicas(url, postgres_url, tmp_path) as (leader, standby):
        assert leader.process is not None
        leader.process.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: is_leader(standby), CONVERGE, what="the standby taking over")
        finally:
            leader.process.send_signal(signal.SIGCONT)
        wait_until(lambda: not is_leader(leader), CONVERGE, what="the old leader stepping down")
        assert role(leader) == "standby"
        stepped = [m for m in messages(leader) if m.startswith("lost the leader lease")]
        assert stepped == ["lost the leader lease (epoch 1): standing by"]
        truth = settle(sim)
        wait_until(lambda: standby.calls_total() == dict(truth), CONVERGE, what="counters equal to the truth")
        wait_until(lambda: leader.calls_total() == dict(truth), CONVERGE, what="the old leader serving the truth")


def test_a_leader_without_its_database_is_not_ready_and_resumes_exactly(
    simulator: tuple[Simulator, str], postgres_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """A database outage shorter than the lease: the leader keeps its role, reports it cannot
    write (up 0, /readyz 503), and counts exactly once the database is back."""
    sim, url = simulator
    leader = replica(url, postgres_url, tmp_path, "alone")
    leader.env["BEM_LEADER_LEASE"] = "60s"
    try:
        leader.start()
        wait_until(lambda: sum(leader.calls_total().values()) > 0, CONVERGE, what="the leader counting")
        postgres_server.stop("immediate")
        try:
            wait_until(lambda: leader.samples("bem_exporter_up") == {(): 0.0}, CONVERGE, what="up 0")
            wait_until(lambda: not leader.is_ready(), CONVERGE, what="/readyz 503")
            assert is_leader(leader)
        finally:
            postgres_server.start()
        truth = settle(sim)
        wait_until(lambda: leader.calls_total() == dict(truth), CONVERGE, what="counters equal to the truth")
        wait_until(leader.is_ready, CONVERGE, what="ready again")
    finally:
        leader.__exit__()


def test_a_database_down_at_start_is_waited_for(
    simulator: tuple[Simulator, str], postgres_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    _, url = simulator
    postgres_server.stop()
    process = replica(url, postgres_url, tmp_path, "late")
    quitter = replica(url, postgres_url, tmp_path, "quitter")
    try:
        process.start(ready=False)
        wait_until(
            lambda: any(m.startswith("state database failing") for m in messages(process)), CONVERGE, what="one line"
        )
        quitter.start(ready=False)
        wait_until(lambda: "state database failing" in quitter.log(), CONVERGE, what="the other one waiting")
        assert quitter.stop(signal.SIGTERM) == 0  # nothing to finish yet: a plain exit
        postgres_server.start()
        wait_until(lambda: is_leader(process), CONVERGE, what="the replica leading once the database is up")
        assert sum(m.startswith("state database failing") for m in messages(process)) == 1
        assert postgres_server.password not in process.log()
    finally:
        postgres_server.start()
        process.__exit__()
        quitter.__exit__()


def test_a_wrong_password_exits_2_with_one_line_without_it(
    postgres_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    wrong = postgres_url.replace(postgres_server.password, "not-the-password-42")
    process = replica("http://127.0.0.1:9", wrong, tmp_path, "wrong")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "run"], env=process.env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _is_json_log(line)]
    assert len(lines) == 1 and "BEM_STATE_URL" in lines[0]
    assert "not-the-password-42" not in result.stderr + result.stdout


def _is_json_log(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_a_standby_shows_only_snapshots_newer_than_the_one_shown(tmp_path: Path) -> None:
    """The mirror publishes the shared state's counts, but never goes back to an older
    snapshot (a database failed over to a lagging copy): counters stay monotonic."""
    calls = finished_calls(8)
    leader = Metrics(MetricsSettings(), "test")
    snapshots = []
    for end in (5, 2, 8):  # newer, then an older one, then the newest (never published: each from zero)
        snapshots.append(leader.recorder.stage(calls[:end]))
    asyncio.run(_mirror_sees(tmp_path / "state.sqlite", snapshots))


async def _mirror_sees(path: Path, snapshots: list[bytes]) -> None:
    store = await SqliteStore.open(str(path))
    standby = Metrics(MetricsSettings(), "test")
    mirror = StandbyMirror(store, {"metrics": standby.recorder}, standby.observer)
    shown = []
    try:
        for snapshot in snapshots:
            await store.commit(Changes(snapshots={"metrics": snapshot}))
            await mirror.refresh()
            shown.append(sum(standby.recorder.store.published.counters["bem_calls_total"].values()))
    finally:
        await store.close()
    assert shown == [5, 5, 8]
    assert mirror.readable
    assert b"bem_exporter_up 1.0" in standby.exposition(None)[0]

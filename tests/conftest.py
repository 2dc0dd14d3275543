"""Shared fixtures: the simulator over real HTTP on loopback, a settable clock, sink doubles."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from postgres_server import PostgresServer

from exporter.pipeline import FinishedCall
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

SIM_KEY = "sim-key"

LONGEST_FIRST = (
    "test_faults.py",
    "test_failover.py",
    "test_bench_smoke.py",
    "test_span_backlog.py",
    "test_cli.py",
    "test_prometheus_e2e.py",
    "test_security.py",
    "test_leadership.py",
    "test_fuzz.py",
    "test_poller.py",
    "test_soak.py",
    "test_crashes.py",
    "test_rules.py",
    "test_state_faults.py",
    "test_container.py",
)
"""Files that take a minute or more (`--durations` lists their tests), run first: each stays on
one worker (`--dist loadfile`), and one of them started last would hold the whole run open."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The LONGEST_FIRST files first, in that order; the others after them, as collected."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


class Clock:
    """A clock that tests move by hand; simulator and poller share it."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingRecorder:
    """A CallRecorder that remembers what it was handed, honouring the stage/publish handshake."""

    def __init__(self) -> None:
        self.published: Counter[str] = Counter()
        self._staged: list[str] = []

    def stage(self, batch: Sequence[FinishedCall]) -> bytes:
        self._staged = [item.call.call_id for item in batch]
        return b"snapshot"

    def publish(self) -> None:
        self.published.update(self._staged)
        self._staged = []

    def discard(self) -> None:
        self._staged = []

    def restore(self, snapshot: bytes) -> None:
        pass


class CollectingExporter:
    """A SpanExporter that keeps the finished calls it was given; can be switched off."""

    def __init__(self) -> None:
        self.exported: Counter[str] = Counter()
        self.down = False

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        if self.down:
            return None
        self.exported.update(item.call.call_id for item in batch)
        return sum(len(item.trace.function_calls) + 1 for item in batch)

    def shutdown(self) -> None:
        pass


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim_factory(clock: Clock) -> Iterator[object]:
    servers: list[SimulatorServer] = []

    def start(**config: object) -> tuple[Simulator, str]:
        simulator = Simulator(SimulatorConfig(**config), clock=clock)  # type: ignore[arg-type]
        server = SimulatorServer(simulator)
        servers.append(server)
        return simulator, server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL cluster for the session (see tests/postgres_server.py)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server (started again if a test stopped it)."""
    postgres_server.start()
    return postgres_server.create_database()

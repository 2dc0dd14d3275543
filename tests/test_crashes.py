"""Crashes: kill -9 at random instants, and a state file that is not one.

The exporter runs as users run it (a subprocess of the CLI) against the simulator, with spans
going to a real OTLP receiver."""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from pathlib import Path

from fault_helpers import missing_traces, otlp_env
from otlp_receiver import HttpReceiver
from processes import ExporterProcess, run_command, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

KILLS = 20


def test_twenty_kill_9_count_every_call_once_and_deliver_every_trace(tmp_path: Path) -> None:
    """Kill the exporter ~20 times at seeded random instants of its cycle (while it lists,
    fetches traces, commits, exports spans). After the final restart every finished call is
    counted exactly once per series and the trace of every finished call reached the
    backend (at least once: a repeat is allowed, a loss is not)."""
    rng = random.Random(20)
    simulator = Simulator(SimulatorConfig(prefill=300, history=1200.0, arrival_rate=25.0, speed=20.0, seed=21))
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as url, HttpReceiver() as receiver:
        env = {**otlp_env(receiver), "BEM_POLL_INTERVAL": "500ms"}
        for _ in range(KILLS):
            exporter = ExporterProcess(url, state, env=env).start(ready=False)
            # The interpreter takes ~0.6 s to start; the instants then fall all over the cycle.
            time.sleep(rng.uniform(0.4, 2.0))
            exporter.kill()
        simulator.config.arrival_rate = 0.0
        wait_until(lambda: set(simulator.status_counts()) <= {"completed", "failed"}, 30, what="all calls finished")
        truth = Counter(simulator.finished_counts())
        final = ExporterProcess(url, state, env=env)
        try:
            final.start()
            wait_until(lambda: final.calls_total() == dict(truth), 60, what="counters equal to the truth")
            wait_until(
                lambda: not missing_traces(simulator, receiver), 60, interval=1.0, what="every finished call's trace"
            )
        finally:
            if final.process is not None:
                final.stop()
    assert sum(truth.values()) > 300
    # Every span the backend got belongs to a finished call (ids are deterministic).
    trace_ids = {span["trace_id"] for span in receiver.spans()}
    expected = {
        hashlib.sha256(b"bem.call:" + c["callID"].encode()).digest()[:16].hex()
        for c in simulator.summaries()
        if c["status"] in ("completed", "failed")
    }
    assert trace_ids == expected


def test_a_corrupt_state_file_stops_the_cli_and_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    garbage = b"this is not an SQLite database\x00" * 64
    state.write_bytes(garbage)
    simulator = Simulator(SimulatorConfig(prefill=10, arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        for command in ("run", "once"):
            result = run_command(command, url, state)
            assert result.returncode != 0
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr  # one clear line, no traceback
            assert "not a readable bem-exporter state file" in lines[0]
            assert "move it aside" in lines[0]
            assert str(state) in lines[0]
            assert "Traceback" not in result.stdout + result.stderr
    assert state.read_bytes() == garbage  # untouched
    assert not any(p.name.startswith("state.sqlite-") for p in tmp_path.iterdir())  # no -wal/-shm left
    assert sum(simulator.requests.values()) == 0  # it stopped before asking the API anything

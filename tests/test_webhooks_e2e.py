"""Webhooks from the simulator itself: `bem-exporter subscribe --apply` subscribes the simulated
bem's functions to the exporter's listener, and the simulator delivers each event of its
running calls, signed, as bem does (the last one a moment before the call reads finished),
with its knobs to drop, duplicate, reorder, forge and age deliveries, retrying refused ones.

Real processes: the CLI (`run`, `subscribe`) as subprocesses, the simulator over HTTP in this
process for its truth, PostgreSQL for the replicas. The simulator runs on the real clock at
speed 20 (a call runs for seconds). "Counted from webhooks alone" is shown without a clock:
the exporter's poll cycles did not move while the calls ran, finished and were counted.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import ROOT, ExporterProcess, free_port, wait_until
from replicas import Replicas, differences, listening_pair, served, truth
from test_webhooks_cli import counted, cycles, first_poll_done, received

from exporter.simulator import DEMO_WEBHOOK_SECRET, Simulator, SimulatorConfig, SimulatorServer, Webhooks

WORKFLOWS = ("invoice-intake", "claims-triage")
"""Workflows whose every function has an output subscription: their last event is delivered."""


@pytest.fixture
def simulated() -> Iterator[Any]:
    servers: list[SimulatorServer] = []

    def start(**knobs: Any) -> tuple[Simulator, str]:
        config = SimulatorConfig(seed=13, arrival_rate=0.0, prefill=3, history=1200.0, speed=20.0)
        config.webhooks = Webhooks(**knobs)
        simulator = Simulator(config)
        server = SimulatorServer(simulator)
        servers.append(server)
        url = server.start()
        wait_until(lambda: all_finished(simulator), 60, what="the prefilled calls finished")
        return simulator, url

    yield start
    for server in servers:
        server.stop()


def all_finished(simulator: Simulator) -> bool:
    return set(simulator.status_counts()) <= {"completed", "failed"}


def subscribe(api: str, hook: str, workdir: Path) -> None:
    """`bem-exporter subscribe --url HOOK --apply`, as an operator runs it."""
    env = ExporterProcess(api, workdir / "subscribe.sqlite").env
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "subscribe", "--url", hook, "--apply"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert DEMO_WEBHOOK_SECRET not in done.stdout + done.stderr


def create(simulator: Simulator, per_workflow: int) -> list[str]:
    return [str(simulator.create_call(w)["callID"]) for w in WORKFLOWS for _ in range(per_workflow)]


def env_for(port: int, poll: str) -> dict[str, str]:
    return {
        "BEM_POLL_INTERVAL": poll,
        "BEM_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
        "BEM_WEBHOOK_SECRET": DEMO_WEBHOOK_SECRET,
    }


def test_the_simulators_deliveries_count_calls_with_a_60s_poll_and_no_cycle(tmp_path: Path, simulated: Any) -> None:
    simulator, api = simulated()
    port = free_port()
    hook = f"http://127.0.0.1:{port}/webhook"
    with ExporterProcess(api, tmp_path / "state.sqlite", env=env_for(port, "60s")) as exporter:
        first_poll_done(exporter, 3)
        subscribe(api, hook, tmp_path)
        calls = create(simulator, 4)
        wait_until(lambda: all_finished(simulator), 60, what="the calls finished")
        wait_until(lambda: counted(exporter) == 3 + len(calls), 30, what="every call counted")
        assert cycles(exporter) == 1, "a poll cycle ran: the calls were not counted from webhooks alone"
        assert not differences(served(exporter), truth(simulator))
        assert exporter.samples("bem_exporter_webhook_counted_calls_total")[()] == len(calls)
        assert received(exporter)["accepted"] >= len(calls)
        assert simulator.deliveries.counts().get("delivered", 0) > 0


def test_dropped_duplicated_reordered_forged_and_stale_deliveries_leave_every_count_exact(
    tmp_path: Path, simulated: Any
) -> None:
    simulator, api = simulated(
        drop_rate=0.3, duplicate_rate=0.1, reorder_rate=1.0, wrong_secret_rate=0.2, stale_rate=0.1, retry_base=0.2
    )
    port = free_port()
    hook = f"http://127.0.0.1:{port}/webhook"
    with ExporterProcess(api, tmp_path / "state.sqlite", env=env_for(port, "5s")) as exporter:
        first_poll_done(exporter, 3)
        subscribe(api, hook, tmp_path)
        calls = create(simulator, 10)
        wait_until(lambda: all_finished(simulator), 60, what="the calls finished")
        polls = cycles(exporter)
        wait_until(lambda: cycles(exporter) >= polls + 1, 30, what="the next poll")
        assert not differences(served(exporter), truth(simulator))
        assert counted(exporter) == 3 + len(calls)
        results = received(exporter)
        assert results["accepted"] > 0 and results["bad_signature"] > 0 and results["stale"] > 0
        assert results["duplicate"] > 0


def test_every_delivery_to_the_standby_is_counted_on_the_leader(
    tmp_path: Path, simulated: Any, postgres_url: str
) -> None:
    simulator, api = simulated()
    common = {"BEM_POLL_INTERVAL": "60s", "BEM_LEADER_LEASE": "3s", "BEM_WEBHOOK_SECRET": DEMO_WEBHOOK_SECRET}
    replicas = Replicas(api, postgres_url, tmp_path, common)
    try:
        leader, standby, hooks = listening_pair(replicas)
        first_poll_done(leader, 3)
        subscribe(api, hooks[standby], tmp_path)
        calls = create(simulator, 4)
        wait_until(lambda: all_finished(simulator), 60, what="the calls finished")
        wait_until(lambda: counted(leader) == 3 + len(calls), 30, what="every call counted on the leader")
        assert cycles(leader) == 1, "a poll cycle ran: the calls were not counted through the hints"
        assert not differences(served(leader), truth(simulator))
        assert received(standby)["accepted"] > 0 and received(leader)["accepted"] == 0
    finally:
        replicas.stop_all()

"""The CLI as users run it: a subprocess against the simulator over loopback."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
from conftest import SIM_KEY
from processes import ExporterProcess, run_command, wait_until

from exporter.bem.simulator import Simulator, SimulatorConfig, SimulatorServer


def test_once_prints_a_summary_and_hands_everything_on(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=150, history=1200.0, arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        result = run_command("once", url, tmp_path / "state.sqlite")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    finished = sum(simulator.finished_counts().values())
    assert summary.startswith("ok:")
    assert f"handed on {finished}," in summary
    assert SIM_KEY not in result.stdout + result.stderr


def test_once_fails_when_the_api_is_unreachable(tmp_path: Path) -> None:
    result = run_command("once", "http://127.0.0.1:9", tmp_path / "state.sqlite", BEM_API_TIMEOUT="2s")
    assert result.returncode == 1
    assert "failed" in result.stdout
    assert "cannot connect" in result.stdout


def test_once_says_the_key_is_wrong(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        result = run_command("once", url, tmp_path / "state.sqlite", BEM_API_KEY="wrong-key-123")
    assert result.returncode == 1
    assert "401" in result.stdout and "API key was rejected" in result.stdout
    assert "wrong-key-123" not in result.stdout + result.stderr


def test_run_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=50, history=600.0, arrival_rate=1.0))
    # The exporter is killed on the way out if a check fails.
    with SimulatorServer(simulator) as url, ExporterProcess(url, tmp_path / "state.sqlite") as exporter:
        wait_until(lambda: exporter.samples("bem_exporter_up") == {(): 1.0}, 20, what="bem_exporter_up 1")
        assert httpx.get(f"{exporter.url}/healthz").status_code == 200
        assert exporter.stop(signal.SIGTERM) == 0
    log = exporter.log()
    assert '"msg": "poll cycle"' in log
    assert '"msg": "bem-exporter stopped"' in log


def test_second_exporter_on_the_same_state_refuses(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(arrival_rate=0.0))
    with SimulatorServer(simulator) as url, ExporterProcess(url, tmp_path / "state.sqlite"):
        second = run_command("once", url, tmp_path / "state.sqlite")
    assert second.returncode == 1
    assert "in use by another bem-exporter process" in second.stderr


def _all_finished(simulator: Simulator) -> bool:
    counts = simulator.status_counts()
    return counts.get("pending", 0) + counts.get("running", 0) == 0


def test_kill_9_mid_cycle_counts_every_call_once(tmp_path: Path) -> None:
    """Kill the exporter at random instants while calls arrive and finish; after the last
    restart the counters equal the simulator's truth: nothing lost, nothing counted twice."""
    rng = random.Random(5)
    simulator = Simulator(SimulatorConfig(prefill=300, history=1200.0, arrival_rate=20.0, speed=20.0, seed=9))
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as url:
        for _ in range(6):
            exporter = ExporterProcess(url, state).start(ready=False)
            time.sleep(rng.uniform(0.5, 2.5))
            exporter.kill()
        simulator.config.arrival_rate = 0.0
        wait_until(lambda: _all_finished(simulator), 60, what="every simulated call finished")
        truth = Counter(simulator.finished_counts())
        with ExporterProcess(url, state) as final:
            wait_until(lambda: final.calls_total() == dict(truth), 60, what="counters equal to the truth")
    assert sum(truth.values()) > 300


def test_check_reaches_api_and_otlp_and_never_shows_the_key(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(arrival_rate=0.0))
    with SimulatorServer(simulator, prefix="/bem") as url:
        state = tmp_path / "state.sqlite"
        good = run_command("check", url, state, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=url)
        bad = run_command(
            "check", url, state, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"
        )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "api: ok" in good.stdout and "otlp: reachable" in good.stdout
    assert bad.returncode == 1
    assert "otlp: UNREACHABLE" in bad.stdout
    for result in (good, bad):
        assert SIM_KEY not in result.stdout + result.stderr

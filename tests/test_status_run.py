"""`bem-exporter run` serves /status fed by its own poll loop: cycles, API health and finished
calls as the simulator produced them, in a real browser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from exporter.ids import trace_id_for
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.browser import load_page
from tests.processes import ExporterProcess, wait_until


def test_run_shows_its_cycles_and_finished_calls_on_the_status_page(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=40, history=600.0, arrival_rate=0.0))
    with SimulatorServer(simulator) as url, ExporterProcess(url, tmp_path / "state.sqlite") as exporter:

        def status() -> Any:
            return httpx.get(f"{exporter.url}/status.json", timeout=5).json()

        wait_until(lambda: len(status()["calls"]) > 0, 30, what="finished calls on /status.json")
        document = status()
        page = load_page(f"{exporter.url}/status")
    finished = {call["callID"]: call for call in simulator.summaries() if call["status"] in ("completed", "failed")}
    assert document["role"] == "single"
    assert document["api"]["state"] == "up"
    assert document["cycles"] and document["cycles"][0]["ok"] is True
    newest = document["calls"][0]
    assert newest["status"] == finished[newest["call_id"]]["status"]
    assert newest["workflow"] == (finished[newest["call_id"]].get("workflowName") or "(none)")
    assert newest["trace_id"] == trace_id_for(newest["call_id"])
    assert page.errors == []
    assert newest["trace_id"] in page.text and newest["workflow"] in page.text

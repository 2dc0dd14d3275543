"""The rate-limit knob of `bem-exporter simulate`, and `once`'s backfill progress, as a user
runs them: real processes over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import SIM_KEY
from fault_helpers import log_records
from processes import ROOT, ExporterProcess, free_port, run_command, wait_until

from exporter.bem.ratelimit import DECISIONS
from exporter.simulator import Faults, Simulator, SimulatorConfig, SimulatorServer


@contextmanager
def simulate(*flags: str) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "exporter", "simulate", "--listen", f"127.0.0.1:{port}", *flags]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/v3/calls", timeout=1).status_code > 0, 30, what="the simulator")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def burst_of(url: str, count: int) -> list[httpx.Response]:
    with httpx.Client(base_url=url, headers={"x-api-key": SIM_KEY}, timeout=5) as client:
        return [client.get("/v3/calls", params={"limit": "1"}) for _ in range(count)]


def test_simulate_limits_each_key_and_says_when_to_retry() -> None:
    # The wait_until probe sent no key: it used the anonymous bucket, not the key's.
    with simulate("--rate-limit", "0.5", "--rate-limit-burst", "2") as url:
        answers = burst_of(url, 4)
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert answers[2].headers["retry-after"] == "2"  # one token at 0.5/s, in whole seconds
    assert answers[2].json()["code"] == "rate_limited"


def test_simulate_can_refuse_without_retry_after() -> None:
    with simulate("--rate-limit", "0.5", "--no-retry-after") as url:
        answers = burst_of(url, 3)
    assert [a.status_code for a in answers] == [200, 429, 429]
    assert "retry-after" not in answers[1].headers


def test_simulate_refuses_a_rate_limit_of_zero() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "simulate", "--rate-limit", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "rate_limit" in done.stderr.strip().splitlines()[-1]


def test_once_logs_the_backfill_with_its_counts_and_draws_no_bar_off_a_terminal(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=260, history=1800.0, arrival_rate=0.0, speed=1000.0))
    with SimulatorServer(simulator) as url:
        done = run_command("once", url, tmp_path / "state.sqlite", BEM_LOG_FORMAT="json", BEM_LOOKBACK="2h")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line.get("msg") == "backfill progress"]
    [finished] = [line for line in lines if line.get("msg") == "backfill finished"]
    assert (progress[0]["calls_done"], progress[0]["calls_total_estimate"]) == (100, 260)
    assert progress[0]["calls_remaining"] == 160
    assert (finished["calls_done"], finished["calls_remaining"]) == (260, 0)
    assert "call/s" not in done.stderr and "\r" not in done.stderr  # tqdm stays off a pipe


def test_run_explains_its_rate_in_the_log_the_metrics_and_the_status_page(tmp_path: Path) -> None:
    """A backfill against a limit the exporter is not told: each decision of the adaptive rate
    is one info line with its reason, counted by kind, and /status.json shows where it stands."""
    faults = Faults(rate_limit=10.0, rate_limit_burst=10.0, rate_limit_retry_after=False)
    simulator = Simulator(SimulatorConfig(prefill=300, history=1800.0, arrival_rate=0.0, speed=1000.0, faults=faults))
    with SimulatorServer(simulator) as url, ExporterProcess(url, tmp_path / "state.sqlite") as exporter:

        def decisions() -> dict[str, float]:
            series = exporter.samples("bem_exporter_api_rate_decisions_total")
            return {dict(labels)["decision"]: value for labels, value in series.items()}

        wait_until(lambda: decisions().get("limit", 0) >= 1, 120, what="a cut that held")
        counted = decisions()
        status = httpx.get(f"{exporter.url}/status.json", timeout=5).json()["rate"]
        page = httpx.get(f"{exporter.url}/status", timeout=5).text
    assert set(counted) == set(DECISIONS)  # every kind, at zero until it happens
    assert counted["cut"] >= 1 and counted["storm"] == 0
    assert status["state"] in ("checking", "steady", "probing")
    assert 0 < status["limit_found"] < 15.0  # about the simulator's 10/s
    assert status["last_decision"]["kind"] in DECISIONS and status["last_decision"]["reason"]
    assert 'id="rate-state"' in page
    lines = [r for r in log_records(exporter) if r.get("logger") == "exporter.bem.ratelimit"]
    cuts = [r for r in lines if r["decision"] == "cut"]
    assert cuts and all(r["level"] == "info" for r in lines)
    assert cuts[0]["msg"].startswith("request rate cut: ")
    assert {"state", "rate", "rate_before", "limit_found"} <= set(cuts[0])
    assert cuts[0]["rate"] < cuts[0]["rate_before"]

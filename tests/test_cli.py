"""The CLI as users run it: a subprocess against the simulator over loopback."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import SIM_KEY
from fault_helpers import log_records
from otlp_receiver import HttpReceiver
from processes import ROOT, ExporterProcess, free_port, run_command, wait_until

from exporter.config.table import ROWS
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.catalog import FUNCTIONS_BY_NAME
from exporter.simulator.quality import profile


def test_once_prints_a_summary_and_hands_everything_on(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=150, history=1200.0, arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        result = run_command("once", url, tmp_path / "state.sqlite")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    finished = sum(simulator.finished_counts().values())
    assert summary.startswith("ok:")
    assert f"counted {finished}," in summary
    assert SIM_KEY not in result.stdout + result.stderr


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    """`once`'s last line with its time (which varies) as `Ns`."""
    return re.sub(r", \d+\.\d\ds", ", Ns", result.stdout.strip().splitlines()[-1])


def test_once_says_what_became_of_the_spans(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=30, history=1200.0, arrival_rate=0.0, speed=20.0))
    wait_until(lambda: _all_finished(simulator), 60, what="every simulated call finished")
    done = sum(simulator.finished_counts().values())
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as url, HttpReceiver() as backend:
        otlp = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": backend.endpoint}
        backend.set_down(True)
        waiting = run_command("once", url, state, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT="2000", **otlp)
        backend.set_down(False)
        later = run_command("once", url, state, **otlp)
        nothing = run_command("once", url, state, **otlp)
        rejected = run_command("once", url, state, BEM_API_KEY="wrong-key-123", **otlp)
        metrics_only = run_command("once", url, tmp_path / "other.sqlite", OTEL_TRACES_EXPORTER="none")
    assert (waiting.returncode, later.returncode, nothing.returncode) == (1, 0, 0)
    assert _summary(waiting) == (
        f"failed: discovered {done}, finished {done}, counted {done}, tracked 0, "
        f"spans left waiting ({done} calls; the next run sends them), Ns"
    )
    assert _summary(later) == (
        f"ok: discovered 0, finished 0, counted 0, tracked 0, spans delivered ({done} calls, {done} left by an "
        "earlier run), Ns"
    )
    assert _summary(nothing) == "ok: discovered 0, finished 0, counted 0, tracked 0, no spans to deliver, Ns"
    assert rejected.returncode == 1
    assert _summary(rejected) == (
        "failed: discovered 0, finished 0, counted 0, tracked 0, no spans to deliver, Ns; "
        "the API key was rejected (HTTP 401); check BEM_API_KEY or BEM_API_KEY_FILE"
    )
    assert metrics_only.returncode == 0
    assert _summary(metrics_only) == (
        f"ok: discovered {done}, finished {done}, counted {done}, tracked 0, "
        "spans not sent (OTEL_TRACES_EXPORTER=none), Ns"
    )


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


# --- run's health lines name the cause, once per change ---------------------------------------


def _run_for_cycles(api_url: str, state: Path, cycles: int, **env: str) -> list[dict[str, object]]:
    """`bem-exporter run` until it logged `cycles` poll cycles; its JSON log records."""
    exporter = ExporterProcess(api_url, state, env=env).start(ready=False)
    try:
        wait_until(lambda: _cycles(exporter) >= cycles, 60, what=f"{cycles} poll cycles")
    finally:
        exporter.stop()
    return log_records(exporter)


def _cycles(exporter: ExporterProcess) -> int:
    return sum(record.get("msg") == "poll cycle" for record in log_records(exporter))


def _health_lines(records: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(r["level"], r["msg"], r.get("error")) for r in records if str(r["msg"]).startswith("bem API")]


def test_run_logs_a_rejected_key_once_as_an_error(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        records = _run_for_cycles(url, tmp_path / "state.sqlite", 3, BEM_API_KEY="wrong-key-123")
    assert _health_lines(records) == [
        (
            "error",
            "bem API rejected the API key; retrying every poll interval",
            "the API key was rejected (HTTP 401); check BEM_API_KEY or BEM_API_KEY_FILE",
        )
    ]
    assert "wrong-key-123" not in str(records)


def test_run_says_the_host_name_does_not_resolve(tmp_path: Path) -> None:
    records = _run_for_cycles("http://bem-api.invalid", tmp_path / "state.sqlite", 2)
    assert _health_lines(records) == [
        (
            "warning",
            "bem API host name does not resolve; retrying every poll interval",
            "the host name 'bem-api.invalid' does not resolve; check BEM_API_URL",
        )
    ]


def test_run_probes_a_dead_api_once_per_cycle_and_says_1_attempt(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    records = _run_for_cycles(dead, tmp_path / "state.sqlite", 3)
    health = _health_lines(records)
    assert [(level, msg) for level, msg, _ in health] == [
        ("warning", "bem API unreachable; retrying every poll interval")
    ]
    errors = [r.get("error") for r in records if r["msg"] == "poll cycle"]
    assert errors[-1] == "/v3/calls: cannot connect (after 1 attempt)"


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


# --- Settings at the command line: exit 2 with one exact line; --help that tells the truth ------

PG_PASSWORD = "hunter2-pg-password"


def _exporter(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_")) and k != "PGPASSWORD"}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        env={**clean, "BEM_API_KEY": SIM_KEY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _invalid_cases(tmp: Path) -> list[tuple[dict[str, str], str]]:
    empty, big, document = tmp / "empty.pdf", tmp / "big.pdf", tmp / "doc.pdf"
    empty.write_bytes(b"")
    big.write_bytes(b"x" * (10 * 2**20 + 1))
    document.write_bytes(b"%PDF canary")
    canary = {"BEM_CANARY_WORKFLOW": "canary"}
    return [
        ({"BEM_STATE_URL": f"postgresql://bem:{PG_PASSWORD}@db:port/state"},
         "BEM_STATE_URL: a port in the URL is not a number in 0-65535"),
        ({"BEM_STATE_URL": f"mysql://bem:{PG_PASSWORD}@db/state"},
         "BEM_STATE_URL: must start with postgresql:// or postgres:// (example: postgresql://user@host:5432/db)"),
        ({"BEM_STATE_URL": f"postgresql://bem:{PG_PASSWORD}@db/state", "BEM_STATE_PATH": str(tmp / "s.sqlite")},
         "BEM_STATE_URL: set together with BEM_STATE_PATH; choose PostgreSQL or SQLite"),
        ({"BEM_STATE_PASSWORD_FILE": str(document)}, "BEM_STATE_PASSWORD_FILE: has no effect without BEM_STATE_URL"),
        ({"BEM_LEADER_LEASE": "0"}, "BEM_LEADER_LEASE: must be greater than 0, got '0'"),
        (canary, "BEM_CANARY_FILE: required with BEM_CANARY_WORKFLOW (the document the canary submits)"),
        ({**canary, "BEM_CANARY_FILE": str(empty)}, f"BEM_CANARY_FILE: {str(empty)!r} is empty"),
        ({**canary, "BEM_CANARY_FILE": str(big)}, f"BEM_CANARY_FILE: {str(big)!r} is larger than 10 MiB"),
        ({**canary, "BEM_CANARY_FILE": str(tmp / "missing.pdf")},
         f"BEM_CANARY_FILE: cannot read {str(tmp / 'missing.pdf')!r}: No such file or directory"),
        ({"BEM_CANARY_FILE": str(document)}, "BEM_CANARY_FILE: has no effect without BEM_CANARY_WORKFLOW"),
        ({"BEM_CANARY_INTERVAL": "-5m"},
         "BEM_CANARY_INTERVAL: '-5m' is not a duration (examples: 15, 30s, 30m, 6h, 7d)"),
        ({**canary, "BEM_CANARY_FILE": str(document), "BEM_CANARY_TIMEOUT": "10s"},
         "BEM_CANARY_TIMEOUT: 10s must be longer than BEM_POLL_INTERVAL (15s)"),
        ({"BEM_TRACE_URL": "https://grafana.example/explore"},
         "BEM_TRACE_URL: must contain {trace_id} where the trace id goes"),
        ({"BEM_TRACE_URL": "ftp://grafana.example/{trace_id}"},
         "BEM_TRACE_URL: 'ftp://grafana.example/{trace_id}' is not an http(s) URL with a host"),
        ({"BEM_MAX_RESPONSE_BYTES": "lots"},
         "BEM_MAX_RESPONSE_BYTES: 'lots' is not a size (examples: 1048576, 512KiB, 64MiB, 1GB)"),
        ({"BEM_RETRY_AFTER_MAX": "0s"}, "BEM_RETRY_AFTER_MAX: must be greater than 0, got '0s'"),
        ({"BEM_OTLP_MAX_REQUEST_BYTES": "0MiB"}, "BEM_OTLP_MAX_REQUEST_BYTES: must be greater than 0, got '0MiB'"),
        ({"BEM_MAX_SERIES_PER_METRIC": "-5"}, "BEM_MAX_SERIES_PER_METRIC: must be greater than 0, got '-5'"),
        ({"BEM_API_URL": f"https://user:{PG_PASSWORD}@api.bem.ai:port"},
         "BEM_API_URL: not a valid URL (check its port and any [IPv6] brackets)"),
    ]  # fmt: skip


def test_invalid_settings_exit_2_with_one_exact_line(tmp_path: Path) -> None:
    for env, message in _invalid_cases(tmp_path):
        result = _exporter("check", env=env)
        assert result.returncode == 2, (env, result.stderr)
        assert result.stderr.splitlines() == [f"bem-exporter: error: {message}"], env
        assert PG_PASSWORD not in result.stdout + result.stderr
        assert SIM_KEY not in result.stdout + result.stderr


def _help_of(text: str) -> dict[str, str]:
    """Each flag of a `--help` text with its help, white space folded."""
    flat = " ".join(text.split())
    parts = re.split(r" (--[a-z][a-z-]+) (?=[A-Z0-9|a-z:]+ )", flat)
    return {flag: body for flag, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_flag_names_its_variable_and_default() -> None:
    result = _exporter("run", "--help")
    assert result.returncode == 0
    helps = _help_of(result.stdout.split("options:", 1)[1])
    flags = {row.flag_name: row for row in ROWS if row.flag_name}
    assert set(flags) <= set(helps)
    for flag, row in flags.items():
        assert f"({row.env}; " in helps[flag], flag
        assert re.search(r"\((BEM|PG)[A-Z_]+; (default|required)", helps[flag]), flag
    # Where the key comes from: the same four places as docs/configuration.md says.
    flat = " ".join(result.stdout.split())
    for source in ("BEM_API_KEY,", "BEM_API_KEY_FILE (--api-key-file)", "api_key or api_key_file"):
        assert source in flat
    docs = (ROOT / "docs" / "configuration.md").read_text()
    assert "From `BEM_API_KEY`, from a file named by `BEM_API_KEY_FILE` (`--api-key-file`), or from the" in docs
    assert "config file's `api_key` or `api_key_file`" in docs


def test_demo_help_offers_no_api_url_or_key_file() -> None:
    result = _exporter("demo", "--help")
    assert result.returncode == 0
    assert "--api-url" not in result.stdout and "--api-key-file" not in result.stdout
    assert "--poll-interval" in result.stdout and "--rate" in result.stdout
    assert _exporter("demo", "--api-url", "http://x").returncode == 2


def test_the_simulator_says_which_key_it_expects() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--listen", "127.0.0.1:0", "--api-key", "my-sim-key"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        first = process.stderr.readline() if process.stderr else ""
    finally:
        process.kill()
        process.wait()
    assert "accepting the API key 'my-sim-key'" in first


def _accepted_webhooks(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'^bem_exporter_webhooks_received_total\{result="accepted"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_demo_prints_its_status_url_and_says_its_trees_are_a_sample() -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--listen", f"127.0.0.1:{port}", "--prefill", "20"],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline().rstrip("\n") for _ in range(7)]
        url = banner[3].split()[-1]
        wait_until(lambda: httpx.get(url, timeout=5).status_code == 200, 30, what="the demo's /status")
        status = httpx.get(url, timeout=5)
        # The demo runs with webhooks on: the simulator delivers, signed, and the exporter accepts.
        wait_until(lambda: _accepted_webhooks(port) > 0, 60, what="the demo's first accepted webhook")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert banner[3] == f"  status:    http://127.0.0.1:{port}/status"
    assert re.fullmatch(
        r"  webhooks:  http://127\.0\.0\.1:\d+/webhook "
        r"\(\d+ subscriptions of the simulated bem deliver there, signed\)",
        banner[4],
    ), banner[4]
    assert banner[5] == (
        "  traces:    a sample printed below as trees (2 per batch of finished calls; every call is counted); "
        "set OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 to send all of them to Tempo, Jaeger or a Collector"
    )
    assert status.status_code == 200 and "bem-exporter" in status.text


def test_demo_shows_a_functions_accuracy_sliding() -> None:
    """The demo's simulator drifts one function's accuracy down; its quality gauge follows."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
    command = ["demo", "--listen", f"127.0.0.1:{port}", "--prefill", "5", "--quality-interval", "1s"]
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", *command],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )

    def accuracy() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        found = re.search(r'^bem_function_accuracy_ratio\{function_name="extract-invoice"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else None

    # Without the drift the ratio stays within half a label (1/234) of the function's steady
    # accuracy; the drift (0.6 an hour) takes it 0.006 below that in 36 s.
    steady = profile(FUNCTIONS_BY_NAME["extract-invoice"]).accuracy
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline().rstrip("\n") for _ in range(9)]
        wait_until(lambda: accuracy() is not None, 30, what="the demo's quality gauges")
        wait_until(lambda: (accuracy() or 1.0) < steady - 0.006, 90, interval=1.0, what="the accuracy sliding")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert banner[7] == (
        "  quality:   bem's function metrics read every 1s; extract-invoice's accuracy drifts down 1 point a "
        "minute (bem_function_accuracy_ratio)"
    )


@pytest.mark.parametrize("drift", ["extract-invoice", "extract-invoice:fast", ":0.6", "extract-invoice:-1"])
def test_a_bad_quality_drift_exits_2_naming_the_flag(drift: str) -> None:
    result = _exporter("simulate", "--listen", "127.0.0.1:0", "--quality-drift", drift)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("bem-exporter: error: --quality-drift:")

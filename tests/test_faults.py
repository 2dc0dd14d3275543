"""The API misbehaving: outages, 429 storms, 5xx bursts, slow, truncated and malformed answers,
pages that change while they are read. The exporter runs as users run it (the CLI as a
subprocess) against the simulator over loopback; the simulator's count of finished calls is
the truth the counters must reach, exactly, once the weather clears (or while it goes on)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fault_helpers import log_lines, log_records, warnings
from processes import ExporterProcess, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

OUTAGE_SECONDS = 8.0
POLL_INTERVAL = 1.0
RECOVERY = 30.0
OUTAGE_LIMIT = 30.0
"""Deadline for `bem_exporter_up 1` once the API is back: a next probe within a poll interval
is proven by counting the requests of the outage; this only must not fail a busy machine."""
UNREACHABLE = "bem API unreachable; retrying every poll interval"
REACHABLE = "bem API reachable again"


def _all_finished(simulator: Simulator) -> bool:
    return set(simulator.status_counts()) <= {"completed", "failed"}


def _errors(exporter: ExporterProcess) -> int:
    """Requests the exporter made that got no answer (connection refused or dropped)."""
    series = exporter.samples("bem_exporter_api_requests_total")
    return int(sum(value for labels, value in series.items() if dict(labels)["code"] == "error"))


def _ready(exporter: ExporterProcess) -> int:
    return httpx.get(f"{exporter.url}/readyz", timeout=5).status_code


def _outage(exporter: ExporterProcess, seconds: float) -> Iterator[tuple[float, float, int, float]]:
    """Every ~0.5 s of an outage: (seconds into it when /readyz was asked, and when it had
    answered, its status, bem_exporter_up). The exporter judged readiness between the two,
    however long a busy machine took. The outage lasts `seconds`, or longer (up to
    OUTAGE_LIMIT) until the cycle that found it down has given up its tries and reported
    `up` 0: its jittered backoff may take 7.5 s, more on a busy machine."""
    began = time.monotonic()
    reported = False
    while (asked := time.monotonic() - began) < seconds or (not reported and asked < OUTAGE_LIMIT):
        status = _ready(exporter)
        up = exporter.samples("bem_exporter_up")[()]
        reported = reported or up == 0.0
        yield asked, time.monotonic() - began, status, up
        time.sleep(0.5)


def _lasted(seen: list[tuple[float, float, int, float]]) -> float:
    return seen[-1][1]


def test_api_outage_then_refused_connections(tmp_path: Path) -> None:
    """Down twice: first the API drops every connection (`faults.down`), then its server is
    gone (connections refused) and comes back on the same port. The exporter keeps running,
    probes once per poll interval, reports the outage (up 0, /readyz 503 once the last
    success is 3 intervals old, one warning per state change) and converges to the truth."""
    simulator = Simulator(SimulatorConfig(prefill=100, history=600.0, arrival_rate=5.0, speed=20.0, seed=41))
    server = SimulatorServer(simulator)
    url = server.start()
    exporter = ExporterProcess(url, tmp_path / "state.sqlite", env={"BEM_POLL_INTERVAL": f"{POLL_INTERVAL}s"})
    figures: dict[str, float] = {}
    try:
        exporter.start()
        wait_until(lambda: exporter.samples("bem_exporter_up") == {(): 1.0}, 20, what="up")

        # 1. Connections dropped without an answer.
        before = sum(simulator.requests.values())
        simulator.config.faults.down = True
        seen = list(_outage(exporter, OUTAGE_SECONDS))
        requests = sum(simulator.requests.values()) - before
        simulator.config.faults.down = False
        figures["requests while dropped"] = requests
        # One probe per poll interval (plus the 5 tries of the cycle that found it down,
        # and a cycle in flight at either end).
        assert requests <= _lasted(seen) / POLL_INTERVAL + 8, requests
        _assert_reported(seen)
        wait_until(lambda: exporter.samples("bem_exporter_up") == {(): 1.0}, RECOVERY, what="up again")
        assert _ready(exporter) == 200

        # 2. The server gone: connections refused; then back on the same port.
        before = _errors(exporter)
        port = server.port
        server.stop()
        seen = list(_outage(exporter, OUTAGE_SECONDS))
        refused = _errors(exporter) - before
        figures["requests while refused"] = refused
        assert refused <= _lasted(seen) / POLL_INTERVAL + 8, refused
        _assert_reported(seen)
        assert server.start() == url and server.port == port
        wait_until(lambda: exporter.samples("bem_exporter_up") == {(): 1.0}, RECOVERY, what="up again")
        assert _ready(exporter) == 200

        # 3. Exactly the truth once everything in flight has finished.
        simulator.config.arrival_rate = 0.0
        wait_until(lambda: _all_finished(simulator), 30, what="every call finished")
        truth = Counter(simulator.finished_counts())
        wait_until(lambda: exporter.calls_total() == dict(truth), 30, what="counters equal to the truth")
        assert exporter.process is not None and exporter.process.poll() is None  # never stopped
    finally:
        if exporter.process is not None:
            exporter.stop()
        server.stop()
    # A line per state change, not per request or per cycle.
    assert log_lines(exporter, UNREACHABLE) == 2
    assert log_lines(exporter, REACHABLE) == 2
    assert set(warnings(exporter)) <= {UNREACHABLE}, warnings(exporter)
    print(f"outage figures (over {OUTAGE_SECONDS:g} s or more each, poll interval {POLL_INTERVAL:g} s): {figures}")


def _assert_reported(seen: list[tuple[float, float, int, float]]) -> None:
    # Within a cycle (and its tries) bem_exporter_up reads 0 ...
    assert any(up == 0.0 for _, _, _, up in seen), seen
    # ... and /readyz fails once the last success is more than 3 intervals old (allow one
    # interval for the cycle in flight and one for the last success's own age).
    late = [status for asked, _, status, _ in seen if asked > 5 * POLL_INTERVAL]
    assert late and set(late) == {503}, seen
    early = [status for _, answered, status, _ in seen if answered < 1.5 * POLL_INTERVAL]
    assert early and early[0] == 200, seen  # not at the first failed request


@dataclass
class Scenario:
    name: str
    faults: dict[str, object] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    expect_codes: tuple[str, ...] = ()
    """HTTP codes (bem_exporter_api_requests_total{code}) the scenario must have produced."""
    expect_rejected: tuple[str, ...] = ()
    """Record kinds (bem_exporter_rejected_records_total{record}) it must have produced."""


SCENARIOS = [
    Scenario("429 storm with Retry-After", {"rate_429": 0.6, "retry_after": 0.2}, expect_codes=("429",)),
    Scenario("429 storm without Retry-After", {"rate_429": 0.6}, expect_codes=("429",)),
    Scenario("5xx burst", {"rate_5xx": 0.5}, expect_codes=("500", "502", "503")),
    Scenario(
        "slower than BEM_API_TIMEOUT",
        {"slow_rate": 0.3, "slow_seconds": 2.5},
        env={"BEM_API_TIMEOUT": "1s"},
        expect_codes=("error",),
    ),
    Scenario("truncated JSON", {"truncated_rate": 0.3}, expect_rejected=("response",)),
    Scenario("malformed records", {"malformed_rate": 0.15}, expect_rejected=("call",)),
    # The first start's backfill reads 3,000 calls newest to oldest while 200 a second arrive
    # and every response takes 50 ms; then discovery pages forward through the arrivals.
    Scenario(
        "pages change while paging",
        config={"arrival_rate": 200.0, "latency": 0.05, "prefill": 3000, "history": 1800.0},
    ),
]


def test_faults_while_calls_arrive_converge_to_the_truth(tmp_path: Path) -> None:
    """Each scenario runs its own simulator and exporter, all at once (they are mostly idle,
    waiting on each other): faults on from the first request to the end, calls arriving for
    6 s, then the counters must equal the truth per series with the faults still on."""
    runs: list[tuple[Scenario, Simulator, ExporterProcess]] = []
    with ExitStack() as stack:
        for index, scenario in enumerate(SCENARIOS):
            config = {"prefill": 200, "history": 600.0, "arrival_rate": 10.0, "speed": 20.0, **scenario.config}
            simulator = Simulator(SimulatorConfig(seed=50 + index, **config))  # type: ignore[arg-type]
            for name, value in scenario.faults.items():
                setattr(simulator.config.faults, name, value)
            url = stack.enter_context(SimulatorServer(simulator))
            env = {"BEM_POLL_INTERVAL": "1s", **scenario.env}
            exporter = ExporterProcess(url, tmp_path / f"state-{index}.sqlite", env=env).start(ready=False)
            stack.callback(_stop, exporter)
            runs.append((scenario, simulator, exporter))
        time.sleep(6.0)
        for _, simulator, _ in runs:
            # The simulator creates arrivals when it is asked; an exporter slow to start (a busy
            # machine) may not have asked yet: the 6 s of arrivals exist before they stop.
            simulator.tick()
            simulator.config.arrival_rate = 0.0
        for scenario, simulator, _ in runs:
            wait_until(lambda: _all_finished(simulator), 30, what=f"{scenario.name}: every call finished")  # noqa: B023
        failures = []
        began = time.monotonic()
        for scenario, simulator, exporter in runs:
            truth = Counter(simulator.finished_counts())
            try:
                wait_until(lambda: exporter.calls_total() == dict(truth), 180, what="counters equal to the truth")  # noqa: B023
            except AssertionError:
                failures.append(f"{scenario.name}: counted {exporter.calls_total()}, truth {dict(truth)}")
                continue
            print(f"{scenario.name}: converged {time.monotonic() - began:.1f} s after the calls finished")
            codes = {dict(k)["code"] for k, v in exporter.samples("bem_exporter_api_requests_total").items() if v}
            missing_codes = set(scenario.expect_codes) - codes
            if missing_codes:
                failures.append(f"{scenario.name}: no requests answered {missing_codes} (saw {codes})")
            rejected_series = exporter.samples("bem_exporter_rejected_records_total")
            rejected = {dict(k)["record"] for k, v in rejected_series.items() if v}
            if set(scenario.expect_rejected) - rejected:
                failures.append(f"{scenario.name}: nothing rejected as {scenario.expect_rejected} (saw {rejected})")
            crashed = [r for r in log_records(exporter) if r.get("level") in ("error", "critical")]
            if crashed:
                failures.append(f"{scenario.name}: error lines {crashed[:3]}")
            if sum(truth.values()) < 220:
                failures.append(f"{scenario.name}: too few calls to mean anything ({sum(truth.values())})")
        assert not failures, "\n".join(failures)


def _stop(exporter: ExporterProcess) -> None:
    if exporter.process is not None and exporter.process.poll() is None:
        exporter.stop()

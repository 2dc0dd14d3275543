"""The trace backend down for longer than the span backlog holds.

Documented policy (exporter/traces/delivery.py, docs/reliability.md): up to BEM_SPAN_BACKLOG finished
calls wait in memory; beyond that they wait in the state (counted, not exported) and are
fetched from the API again once the backend is back; spans are given up on only past the
retention window, counted in bem_exporter_spans_dropped_total."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from fault_helpers import log_lines, missing_traces, otlp_env, rss_kib
from otlp_receiver import HttpReceiver
from processes import ExporterProcess, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

BACKLOG = 50
OUTAGE_SECONDS = 8.0
RSS_GROWTH_LIMIT_KIB = 40 * 1024
"""What the process may grow by while ~700 calls finish with the backend down: with the
backlog bounded at 50 calls it stays near flat (a backlog of 700 traces would be more)."""


def _all_finished(simulator: Simulator) -> bool:
    return set(simulator.status_counts()) <= {"completed", "failed"}


def _sum(counts: dict[tuple[str, str], int]) -> int:
    return sum(counts.values())


def test_backend_down_longer_than_the_backlog_loses_nothing_and_stays_bounded(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=50, history=300.0, arrival_rate=75.0, speed=40.0, seed=31))
    with SimulatorServer(simulator) as url, HttpReceiver() as receiver:
        env = {**otlp_env(receiver, timeout_ms=1000), "BEM_SPAN_BACKLOG": str(BACKLOG)}
        exporter = ExporterProcess(url, tmp_path / "state.sqlite", env=env)
        try:
            exporter.start()
            assert exporter.process is not None
            wait_until(lambda: len(receiver.spans()) > 100, 30, what="first traces")
            receiver.set_down()
            time.sleep(1.0)
            baseline = rss_kib(exporter.process.pid)
            samples = [baseline]
            finished_before = _sum(simulator.finished_counts())
            started = time.monotonic()
            while time.monotonic() - started < OUTAGE_SECONDS:
                # Counting does not wait on the trace backend: the counters keep reaching what
                # had finished before (within a poll interval and a trace fetch on a quiet
                # machine; the deadline is for a busy one), and below they reach the truth
                # exactly with the backend still down.
                truth = _sum(simulator.finished_counts())
                wait_until(lambda: _sum(exporter.calls_total()) >= truth, 30, what="counters keeping up")  # noqa: B023
                samples.append(rss_kib(exporter.process.pid))
                time.sleep(1.0)
            simulator.config.arrival_rate = 0.0
            wait_until(lambda: _all_finished(simulator), 30, what="every call in flight finished")
            truth_counts = Counter(simulator.finished_counts())
            wait_until(lambda: exporter.calls_total() == dict(truth_counts), 20, what="counters equal to the truth")
            samples.append(rss_kib(exporter.process.pid))
            finished_during = _sum(simulator.finished_counts()) - finished_before
            assert finished_during > 10 * BACKLOG
            backlog = exporter.samples("bem_exporter_export_backlog_calls")[()]
            assert backlog <= BACKLOG
            assert max(samples) - baseline < RSS_GROWTH_LIMIT_KIB, samples
            assert exporter.samples("bem_exporter_span_export_failures_total")[()] > 0

            receiver.set_down(False)
            wait_until(
                lambda: not missing_traces(simulator, receiver), 90, interval=1.0, what="every trace after recovery"
            )
            assert exporter.samples("bem_exporter_spans_dropped_total")[()] == 0
        finally:
            if exporter.process is not None:
                exporter.stop()
    # One warning when export started failing and one line when it recovered, not one per try.
    assert log_lines(exporter, "span export failing; spans wait in the backlog") == 1
    assert log_lines(exporter, "span export recovered") == 1
    print(f"RSS KiB baseline {baseline}, max {max(samples)}, calls finished during the outage {finished_during}")


def test_spans_left_undelivered_by_a_crash_are_sent_after_restart_with_nothing_new(tmp_path: Path) -> None:
    """The first process counts everything while the backend is down and is killed. The
    second has nothing new to count: it must still send what the first left undelivered,
    also when the API answers some of its re-reads with 429 or undecodable records (a
    passing failure to re-read is retried, not taken for a call that is gone)."""
    simulator = Simulator(SimulatorConfig(prefill=300, history=900.0, arrival_rate=0.0, speed=50.0, seed=32))
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as url, HttpReceiver() as receiver:
        env = {**otlp_env(receiver, timeout_ms=1000), "BEM_SPAN_BACKLOG": str(BACKLOG)}
        receiver.set_down()
        with ExporterProcess(url, state, env=env) as first:  # killed on the way out
            wait_until(lambda: _all_finished(simulator), 30, what="every call in flight finished")
            truth = Counter(simulator.finished_counts())
            wait_until(lambda: first.calls_total() == dict(truth), 30, what="counters equal to the truth")
        assert not receiver.spans()
        receiver.set_down(False)
        simulator.config.faults.rate_429 = 0.3
        simulator.config.faults.malformed_rate = 0.3
        second = ExporterProcess(url, state, env=env).start(ready=False)
        try:
            wait_until(
                lambda: not missing_traces(simulator, receiver), 60, interval=1.0, what="every trace after restart"
            )
            assert second.calls_total() == dict(truth)  # restored, not counted again
            assert second.samples("bem_exporter_spans_dropped_total")[()] == 0
        finally:
            second.stop()


def test_spans_are_given_up_only_past_the_retention_window_and_counted(tmp_path: Path) -> None:
    """With the backend down for longer than the retention window (BEM_LOOKBACK, 4 s here),
    spans are given up on and counted as dropped: every counted call's trace either arrived
    or is in bem_exporter_spans_dropped_total, nothing vanishes silently."""
    simulator = Simulator(SimulatorConfig(arrival_rate=0.0, speed=50.0, seed=33))
    with SimulatorServer(simulator) as url, HttpReceiver() as receiver:
        env = {**otlp_env(receiver, timeout_ms=500), "BEM_SPAN_BACKLOG": str(BACKLOG), "BEM_LOOKBACK": "4s"}
        receiver.set_down()
        exporter = ExporterProcess(url, tmp_path / "state.sqlite", env=env)
        try:
            exporter.start()
            # 30 calls a second for 4 s, once the exporter is up: a busy machine can take more
            # than the 4 s window to start it, and a first poll does not look further back.
            for _ in range(120):
                simulator.create_call()
                time.sleep(1 / 30)
            wait_until(lambda: _all_finished(simulator), 30, what="every call finished")
            truth = Counter(simulator.finished_counts())
            wait_until(lambda: exporter.calls_total() == dict(truth), 20, what="counters equal to the truth")
            # Past the window (4 s + the 1 s poll interval) the waiting spans are given up.
            wait_until(lambda: exporter.samples("bem_exporter_spans_dropped_total")[()] > 0, 15, what="spans given up")
            receiver.set_down(False)
            counted = _sum(truth)

            def accounted() -> bool:
                arrived = len({span["trace_id"] for span in receiver.spans() if span["parent"] is None})
                dropped = exporter.samples("bem_exporter_spans_dropped_total")[()]
                return arrived + dropped == counted

            try:
                wait_until(accounted, 30, what="every counted call's trace arrived or counted as dropped")
            except AssertionError:
                arrived = len({span["trace_id"] for span in receiver.spans() if span["parent"] is None})
                dropped = exporter.samples("bem_exporter_spans_dropped_total")[()]
                raise AssertionError(f"arrived {arrived} + dropped {dropped} != counted {counted}") from None
        finally:
            if exporter.process is not None:
                exporter.stop()
    assert counted > 50

"""Load: the exporter under a steady stream of calls, measured by `bench/soak.py`.

The short soak runs by default (under a minute) and asserts what no busy machine can change:
exact counts, every trace delivered, memory flat, the state bounded. How fresh the traces are
is a figure of the machine, printed here and measured by `bench/soak.py` and `bench/run.py`
(target: p99 within a poll interval + 1 s). The long one (>= 100 calls/s for 10 minutes with
~10,000 calls in flight) is marked `soak` and asserts that target too: run it on a quiet
machine, `pytest -m soak tests/test_soak.py`, or `python bench/soak.py` for the figures alone.
See docs/reliability.md for measured figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from soak import Figures, run_soak, table

MIB = 1024


def _assert_healthy(figures: Figures, rss_growth_mib: float, state_mb: float) -> None:
    print("\n" + table(figures))
    f = figures
    # Memory flat: the last quarter's mean within a few MiB of the second quarter's.
    assert f.rss_kib_mean_last_quarter - f.rss_kib_mean_second_quarter < rss_growth_mib * MIB, table(f)
    # The state holds the retention window, not the whole run (SQLite file plus WAL).
    assert f.state_bytes_max < state_mb * 1e6, table(f)
    # Delivered: the trace of every call that finished after the warm-up arrived.
    assert f.freshness_calls > 0.5 * f.calls_finished, table(f)
    assert f.late_traces == 0, table(f)


def _assert_fresh(figures: Figures) -> None:
    """Finished -> trace arrived (after being counted) within a poll interval + 1 s at p99: a
    figure of the machine as much as of the exporter, asserted only by the long soak."""
    assert figures.freshness_p99 <= figures.poll_interval + 1.0, table(figures)


def test_short_soak(tmp_path: Path) -> None:
    """35 s at 50 calls/s, each call a DAG of several function calls, finishing within
    seconds (speed 20); a 30 s retention window so that pruning happens during the run."""
    figures = run_soak(
        seconds=35.0,
        rate=50.0,
        speed=20.0,
        poll_interval=2.0,
        lookback=30.0,
        sample_every=2.0,
        warmup=10.0,
        converge=True,
        workdir=tmp_path,
    )
    assert figures.exact, table(figures)
    assert figures.calls_finished > 1400
    _assert_healthy(figures, rss_growth_mib=8.0, state_mb=12.0)


@pytest.mark.soak
def test_long_soak(tmp_path: Path) -> None:
    """100 calls/s for 10 minutes; calls last ~2 minutes (speed 0.3), so ~10,000 are in
    flight and re-read every cycle; a 3-minute retention window."""
    figures = run_soak(
        seconds=600.0, rate=100.0, speed=0.3, poll_interval=5.0, lookback=180.0, sample_every=5.0, workdir=tmp_path
    )
    assert figures.in_flight_max >= 10_000, table(figures)
    _assert_healthy(figures, rss_growth_mib=16.0, state_mb=40.0)
    _assert_fresh(figures)

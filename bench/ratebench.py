"""Adaptive-rate benchmark: a first-start backfill against a rate limit the exporter is not told.

    python bench/ratebench.py --limit 20                    # one case, with Retry-After
    python bench/ratebench.py --limit 20 --no-retry-after   # the same limit, 429s without it
    python bench/ratebench.py --limit 5 --limit 20 --limit 100 --both   # every case, in turn

The simulator runs in this process (a background thread) with a token-bucket limit per API key
(`Faults.rate_limit`, burst `--burst-seconds` x the limit, at least 1) and `--calls` finished
calls inside the lookback; `bem-exporter once` runs in its own process with `BEM_MAX_RPS` far
above every limit and no spans sent (`OTEL_TRACES_EXPORTER=none`). The simulator records when
each request arrived and how it was answered, so the figures are what bem would see:

- `share_of_limit`: requests answered (not 429) per second, from the first request to the last,
  over the limit. The ramp from the initial 5 requests/s is part of it.
- `share_429`: requests answered 429 over all requests.
- `backfill_s`: first request to last; `wall_s` adds the process's start and shutdown.
- `decisions`: the adaptive rate's decisions (its info log lines), by kind.
Prints one JSON object per case (a list with several).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

CEILING_RPS = 1000
"""BEM_MAX_RPS: far above every limit benchmarked, so the limit is found, not configured."""
LATENCY = 0.02
"""Seconds the simulator adds to each answer (a nearby API)."""
SHARE_GOAL = 0.90
SHARE_429_GOAL = 0.02


def _env(url: str, state: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    base.update(
        {
            "BEM_API_URL": url,
            "BEM_API_KEY": "sim-key",
            "BEM_LOOKBACK": "3h",
            "BEM_MAX_RPS": str(CEILING_RPS),
            "BEM_STATE_PATH": str(state),
            "BEM_LOG_LEVEL": "info",  # the rate's decisions are info lines, counted below
            "BEM_LOG_FORMAT": "json",
            "OTEL_TRACES_EXPORTER": "none",
        }
    )
    return base


def run_case(limit: float, retry_after: bool, calls: int, burst_seconds: float, seed: int) -> dict[str, Any]:
    """One backfill against `limit` requests/s (0: no limit, the machine's own pace)."""
    from exporter.simulator import Faults, Simulator, SimulatorConfig, SimulatorServer

    burst = max(1.0, limit * burst_seconds)
    faults = Faults(rate_limit=limit or None, rate_limit_burst=burst, rate_limit_retry_after=retry_after)
    config = SimulatorConfig(
        seed=seed, arrival_rate=0.0, prefill=calls, history=3600.0, speed=1000.0, latency=LATENCY, faults=faults
    )
    sim = Simulator(config)
    with SimulatorServer(sim) as url, tempfile.TemporaryDirectory(prefix="bem-ratebench-") as tmp:
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "exporter", "once"],
            env=_env(url, Path(tmp) / "state.db"),
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - began
    return _figures(sim, limit, burst, retry_after, calls, wall, done)


def _figures(
    sim: Any, limit: float, burst: float, retry_after: bool, calls: int, wall: float, done: Any
) -> dict[str, Any]:
    starts = sorted(sim.request_starts)
    requests = sum(sim.requests.values())
    throttled = sum(n for (_, status), n in sim.responses.items() if status == 429)
    span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    answered_rate = (requests - throttled) / span if span else 0.0
    return {
        "limit_rps": limit,
        "burst": burst,
        "retry_after": retry_after,
        "calls": calls,
        "requests": requests,
        "throttled": throttled,
        "share_429": throttled / requests if requests else None,
        "answered_rps": answered_rate,
        "share_of_limit": answered_rate / limit if limit else None,
        "peak_rps_1s": _peak_per_second(starts),
        "per_second": _per_second(starts),
        "backfill_s": span,
        "wall_s": wall,
        "decisions": _decisions(done.stderr),
        "exit": done.returncode,
        "summary": done.stdout.strip().splitlines()[-1:] or done.stderr.strip().splitlines()[-3:],
        "goals_met": bool(limit and requests)
        and answered_rate / limit >= SHARE_GOAL
        and throttled / requests <= SHARE_429_GOAL,
    }


def _decisions(log: str) -> dict[str, int]:
    """The adaptive rate's decisions in the exporter's JSON log, by kind."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("logger") == "exporter.bem.ratelimit":
            kind = str(record.get("decision"))
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _per_second(starts: list[float]) -> list[int]:
    """Requests that arrived in each whole second from the first (the ramp and the saw-tooth)."""
    if not starts:
        return []
    counts = [0] * (int(starts[-1] - starts[0]) + 1)
    for moment in starts:
        counts[int(moment - starts[0])] += 1
    return counts


def _peak_per_second(starts: list[float]) -> int:
    """Most requests that arrived within any one second (a sliding window)."""
    peak, first = 0, 0
    for last, moment in enumerate(starts):
        while moment - starts[first] >= 1.0:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def run(limits: list[float], modes: list[bool], calls: int, burst_seconds: float, seed: int) -> list[dict[str, Any]]:
    results = []
    for limit in limits:
        for retry_after in modes:
            print(f"[bench] adaptive rate: limit {limit:g}/s, Retry-After {retry_after}", file=sys.stderr)
            results.append(run_case(limit, retry_after, calls, burst_seconds, seed))
            print(json.dumps(results[-1]), file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--limit", type=float, action="append", help="simulator limit, requests/s (repeatable; 0: none, for reference)"
    )
    parser.add_argument("--calls", type=int, default=5000, help="calls in the lookback (5000)")
    parser.add_argument("--burst-seconds", type=float, default=1.0, help="bucket size in seconds of the limit (1)")
    parser.add_argument("--no-retry-after", action="store_true", help="429s without Retry-After")
    parser.add_argument("--both", action="store_true", help="each limit with and without Retry-After")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    modes = [True, False] if args.both else [not args.no_retry_after]
    print(json.dumps(run(args.limit or [20.0], modes, args.calls, args.burst_seconds, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

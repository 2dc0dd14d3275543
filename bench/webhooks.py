"""Webhooks benchmark: freshness (a call's finishedAt to its counts being visible) and API
requests per call, with and without webhooks, at poll intervals of 15 s and 60 s.

    python bench/webhooks.py                 # 4 runs: 15 s and 60 s, without and with (about 12 minutes)
    python bench/webhooks.py --quick         # shorter runs (a smoke of the method, not figures)

Real processes on loopback: the exporter runs `bem-exporter run`'s loop in its own process
(`bench/worker.py live`, which records when each call's counts were published), spans go to
the OTLP receiver process (`bench/receiver.py`), and the bem API simulator serves HTTP from
this process, so its truth is at hand. With webhooks, the simulator's functions of the watched
workflows are subscribed (output and errors, as `subscribe` plans) to the exporter's listener
once it answers, and the simulator delivers each event, signed, as it is created (the call's
last event 0.02 to 0.4 s before it reads finished, as bem's can; bem's network delay is not
modelled). The simulator runs at speed 10 (calls finish in seconds) with new calls arriving at
`--rate` per second.

Counted: calls that finished after the exporter's first cycle plus one second (a call that
finished before waits for the first cycle, not for the loop), until the end of the run minus
one poll interval (so that every counted call had its chance). Prints a table and writes
`bench/results/webhooks-<name>.json`; the figures are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from exporter.bem.subscriptions import OUTPUT_TYPE  # noqa: E402
from exporter.simulator import DEMO_WEBHOOK_SECRET, Simulator, SimulatorConfig, SimulatorServer  # noqa: E402

RESULTS = BENCH / "results"
SECRET = DEMO_WEBHOOK_SECRET
WORKFLOWS = ["invoice-intake", "claims-triage", "contract-review"]
CALL_ENDPOINTS = ("GET /v3/calls", "GET /v3/calls/{callID}/trace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def subscribe(api: str, hook: str) -> int:
    """Every function of the watched workflows, its output and its errors, delivered to `hook`:
    what `bem-exporter subscribe --url HOOK --apply` creates (done over the API here, quietly)."""
    with httpx.Client(base_url=api, headers={"x-api-key": "sim-key"}, timeout=30) as client:
        functions = client.get("/v3/functions", params={"limit": "100", "workflowNames": ",".join(WORKFLOWS)})
        made = 0
        for function in functions.json()["functions"]:
            for kind in (OUTPUT_TYPE.get(function["type"]), "error"):
                if kind is None:
                    continue
                name = function["functionName"]
                body = {"name": f"bench {kind}", "type": kind, "functionName": name, "webhookURL": hook}
                client.post("/v3/subscriptions", json=body).raise_for_status()
                made += 1
    return made


def wait_listening(url: str, worker: subprocess.Popen[str]) -> None:
    """Until the exporter's webhook listener answers (a GET is 405 there)."""
    while worker.poll() is None:
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.1)


def one_run(
    poll_interval: float, webhooks: bool, duration: float, rate: float, seed: int, workdir: Path
) -> dict[str, Any]:
    simulator = Simulator(SimulatorConfig(seed=seed, arrival_rate=rate, speed=10.0))
    server = SimulatorServer(simulator)
    api = server.start()
    receiver = subprocess.Popen([sys.executable, str(BENCH / "receiver.py")], cwd=ROOT, stdout=subprocess.PIPE)
    assert receiver.stdout is not None
    otlp = f"http://127.0.0.1:{int(receiver.stdout.readline())}/v1/traces"
    port = free_port()
    hook = f"http://127.0.0.1:{port}/webhook"
    config = {
        "api_url": api,
        "workflows": WORKFLOWS,
        "state_path": str(workdir / f"state-{time.monotonic_ns()}.sqlite"),
        "lookback": "10m",
        "poll_interval": poll_interval,
        "otlp_endpoint": otlp,
        "max_rps": 1000,
        "duration": duration,
        **({"webhook_listen": f"127.0.0.1:{port}", "webhook_secret": SECRET} if webhooks else {}),
    }
    path = workdir / f"live-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    try:
        worker = subprocess.Popen(
            [sys.executable, str(BENCH / "worker.py"), "live", str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if webhooks:
            wait_listening(hook, worker)
            subscribe(api, hook)
        out, err = worker.communicate(timeout=duration + 120)
        if worker.returncode != 0:
            raise SystemExit(f"worker failed ({worker.returncode}):\n{err[-4000:]}")
        result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    finally:
        receiver.terminate()
        receiver.wait(timeout=20)
        server.stop()
    warm = result["started"] + poll_interval + 1.0
    cold = result["started"] + duration - poll_interval
    lags = [lag for finished, lag in result["counter_lags"] if warm <= finished <= cold]
    # The calls endpoints only: the subscriptions made above and the quality reads are not
    # what a call costs.
    requests = sum(count for endpoint, count in simulator.requests.items() if endpoint in CALL_ENDPOINTS)
    counted = len(result["counter_lags"])
    return {
        "poll_interval_s": poll_interval,
        "webhooks": webhooks,
        "duration_s": duration,
        "arrival_rate": rate,
        "calls_measured": len(lags),
        "p50_s": round(percentile(lags, 0.50) or 0.0, 3),
        "p99_s": round(percentile(lags, 0.99) or 0.0, 3),
        "max_s": round(max(lags, default=0.0), 3),
        "calls_counted": counted,
        "api_requests": requests,
        "api_requests_by_endpoint": dict(simulator.requests),
        "api_requests_per_call": round(requests / counted, 2) if counted else None,
        "deliveries": {str(outcome): count for outcome, count in simulator.deliveries.counts().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: checks the method, no figures")
    parser.add_argument("--rate", type=float, default=2.0, help="new calls per second (2)")
    parser.add_argument("--intervals", default="15,60", help="poll intervals to run, seconds (15,60)")
    parser.add_argument("--name", default="latest")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    intervals = [float(value) for value in args.intervals.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bem-webhooks-bench-") as scratch:
        for interval in intervals:
            duration = interval * 2 + 10 if args.quick else max(180.0, interval * 4 + 20)
            for webhooks in (False, True):
                print(
                    f"poll interval {interval:g} s, webhooks {'on' if webhooks else 'off'}: {duration:g} s", flush=True
                )
                runs.append(one_run(interval, webhooks, duration, args.rate, args.seed, Path(scratch)))
    result = {"name": args.name, "machine": machine(), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"webhooks-{args.name}.json").write_text(json.dumps(result, indent=2))
    print(f"\n{'interval':>8} {'webhooks':>8} {'calls':>6} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'req/call':>8}")
    for run in runs:
        print(
            f"{run['poll_interval_s']:>8g} {'on' if run['webhooks'] else 'off':>8} {run['calls_measured']:>6} "
            f"{run['p50_s']:>7} {run['p99_s']:>7} {run['max_s']:>7} {run['api_requests_per_call']!s:>8}"
        )


def machine() -> dict[str, Any]:
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0)), "load": load}


if __name__ == "__main__":
    main()

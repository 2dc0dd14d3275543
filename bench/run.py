"""bem-exporter benchmark: CPU per function call against the floor, API requests per call,
memory at 20k and 200k calls, backfill against the concurrency ceiling, and freshness.

    python bench/run.py                  # the full run (about 10 minutes on 2 cores)
    python bench/run.py --quick          # 2,000 calls, 20,000 for memory, short live run
    python bench/run.py --calls 200 --large 400 --backfill-calls 200 --live 8 --name smoke

Every figure comes from real processes on loopback: the bem API simulator
(`bem-exporter simulate`) and an OTLP/HTTP receiver (`bench/receiver.py`) each run in their own
process, the exporter in a third (`bench/worker.py`), whose CPU alone is measured
(`getrusage`, user + system, from the start of the poll cycle until the last span was
accepted). Prints a table and writes everything to `bench/results/<name>.json`.
See docs/performance.md for what the figures mean and what limits each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import baseline  # bench/baseline.py
import footprint  # bench/footprint.py
import httpx
import ratebench  # bench/ratebench.py
import scrape  # bench/scrape.py: this directory is on sys.path when run as a script
import state  # bench/state.py

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

WORKFLOWS = ["invoice-intake", "claims-triage", "contract-review"]
"""The simulator's workflows whose calls have 5 to 10 function calls (a few fail early, with
fewer); the exporter watches only these (`BEM_WORKFLOWS`), so the listing is filtered by the
API, as a user's would be."""
WORKFLOW_SHARE = 0.53
"""About this share of the simulator's calls belong to WORKFLOWS (seeded, so stable)."""
SPEED = 100.0
"""Simulator time multiplier for the finished workloads: every call finishes within 3.6 s."""
MAX_RPS = 100_000
"""BEM_MAX_RPS for the benchmark: high enough never to limit (the default, 200, is only a
ceiling for the real API, but it would cap a fast backfill)."""
MAX_CONCURRENCY = 16
"""BEM_MAX_CONCURRENCY (the default)."""

SCRAPE_P99_GOAL_MS = 50.0
"""Reported next to the scrape figures, not a verdict: the load other processes put on a
shared machine moves it more than the exporter does."""

HTTP_CLIENTS = ("old layer", "httpx", "httpx-aiohttp")
"""What the transport comparison runs: the home-made layer as it was (a git revision's tree),
httpx's own transport (what the exporter ships), and httpx-aiohttp (aiohttp's pool under httpx)."""
SHIPPED_CLIENT = "httpx"
ONCE_RSS_GOAL_MB = 70.0
CALLS_PER_CORE_GOAL = 300.0

TARGETS = {
    "cpu_ratio": 1.2,
    "requests_per_call": 1.05,
    "backfill_share": 0.80,
    "rss_growth": 0.10,
    "freshness_slack_s": 1.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env(root: Path = ROOT) -> dict[str, str]:
    """The environment of a child process running the exporter of the tree at `root`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
    base["PYTHONPATH"] = str(root) + os.pathsep + base.get("PYTHONPATH", "")
    return base


class Simulator:
    """`bem-exporter simulate` in its own process."""

    def __init__(self, *, prefill: int, rate: float, latency: float, speed: float, history: str, seed: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "exporter", "simulate",
            "--listen", f"127.0.0.1:{self.port}", "--prefill", str(prefill), "--rate", str(rate),
            "--latency", str(latency), "--speed", str(speed), "--history", history, "--seed", str(seed),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.client = httpx.Client(base_url=self.url, headers={"x-api-key": "sim-key"}, timeout=60)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"simulator exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                self.client.get("/v3/calls", params={"limit": "1"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("simulator did not start") from None
                time.sleep(0.2)

    def total(self, statuses: str | None = None) -> int:
        params = {"limit": "1", "workflowNames": ",".join(WORKFLOWS)}
        if statuses:
            params["statuses"] = statuses
        return int(self.client.get("/v3/calls", params=params).json()["totalCount"])

    def wait_finished(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.total("pending,running") and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=20)


class Receiver:
    """`bench/receiver.py` in its own process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(BENCH / "receiver.py")], env=env(), cwd=ROOT, stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=60).json())

    def reset(self) -> None:
        httpx.post(f"http://127.0.0.1:{self.port}/reset", timeout=60).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def py_spy_binary() -> str:
    """py-spy from this environment (`pip install py-spy` puts it beside the interpreter), else PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def worker(
    mode: str, config: dict[str, Any], workdir: Path, py_spy: str | None = None, root: Path = ROOT
) -> dict[str, Any]:
    """`bench/worker.py` of the tree at `root` (this one, or a baseline's), with its exporter."""
    path = workdir / f"{mode}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    command = [sys.executable, str(root / "bench" / "worker.py"), mode, str(path)]
    if py_spy:
        # Every thread, native frames left out; collapsed stacks (flamegraph.pl / speedscope input).
        record = ["record", "--format", "raw", "--gil", "--rate", "250", "--output", py_spy, "--"]
        command = [py_spy_binary(), *record, *command]
    done = subprocess.run(
        command,
        env=env(root),
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"worker {mode} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1]))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- phases ----------------------------------------------------------------------------------------


def finished_workload(
    calls: int,
    *,
    latency: float,
    seed: int,
    workdir: Path,
    floor: bool = False,
    profile: str | None = None,
    py_spy: str | None = None,
    state_url: str | None = None,
    http_client: str = SHIPPED_CLIENT,
) -> dict[str, Any]:
    """Backfill `calls` finished calls (about) from a fresh state (a SQLite file, or the
    PostgreSQL database at `state_url`), against a receiver."""
    prefill = int(calls / WORKFLOW_SHARE) + 1
    simulator = Simulator(prefill=prefill, rate=0, latency=latency, speed=SPEED, history="2h", seed=seed)
    receiver = Receiver()
    try:
        simulator.wait_finished()
        available = simulator.total()
        config = {
            "api_url": simulator.url,
            "workflows": WORKFLOWS,
            "state_path": str(workdir / f"state-{time.monotonic_ns()}.sqlite"),
            "state_url": state_url,
            "lookback": "3h",
            "otlp_endpoint": receiver.endpoint,
            "max_rps": MAX_RPS,
            "max_concurrency": MAX_CONCURRENCY,
            "floor": floor and not py_spy,  # the profile is of the exporter alone
            "profile": profile,
            "http_client": http_client,
        }
        result = worker("throughput", config, workdir, py_spy)
        stats = receiver.stats()
        result["available_calls"] = available
        result["received"] = {key: value for key, value in stats.items() if key != "lags"}
    finally:
        receiver.stop()
        simulator.stop()
    return result


def state_cpu(calls: int, seed: int, workdir: Path) -> dict[str, Any]:
    """CPU per function call of the same backfill with the state in SQLite, then in
    PostgreSQL (bench/state.py's server, production durability), one after the other."""
    out: dict[str, Any] = {}
    with state.DurablePostgres() as server:
        for engine, url in (("sqlite", None), ("postgresql", server.create_database())):
            before = server.cpu_seconds()
            run = finished_workload(calls, latency=0.0, seed=seed, workdir=workdir, state_url=url)
            figures = throughput_figures(run)
            server_cpu = server.cpu_seconds() - before if url else 0.0
            keys = ("calls", "function_calls", "cpu_us_per_function_call", "cpu_us_per_call", "wall_s", "complete")
            out[engine] = {key: figures[key] for key in keys}
            out[engine]["server_cpu_us_per_function_call"] = server_cpu / figures["function_calls"] * 1e6
    return out


def live_run(
    duration: float, rate: float, poll_interval: float, seed: int, workdir: Path, http_client: str = SHIPPED_CLIENT
) -> dict[str, Any]:
    """`run` against a simulator with arrivals: finished -> counted and -> span received."""
    simulator = Simulator(prefill=0, rate=rate, latency=0.0, speed=6.0, history="1m", seed=seed)
    receiver = Receiver()
    try:
        config = {
            "api_url": simulator.url,
            "workflows": WORKFLOWS,
            "state_path": str(workdir / f"state-live-{time.monotonic_ns()}.sqlite"),
            "lookback": "10m",
            "poll_interval": poll_interval,
            "otlp_endpoint": receiver.endpoint,
            "max_rps": MAX_RPS,
            "max_concurrency": MAX_CONCURRENCY,
            "duration": duration,
            "http_client": http_client,
        }
        result = worker("live", config, workdir)
        stats = receiver.stats()
    finally:
        receiver.stop()
        simulator.stop()
    # Calls that finished before the exporter's first cycle wait for it, not for the loop.
    warm = result["started"] + poll_interval + 1.0
    counted = [lag for finished, lag in result["counter_lags"] if finished >= warm]
    exported = [lag_ns / 1e9 for end_ns, lag_ns in stats["lags"] if end_ns / 1e9 >= warm]
    return {
        "ok": result["ok"],
        "duration_s": duration,
        "arrival_rate": rate,
        "poll_interval_s": poll_interval,
        "counted_calls": len(counted),
        "exported_calls": len(exported),
        "counter_p50_s": percentile(counted, 0.5),
        "counter_p99_s": percentile(counted, 0.99),
        "counter_max_s": max(counted) if counted else None,
        "span_p50_s": percentile(exported, 0.5),
        "span_p99_s": percentile(exported, 0.99),
        "span_max_s": max(exported) if exported else None,
    }


def transport_comparison(calls: int, rounds: int, revision: str, seed: int, workdir: Path) -> dict[str, Any]:
    """The same backfill of `calls` finished calls (from a fresh state each time, one simulator
    and receiver for all) with each of HTTP_CLIENTS, alternated round by round so that each
    meets the same load: CPU per function call, calls per CPU-second and peak RSS."""
    prefill = int(calls / WORKFLOW_SHARE) + 1
    simulator = Simulator(prefill=prefill, rate=0, latency=0.0, speed=SPEED, history="2h", seed=seed)
    receiver = Receiver()
    runs: dict[str, list[dict[str, Any]]] = {client: [] for client in HTTP_CLIENTS}
    try:
        simulator.wait_finished()
        available = simulator.total()
        with baseline.checkout(revision) as old_tree:
            for _ in range(rounds):
                for client in HTTP_CLIENTS:
                    receiver.reset()
                    config = {
                        "api_url": simulator.url, "workflows": WORKFLOWS, "lookback": "3h",
                        "state_path": str(workdir / f"state-{time.monotonic_ns()}.sqlite"),
                        "otlp_endpoint": receiver.endpoint, "max_rps": MAX_RPS, "max_concurrency": MAX_CONCURRENCY,
                        "http_client": client,
                    }  # fmt: skip
                    run = worker("throughput", config, workdir, root=old_tree if client == "old layer" else ROOT)
                    run["available_calls"] = available
                    run["received"] = {k: v for k, v in receiver.stats().items() if k != "lags"}
                    runs[client].append(throughput_figures(run))
    finally:
        receiver.stop()
        simulator.stop()
    clients = {client: summary(figures) for client, figures in runs.items()}
    return {"calls": calls, "rounds": rounds, "old_layer": revision, "clients": clients}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one client's runs, and every run's figures."""
    keys = ("cpu_us_per_function_call", "cpu_us_per_call", "calls_per_cpu_s", "peak_rss_mb")
    out: dict[str, Any] = {key: percentile([run[key] for run in runs], 0.5) for key in keys}
    out["runs"] = {key: [round(run[key], 1) for run in runs] for key in keys}
    out["complete"] = all(run["complete"] for run in runs)
    out["function_calls"] = runs[0]["function_calls"]
    return out


def once_footprint(calls: int, revision: str, seed: int, workdir: Path) -> dict[str, Any]:
    """Peak RSS of `bem-exporter once` backfilling `calls` finished calls of every workflow and
    exporting their spans over OTLP/HTTP, now and at `revision`, measured from outside."""
    simulator = Simulator(prefill=calls, rate=0, latency=0.0, speed=SPEED, history="2h", seed=seed)
    receiver = Receiver()
    out: dict[str, Any] = {"calls": calls, "old_layer": revision}
    try:
        simulator.wait_finished()
        with baseline.checkout(revision) as old_tree:
            for name, tree in (("before", old_tree), ("now", ROOT)):
                receiver.reset()
                state_path = workdir / f"state-once-{time.monotonic_ns()}.sqlite"
                run = footprint.once(tree, simulator.url, receiver.endpoint, state_path)
                stats = receiver.stats()
                run["call_spans"] = stats["call_spans"]
                run["function_calls"] = stats["spans"] - stats["call_spans"]
                out[name] = run
    finally:
        receiver.stop()
        simulator.stop()
    return out


# -- figures -----------------------------------------------------------------------------------------


def throughput_figures(run: dict[str, Any]) -> dict[str, Any]:
    calls = run["counted"]
    received = run["received"]
    function_calls = received["spans"] - received["call_spans"]
    cpu_s = run["cpu_user_s"] + run["cpu_sys_s"]
    requests = sum(run["requests"].values())
    figures: dict[str, Any] = {
        "calls": calls,
        "function_calls": function_calls,
        "function_calls_per_call": function_calls / calls if calls else None,
        "spans": received["spans"],
        "span_events": received["span_events"],
        "otlp_bytes": received["bytes"],
        "otlp_requests": received["requests"],
        "cpu_s": cpu_s,
        "cpu_user_s": run["cpu_user_s"],
        "cpu_sys_s": run["cpu_sys_s"],
        "wall_s": run["wall_s"],
        "cpu_us_per_function_call": cpu_s / function_calls * 1e6 if function_calls else None,
        "cpu_us_per_call": cpu_s / calls * 1e6 if calls else None,
        "calls_per_cpu_s": calls / cpu_s if cpu_s else None,
        "spans_per_cpu_s": received["spans"] / cpu_s if cpu_s else None,
        "api_requests": run["requests"],
        "api_requests_total": requests,
        "api_requests_per_call": requests / calls if calls else None,
        "api_requests_minimum": calls + calls // 100 + 1,
        "api_requests_per_call_minimum": (calls + calls // 100 + 1) / calls if calls else None,
        "peak_rss_mb": run["peak_rss_bytes"] / 2**20,
        "rss_before_mb": run["rss_before_bytes"] / 2**20,
        "rss_after_mb": run["rss_after_bytes"] / 2**20,
        "rss_after_gc_mb": run["rss_after_gc_bytes"] / 2**20,
        "max_span_backlog": run.get("max_span_backlog"),
        "complete": run["ok"] and calls == run["available_calls"] and received["call_spans"] >= calls,
    }
    floor = run.get("floor")
    if floor:
        floor_fc = floor["function_calls"]
        per_fc = {
            key.removesuffix("_s"): floor[key] / floor_fc * 1e6
            for key in (
                "json_loads_s",
                "decode_s",
                "build_s",
                "encode_s",
                "total_s",
                "encode_direct_s",
                "total_direct_s",
            )
        }
        figures["floor_us_per_function_call"] = per_fc
        figures["floor_otlp_bytes"] = floor["otlp_bytes"]
        figures["floor_calls"] = floor["calls"]
        figures["cpu_ratio"] = figures["cpu_us_per_function_call"] / per_fc["total"]
        figures["cpu_ratio_direct"] = figures["cpu_us_per_function_call"] / per_fc["total_direct"]
    return figures


def machine() -> dict[str, Any]:
    model = cores = None
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in lines if ":" in line}
        model, cores = fields.get("Model name"), fields.get("CPU(s)")
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor(),
        "cpus": int(cores) if cores else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    main, backfill, live = (result.get(k) for k in ("throughput", "backfill", "freshness"))
    out: dict[str, bool | None] = {}
    out["cpu_within_1_2x_floor"] = main["cpu_ratio"] <= TARGETS["cpu_ratio"] if main and "cpu_ratio" in main else None
    out["requests_per_call_le_1_05"] = main["api_requests_per_call"] <= TARGETS["requests_per_call"] if main else None
    out["backfill_ge_80pct_ceiling"] = backfill["share_of_ceiling"] >= TARGETS["backfill_share"] if backfill else None
    out["rss_flat_within_10pct"] = result["memory"]["flat"] if result.get("memory") else None
    if live and live["span_p99_s"] is not None and live["counter_p99_s"] is not None:
        limit = live["poll_interval_s"] + TARGETS["freshness_slack_s"]
        out["freshness_p99_le_interval_plus_1s"] = max(live["span_p99_s"], live["counter_p99_s"]) <= limit
    else:
        out["freshness_p99_le_interval_plus_1s"] = None
    transports, once = result.get("transports"), result.get("once")
    shipped = transports["clients"][SHIPPED_CLIENT] if transports else None
    out["calls_per_core_gt_300"] = shipped["calls_per_cpu_s"] > CALLS_PER_CORE_GOAL if shipped else None
    out["once_peak_rss_le_70mib"] = once["now"]["peak_rss_mb"] <= ONCE_RSS_GOAL_MB if once else None
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def scrape_rows(scraped: dict[str, Any] | None, who: str = "") -> list[tuple[str, str, str]]:
    if not scraped:
        return []
    rows = [
        (f"scrape latency{who}, {label} ({scraped['series']:,} series, {scraped['scrapers']} scrapers)",
         f"p50 {fmt(scraped[label]['p50_ms'])} ms, p99 {fmt(scraped[label]['p99_ms'])} ms",
         f"{scraped[label]['scrapes']:,} scrapes; goal p99 <= {SCRAPE_P99_GOAL_MS:g} ms")
        for label in ("openmetrics_gzip", "text")
    ]  # fmt: skip
    rows.append(
        (f"render per commit{who} (text / OpenMetrics)",
         f"{fmt(scraped['render_text_ms'])} / {fmt(scraped['render_openmetrics_ms'])} ms",
         f"{scraped['commits']} commits, one every {scraped['commit_every_s']:g} s, each changing "
         f"{scraped['touch']:.0%} of the workflows; "
         f"text body {scraped['text_mb']:.1f} MB")
    )  # fmt: skip
    return rows


def transport_rows(figures: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not figures:
        return []
    rows = []
    for client, got in figures["clients"].items():
        runs = got["runs"]
        goal = f"; goal > {CALLS_PER_CORE_GOAL:g}" if client == SHIPPED_CLIENT else ""
        rows += [
            (f"CPU per function call, {client}", f"{fmt(got['cpu_us_per_function_call'])} µs",
             f"median of {figures['rounds']} alternated runs: {runs['cpu_us_per_function_call']}"
             + (f" (tree of {figures['old_layer']})" if client == "old layer" else "")),
            (f"  calls/s per core, {client}", fmt(got["calls_per_cpu_s"], 0),
             f"runs {runs['calls_per_cpu_s']}{goal}"),
            (f"  peak RSS, {client}", f"{fmt(got['peak_rss_mb'])} MiB",
             f"{figures['calls']:,} calls; runs {runs['peak_rss_mb']}"),
        ]  # fmt: skip
    return rows


def once_rows(figures: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not figures:
        return []
    return [
        (f"once peak RSS ({name}), from outside", f"{fmt(run['peak_rss_mb'])} MiB",
         f"{run['call_spans']:,} calls, {run['function_calls']:,} function calls over OTLP/HTTP; "
         f"CPU {fmt(run['cpu_s'], 2)} s" + (f"; goal <= {ONCE_RSS_GOAL_MB:g} MiB" if name == "now" else
                                            f" (tree of {figures['old_layer']})"))
        for name, run in (("before", figures["before"]), ("now", figures["now"]))
    ]  # fmt: skip


def state_rows(figures: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if not figures:
        return []
    rows = []
    for engine in ("sqlite", "postgresql"):
        for run in figures[engine]:
            server = f", server CPU {fmt(run['server_cpu_ms_per_commit'], 2)} ms" if engine == "postgresql" else ""
            rows.append(
                (f"state commits, {engine}, {run['batch']} calls each", f"{fmt(run['commits_per_s'], 0)} commits/s",
                 f"{fmt(run['wall_ms_per_commit'], 2)} ms each, "
                 f"exporter CPU {fmt(run['exporter_cpu_ms_per_commit'], 2)} ms{server}")
            )  # fmt: skip
    for engine, cpu in figures.get("cpu", {}).items():
        server = f"; server CPU {fmt(cpu['server_cpu_us_per_function_call'])} µs" if engine == "postgresql" else ""
        rows.append(
            (f"CPU per function call, state in {engine}", f"{fmt(cpu['cpu_us_per_function_call'])} µs",
             f"{cpu['calls']:,} calls, {cpu['function_calls']:,} function calls{server}")
        )  # fmt: skip
    return rows


def rate_rows(cases: list[dict[str, Any]] | None) -> list[tuple[str, str, str]]:
    return [
        (f"adaptive rate vs {case['limit_rps']:g} req/s limit, {'with' if case['retry_after'] else 'no'} Retry-After",
         f"{case['share_of_limit']:.0%} of limit, {case['share_429']:.1%} 429s",
         f"{case['calls']:,} calls backfilled in {fmt(case['backfill_s'])} s; "
         f"goals >= {ratebench.SHARE_GOAL:.0%}, <= {ratebench.SHARE_429_GOAL:.0%}")
        for case in cases or []
        if case["share_of_limit"] is not None
    ]  # fmt: skip


def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    main = result.get("throughput")
    if main:
        floor = main.get("floor_us_per_function_call") or {}
        rows += [
            ("workload", f"{main['calls']:,} calls, {main['function_calls']:,} function calls "
             f"({main['function_calls_per_call']:.2f}/call), {main['spans']:,} spans", ""),
            ("exporter CPU per function call", f"{fmt(main['cpu_us_per_function_call'])} µs", ""),
            ("  per call", f"{fmt(main['cpu_us_per_call'])} µs", ""),
            ("floor per function call (decode+build+SDK encode)", f"{fmt(floor.get('total'))} µs",
             f"decode {fmt(floor.get('decode'))}, build {fmt(floor.get('build'))}, "
             f"encode {fmt(floor.get('encode'))} (json.loads alone {fmt(floor.get('json_loads'))})"),
            ("exporter / floor", fmt(main.get("cpu_ratio"), 2), f"target <= {TARGETS['cpu_ratio']}"),
            ("floor with the exporter's direct encoder", f"{fmt(floor.get('total_direct'))} µs",
             f"encode {fmt(floor.get('encode_direct'))}"),
            ("exporter / floor with direct encoder", fmt(main.get("cpu_ratio_direct"), 2), "not a target: see docs"),
            ("calls/s on one core", fmt(main["calls_per_cpu_s"], 0), ""),
            ("spans/s on one core", fmt(main["spans_per_cpu_s"], 0), ""),
            ("wall time (2 cores shared with simulator, receiver)", f"{fmt(main['wall_s'])} s", ""),
            ("API requests per finished call", fmt(main["api_requests_per_call"], 3),
             f"minimum {fmt(main['api_requests_per_call_minimum'], 3)}; target <= {TARGETS['requests_per_call']}"),
        ]  # fmt: skip
    memory = result.get("memory")
    if memory:
        for key in ("small", "large"):
            row = memory[key]
            rows.append(
                (f"RSS, {row['calls']:,} calls", f"peak {fmt(row['peak_rss_mb'])} MiB",
                 f"after {fmt(row['rss_after_mb'])} MiB (after gc {fmt(row['rss_after_gc_mb'])}), "
                 f"before {fmt(row['rss_before_mb'])} MiB")
            )  # fmt: skip
        rows.append(
            ("RSS growth small -> large", f"peak {memory['peak_growth']:+.1%}, after {memory['after_growth']:+.1%}",
             f"target within {TARGETS['rss_growth']:.0%}")
        )  # fmt: skip
    backfill = result.get("backfill")
    if backfill:
        rows.append(
            (f"backfill at {backfill['latency_s'] * 1000:.0f} ms API latency",
             f"{fmt(backfill['requests_per_s'], 0)} req/s = {backfill['share_of_ceiling']:.0%} of ceiling",
             f"ceiling {backfill['ceiling_rps']:.0f} req/s ({backfill['max_concurrency']} in flight); "
             f"{backfill['calls']:,} calls in {fmt(backfill['wall_s'])} s; target >= {TARGETS['backfill_share']:.0%}")
        )  # fmt: skip
    live = result.get("freshness")
    if live:
        rows += [
            ("freshness: finished -> counted",
             f"p50 {fmt(live['counter_p50_s'], 2)} s, p99 {fmt(live['counter_p99_s'], 2)} s",
             f"{live['counted_calls']} calls, poll every {live['poll_interval_s']:g} s; target p99 <= "
             f"{live['poll_interval_s'] + TARGETS['freshness_slack_s']:g} s"),
            ("freshness: finished -> span exported",
             f"p50 {fmt(live['span_p50_s'], 2)} s, p99 {fmt(live['span_p99_s'], 2)} s",
             f"{live['exported_calls']} calls"),
        ]  # fmt: skip
    rows += scrape_rows(result.get("scrape"))
    rows += scrape_rows(result.get("scrape_reference"), " [prometheus_client render]")
    rows += state_rows(result.get("state"))
    rows += transport_rows(result.get("transports"))
    rows += once_rows(result.get("once"))
    rows += rate_rows(result.get("adaptive_rate"))
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [f"{'figure':<{width}}  {'value':<{value_width}}  notes", "-" * (width + value_width + 40)]
    lines += [f"{a:<{width}}  {b:<{value_width}}  {c}".rstrip() for a, b, c in rows]
    lines.append("")
    lines += [
        f"{name}: {'met' if ok else 'NOT met' if ok is False else 'not measured'}"
        for name, ok in result["targets"].items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bem-exporter benchmark (see docs/performance.md)")
    parser.add_argument("--calls", type=int, help="finished calls for the CPU run (20000; --quick 2000)")
    parser.add_argument("--large", type=int, help="finished calls for the memory run (200000; --quick 20000; 0 skips)")
    parser.add_argument("--backfill-calls", type=int, help="calls for the latency backfill (3000; --quick 600)")
    parser.add_argument("--latency", type=float, default=0.1, help="simulated API latency for the backfill (0.1 s)")
    parser.add_argument("--live", type=float, help="seconds of the live freshness run (60; --quick 20)")
    parser.add_argument("--rate", type=float, default=20.0, help="new calls/s in the live run (20)")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="poll interval of the live run (2 s)")
    parser.add_argument(
        "--scrape-series", type=int, help="call-metric samples for the scrape run (50000; --quick 5000; 0 skips)"
    )
    parser.add_argument("--scrape-seconds", type=float, help="seconds of scraping (30; --quick 6)")
    parser.add_argument("--scrapers", type=int, default=20, help="concurrent scrapers (20)")
    parser.add_argument(
        "--scrape-touch", type=float, default=1.0, help="share of the workflows each commit changes (1: every series)"
    )
    parser.add_argument(
        "--scrape-reference",
        type=int,
        default=1,
        help="also scrape with prometheus_client rendering the call metrics, the way it was before (1; 0 skips)",
    )
    parser.add_argument(
        "--state-commits", type=int, help="state engines: commits per engine and shape (400; --quick 100; 0 skips)"
    )
    parser.add_argument("--state-calls", type=int, help="state engines: calls of each CPU run (3000; --quick 1000)")
    parser.add_argument(
        "--adaptive-rate",
        type=float,
        action="append",
        metavar="LIMIT",
        help="also backfill 5,000 calls against this simulator limit (req/s; repeatable), with and without "
        "Retry-After: long (5 req/s takes about 17 min per mode)",
    )
    parser.add_argument(
        "--transport-calls",
        type=int,
        help="HTTP clients compared: calls of each backfill (3000; --quick 1000; 0 skips)",
    )
    parser.add_argument("--transport-rounds", type=int, default=3, help="alternated rounds of the comparison (3)")
    parser.add_argument(
        "--once-calls", type=int, help="peak RSS of `once`: finished calls it backfills (3000; --quick 1000; 0 skips)"
    )
    parser.add_argument(
        "--old-layer", metavar="REV", help="git revision of the home-made HTTP layer (default: the one before it went)"
    )
    parser.add_argument(
        "--http-client",
        choices=HTTP_CLIENTS[1:],
        default=SHIPPED_CLIENT,
        help=f"HTTP client of the exporter in every run but the comparison ({SHIPPED_CLIENT})",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, about 2 minutes")
    parser.add_argument("--name", help="results file name (default: full, quick)")
    parser.add_argument(
        "--profile", metavar="FILE", help="pyinstrument profile of the CPU run (event loop thread), as text"
    )
    parser.add_argument(
        "--py-spy", metavar="FILE", help="py-spy profile of the CPU run (all threads), collapsed stacks"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    calls = args.calls if args.calls is not None else (2000 if quick else 20000)
    large = args.large if args.large is not None else (20000 if quick else 200000)
    backfill_calls = args.backfill_calls if args.backfill_calls is not None else (600 if quick else 3000)
    live_seconds = args.live if args.live is not None else (20.0 if quick else 60.0)
    name = args.name or ("quick" if quick else "full")
    scrape_series = args.scrape_series if args.scrape_series is not None else (5000 if quick else 50000)
    scrape_seconds = args.scrape_seconds if args.scrape_seconds is not None else (6.0 if quick else 30.0)
    state_commits = args.state_commits if args.state_commits is not None else (100 if quick else 400)
    state_calls = args.state_calls if args.state_calls is not None else (1000 if quick else 3000)
    transport_calls = args.transport_calls if args.transport_calls is not None else (1000 if quick else 3000)
    once_calls = args.once_calls if args.once_calls is not None else (1000 if quick else 3000)
    old_layer = args.old_layer or (baseline.old_layer_revision() if transport_calls or once_calls else None)

    result: dict[str, Any] = {
        "name": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "settings": {
            "calls": calls, "large": large, "backfill_calls": backfill_calls, "latency_s": args.latency,
            "live_s": live_seconds, "rate": args.rate, "poll_interval_s": args.poll_interval, "seed": args.seed,
            "workflows": WORKFLOWS, "max_rps": MAX_RPS, "max_concurrency": MAX_CONCURRENCY, "speed": SPEED,
            "http_client": args.http_client,
        },
        "targets_set": TARGETS,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bem-bench-") as tmp:
        workdir = Path(tmp)
        print(f"[bench] CPU run: {calls:,} finished calls, then the floor on the same payloads", file=sys.stderr)
        main_run = finished_workload(
            calls, latency=0.0, seed=args.seed, workdir=workdir, floor=True, profile=args.profile, py_spy=args.py_spy,
            http_client=args.http_client,
        )  # fmt: skip
        result["throughput"] = throughput_figures(main_run)
        result["raw"] = {"throughput": main_run}
        small = result["throughput"]
        if large:
            print(f"[bench] memory run: {large:,} finished calls", file=sys.stderr)
            large_run = finished_workload(
                large, latency=0.0, seed=args.seed + 1, workdir=workdir, http_client=args.http_client
            )
            result["memory_large"] = throughput_figures(large_run)
            result["raw"]["memory_large"] = large_run
            big = result["memory_large"]
            result["memory"] = {
                "small": {
                    k: small[k] for k in ("calls", "peak_rss_mb", "rss_after_mb", "rss_after_gc_mb", "rss_before_mb")
                },
                "large": {
                    k: big[k] for k in ("calls", "peak_rss_mb", "rss_after_mb", "rss_after_gc_mb", "rss_before_mb")
                },
                "peak_growth": big["peak_rss_mb"] / small["peak_rss_mb"] - 1,
                "after_growth": big["rss_after_mb"] / small["rss_after_mb"] - 1,
            }
            result["memory"]["flat"] = (
                abs(result["memory"]["peak_growth"]) <= TARGETS["rss_growth"]
                and abs(result["memory"]["after_growth"]) <= TARGETS["rss_growth"]
            )
        if backfill_calls:
            print(
                f"[bench] backfill: {backfill_calls:,} calls at {args.latency * 1000:.0f} ms latency", file=sys.stderr
            )
            run = finished_workload(
                backfill_calls, latency=args.latency, seed=args.seed + 2, workdir=workdir, http_client=args.http_client
            )
            figures = throughput_figures(run)
            requests = figures["api_requests_total"]
            ceiling = MAX_CONCURRENCY / args.latency if args.latency else None
            rps = requests / run["wall_cycle_s"]
            result["backfill"] = {
                "calls": figures["calls"],
                "latency_s": args.latency,
                "max_concurrency": MAX_CONCURRENCY,
                "requests": requests,
                "wall_s": run["wall_cycle_s"],
                "requests_per_s": rps,
                "ceiling_rps": ceiling,
                "share_of_ceiling": rps / ceiling if ceiling else None,
                "complete": figures["complete"],
            }
            result["raw"]["backfill"] = run
        if live_seconds:
            print(f"[bench] live run: {live_seconds:g} s at {args.rate:g} calls/s", file=sys.stderr)
            result["freshness"] = live_run(
                live_seconds, args.rate, args.poll_interval, args.seed + 3, workdir, args.http_client
            )
        if scrape_series:
            print(f"[bench] scrapes: {scrape_series:,} series, {args.scrapers} concurrent scrapers", file=sys.stderr)
            result["scrape"] = scrape.run(scrape_series, args.scrapers, scrape_seconds, touch=args.scrape_touch)
            if args.scrape_reference:
                print("[bench] scrapes again, prometheus_client rendering the call metrics", file=sys.stderr)
                result["scrape_reference"] = scrape.run(
                    scrape_series, args.scrapers, scrape_seconds, touch=args.scrape_touch, renderer="prometheus_client"
                )
        if state_commits:
            print(f"[bench] state engines: {state_commits} commits per engine and shape", file=sys.stderr)
            result["state"] = state.run(state_commits)
            print(f"[bench] state engines: CPU per function call, {state_calls:,} calls on each", file=sys.stderr)
            result["state"]["cpu"] = state_cpu(state_calls, args.seed + 4, workdir)
        if transport_calls:
            print(
                f"[bench] HTTP clients: {transport_calls:,} calls, {', '.join(HTTP_CLIENTS)} "
                f"(old layer: {old_layer}), {args.transport_rounds} rounds",
                file=sys.stderr,
            )
            result["transports"] = transport_comparison(
                transport_calls, args.transport_rounds, old_layer, args.seed + 5, workdir
            )
        if once_calls:
            print(f"[bench] once: peak RSS backfilling {once_calls:,} calls, before and now", file=sys.stderr)
            result["once"] = once_footprint(once_calls, old_layer, args.seed + 6, workdir)
        if args.adaptive_rate:
            result["adaptive_rate"] = ratebench.run(args.adaptive_rate, [True, False], 5000, 1.0, args.seed)
    result["targets"] = verdicts(result)
    text = table(result)
    result["table"] = text
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"\nwritten to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

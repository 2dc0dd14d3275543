"""Soak: the exporter (the real CLI, a subprocess) against the simulator under a steady load,
with its spans going to an OTLP/HTTP sink, measuring what must stay flat or bounded.

    python bench/soak.py                       # the long soak: 100 calls/s for 10 minutes
    python bench/soak.py --seconds 60 --rate 50 --speed 20 --poll-interval 2s

(from the repository root, with the package and its `test` extra installed, or with
PYTHONPATH=.). Prints a table of figures and, with --json, the figures as one JSON object.

What it measures, every `--sample` seconds:
- the exporter's resident memory (VmRSS of /proc/<pid>/status), to see it flat;
- the state file's size (SQLite file plus its WAL), bounded by the retention window
  (`--lookback`: handled calls older than that are forgotten);
- the calls in flight at the simulator.
And per finished call, its **freshness**: from the call's `finishedAt` to the moment its
trace (the call span) reached the OTLP sink. The exporter counts a call before it exports its
spans, so this bounds the time from finished to counted from above. The exporter's own
`bem_exporter_export_lag_seconds` histogram (finishedAt to counted, bucketed) is reported too.

The simulator runs in this process (so its truth is at hand); the speed multiplier sets how
long calls take: at --speed 0.3 a call lasts about 2 minutes, so 100 calls/s keep about
10,000 calls in flight once the run is past its first minutes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.config import parse_duration  # noqa: E402
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer  # noqa: E402

SIM_KEY = "sim-key"


class Sink:
    """An OTLP/HTTP trace receiver that keeps, per trace, only when its call span first
    arrived and when that call finished (the span's end): memory stays small for hours."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.arrived: dict[bytes, tuple[float, int]] = {}
        """trace id -> (arrival epoch seconds, call span end ns)."""
        self.spans = 0
        self.requests = 0
        self.bytes = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self, body: bytes) -> None:
        now = time.time()
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self._lock:
            self.requests += 1
            self.bytes += len(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans += 1
                        if not span.parent_span_id and span.trace_id not in self.arrived:
                            self.arrived[span.trace_id] = (now, span.end_time_unix_nano)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                sink.take(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@dataclass
class Sample:
    t: float
    """Seconds since the start."""
    rss_kib: int
    state_bytes: int
    in_flight: int
    counted: int
    finished: int


@dataclass
class Figures:
    seconds: float
    rate: float
    speed: float
    poll_interval: float
    lookback: float
    cpus: int
    calls_created: int = 0
    calls_finished: int = 0
    calls_counted: int = 0
    in_flight_max: int = 0
    in_flight_mean_second_half: float = 0.0
    rss_kib_start: int = 0
    """After the warm-up."""
    rss_kib_end: int = 0
    rss_kib_max: int = 0
    rss_kib_mean_second_quarter: float = 0.0
    rss_kib_mean_last_quarter: float = 0.0
    state_bytes_max: int = 0
    state_bytes_end: int = 0
    freshness_p50: float = 0.0
    freshness_p99: float = 0.0
    freshness_max: float = 0.0
    freshness_calls: int = 0
    """Calls that finished after the warm-up and whose trace arrived (the freshness sample)."""
    late_traces: int = 0
    """Calls of that sample whose trace had not arrived when the run ended."""
    export_lag_p50_bucket: float = 0.0
    export_lag_p99_bucket: float = 0.0
    api_requests: int = 0
    exporter_cpu_seconds: float = 0.0
    spans_received: int = 0
    exact: bool | None = None
    """With --converge: the counters equal the simulator's truth per series at the end."""
    samples: list[Sample] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _state_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _calls_total(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> dict[tuple[str, str], int]:
    counts = {}
    for labels, value in metrics.get("bem_calls_total", {}).items():
        label = dict(labels)
        if value:
            counts[(label["workflow_name"], label["status"])] = int(value)
    return counts


def _bucket_quantile(buckets: dict[tuple[tuple[str, str], ...], float], q: float) -> float:
    """The upper bound of the bucket that holds quantile q (a histogram is no finer)."""
    rows = sorted((float(dict(labels)["le"]), value) for labels, value in buckets.items())
    if not rows or rows[-1][1] == 0:
        return 0.0
    total = rows[-1][1]
    for bound, count in rows:
        if count >= q * total:
            return bound
    return rows[-1][0]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_soak(
    seconds: float = 600.0,
    rate: float = 100.0,
    speed: float = 0.3,
    poll_interval: float = 5.0,
    lookback: float = 180.0,
    sample_every: float = 5.0,
    warmup: float | None = None,
    converge: bool = False,
    workdir: Path | None = None,
    seed: int = 11,
    progress: bool = False,
) -> Figures:
    """Run one soak and return its figures. `converge`: at the end stop the arrivals, wait
    for every call to finish and for the counters to equal the truth (sets `exact`)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="bem-soak-"))
    state = workdir / "state.sqlite"
    warmup = warmup if warmup is not None else min(60.0, seconds / 5)
    figures = Figures(seconds, rate, speed, poll_interval, lookback, os.cpu_count() or 0)
    simulator = Simulator(SimulatorConfig(seed=seed, arrival_rate=rate, speed=speed, prefill=0))
    sink = Sink()
    sink.start()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with SimulatorServer(simulator) as api_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "BEM_API_URL": api_url,
                "BEM_API_KEY": SIM_KEY,
                "BEM_STATE_PATH": str(state),
                "BEM_LISTEN": f"127.0.0.1:{port}",
                "BEM_POLL_INTERVAL": f"{poll_interval}s",
                "BEM_LOOKBACK": f"{lookback}s",
                "BEM_MAX_RPS": "2000",
                "BEM_LOG_FORMAT": "json",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": sink.endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            }
        )
        log_path = workdir / "exporter.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter", "run"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        try:
            began = time.time()
            next_sample = began
            while (now := time.time()) - began < seconds:
                if process.poll() is not None:
                    raise RuntimeError(f"the exporter exited with {process.returncode}; see {log_path}")
                if now >= next_sample:
                    next_sample += sample_every
                    stats = simulator.stats()
                    try:
                        counted = sum(_calls_total(_scrape(url)).values())
                    except httpx.HTTPError:
                        counted = -1
                    sample = Sample(
                        t=round(now - began, 1),
                        rss_kib=_rss_kib(process.pid),
                        state_bytes=_state_bytes(state),
                        in_flight=stats["in_flight"],
                        counted=counted,
                        finished=stats["calls"] - stats["in_flight"],
                    )
                    figures.samples.append(sample)
                    if progress:
                        print(
                            f"  t={sample.t:6.0f}s rss={sample.rss_kib / 1024:6.1f} MiB "
                            f"state={sample.state_bytes / 1e6:6.2f} MB in_flight={sample.in_flight:6d} "
                            f"counted={sample.counted:7d} finished={sample.finished:7d}",
                            flush=True,
                        )
                time.sleep(min(0.2, max(0.0, next_sample - time.time())))
            ended = time.time()
            if converge:
                simulator.config.arrival_rate = 0.0
                deadline = time.time() + 120
                truth: dict[tuple[str, str], int] = {}
                while time.time() < deadline:
                    if set(simulator.status_counts()) <= {"completed", "failed"}:
                        truth = simulator.finished_counts()
                        if _calls_total(_scrape(url)) == truth:
                            break
                    time.sleep(0.5)
                figures.exact = bool(truth) and _calls_total(_scrape(url)) == truth
            else:
                time.sleep(poll_interval + 2.0)  # let the last finished calls arrive
            metrics = _scrape(url)
            figures.exporter_cpu_seconds = round(_cpu_seconds(process.pid), 1)
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        summaries = simulator.summaries()
    sink.stop()

    figures.calls_created = len(summaries)
    figures.calls_finished = sum(1 for s in summaries if s["status"] in ("completed", "failed"))
    figures.calls_counted = sum(_calls_total(metrics).values())
    figures.api_requests = int(sum(metrics.get("bem_exporter_api_requests_total", {}).values()))
    figures.spans_received = sink.spans
    lag = metrics.get("bem_exporter_export_lag_seconds_bucket", {})
    figures.export_lag_p50_bucket = _bucket_quantile(lag, 0.5)
    figures.export_lag_p99_bucket = _bucket_quantile(lag, 0.99)

    # Freshness of the calls that finished between the warm-up and the end of the run.
    from exporter.ids import trace_id_int

    lags: list[float] = []
    late = 0
    for summary in summaries:
        finished_at = summary.get("finishedAt")
        if not finished_at:
            continue
        finished = datetime.fromisoformat(finished_at).timestamp()
        if not began + warmup <= finished <= ended:
            continue
        arrival = sink.arrived.get(trace_id_int(summary["callID"]).to_bytes(16, "big"))
        if arrival is None:
            late += 1
            continue
        lags.append(arrival[0] - finished)
    figures.freshness_calls = len(lags)
    figures.late_traces = late
    figures.freshness_p50 = round(_quantile(lags, 0.50), 2)
    figures.freshness_p99 = round(_quantile(lags, 0.99), 2)
    figures.freshness_max = round(max(lags, default=0.0), 2)

    after = [s for s in figures.samples if s.t >= warmup]
    if after:
        figures.rss_kib_start = after[0].rss_kib
        figures.rss_kib_end = after[-1].rss_kib
        figures.rss_kib_max = max(s.rss_kib for s in after)
        quarter = len(after) // 4 or 1
        figures.rss_kib_mean_second_quarter = round(statistics.mean(s.rss_kib for s in after[quarter : 2 * quarter]), 0)
        figures.rss_kib_mean_last_quarter = round(statistics.mean(s.rss_kib for s in after[-quarter:]), 0)
    figures.state_bytes_max = max((s.state_bytes for s in figures.samples), default=0)
    figures.state_bytes_end = figures.samples[-1].state_bytes if figures.samples else 0
    figures.in_flight_max = max((s.in_flight for s in figures.samples), default=0)
    half = figures.samples[len(figures.samples) // 2 :]
    figures.in_flight_mean_second_half = round(statistics.mean(s.in_flight for s in half), 0) if half else 0.0
    return figures


def table(figures: Figures) -> str:
    f = figures
    rows = [
        ("load", f"{f.rate:g} calls/s for {f.seconds:g} s, speed {f.speed:g}, poll {f.poll_interval:g} s"),
        ("machine", f"{f.cpus} CPUs"),
        ("calls created / finished / counted", f"{f.calls_created} / {f.calls_finished} / {f.calls_counted}"),
        ("calls in flight (max; mean of 2nd half)", f"{f.in_flight_max}; {f.in_flight_mean_second_half:.0f}"),
        (
            "exporter RSS MiB (after warm-up; max; end)",
            f"{f.rss_kib_start / 1024:.1f}; {f.rss_kib_max / 1024:.1f}; {f.rss_kib_end / 1024:.1f}",
        ),
        (
            "exporter RSS MiB (mean 2nd quarter -> last quarter)",
            f"{f.rss_kib_mean_second_quarter / 1024:.1f} -> {f.rss_kib_mean_last_quarter / 1024:.1f}",
        ),
        (
            "state file MB (max; end), lookback",
            f"{f.state_bytes_max / 1e6:.2f}; {f.state_bytes_end / 1e6:.2f}, {f.lookback:g} s",
        ),
        (
            "freshness s, finishedAt -> trace arrived (p50; p99; max)",
            f"{f.freshness_p50}; {f.freshness_p99}; {f.freshness_max} over {f.freshness_calls} calls",
        ),
        ("traces not arrived by the end", str(f.late_traces)),
        (
            "export_lag histogram (p50; p99 bucket bound)",
            f"<= {f.export_lag_p50_bucket:g}; <= {f.export_lag_p99_bucket:g}",
        ),
        ("API requests; spans received", f"{f.api_requests}; {f.spans_received}"),
        ("exporter CPU seconds", f"{f.exporter_cpu_seconds}"),
    ]
    if f.exact is not None:
        rows.append(("counters == truth at the end", str(f.exact)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=100.0, help="new calls per second (100)")
    parser.add_argument("--speed", type=float, default=0.3, help="simulator speed; 0.3: ~10,000 in flight at 100/s")
    parser.add_argument("--poll-interval", default="5s")
    parser.add_argument("--lookback", default="3m", help="retention window of handled calls (3m)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples (5)")
    parser.add_argument("--converge", action="store_true", help="at the end, wait for counters == truth")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    figures = run_soak(
        seconds=args.seconds,
        rate=args.rate,
        speed=args.speed,
        poll_interval=parse_duration("--poll-interval", args.poll_interval),
        lookback=parse_duration("--lookback", args.lookback),
        sample_every=args.sample,
        converge=args.converge,
        progress=not args.quiet,
    )
    print(table(figures))
    if args.json:
        print(json.dumps({k: v for k, v in asdict(figures).items() if k != "samples"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

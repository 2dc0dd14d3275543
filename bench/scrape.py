"""Scrape benchmark: latency of /metrics under concurrent scrapers, and render cost per commit.

    python bench/scrape.py                            # 50,000 series, 20 scrapers, 30 s
    python bench/scrape.py --series 5000 --seconds 5  # smaller
    python bench/scrape.py --touch 0.05               # each commit changes 5 % of the workflows
    python bench/scrape.py --renderer prometheus_client  # the reference render, for comparison

The exporter's HTTP server runs in its own process (`--serve`) with a call-metrics store of
about `--series` exposed samples (counters and histogram buckets, exemplars included) and a
publish every `--commit-every` seconds, as a poll loop would do; that process measures the
render after each publish. `--touch` is the share of the workflows (and so of the series)
each commit changes (1: all of them, the worst case). This process runs the scrapers (each
scrapes in a loop, as Prometheus does, asking for OpenMetrics with gzip, or the text format
without; back to back, or every `--interval` seconds) and measures each scrape from request
to last byte. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
FUNCTIONS_PER_WORKFLOW = 40
RENDERERS = ("store", "prometheus_client")
"""The store's own renderer (`exporter/metrics/render.py`), and prometheus_client's render of
the same registry (what the exporter did before), measured the same way."""


def _workload(series: int) -> tuple[int, int]:
    """Workflows x functions giving about `series` samples: each (workflow, function) makes
    a completed and a failed counter, 15 duration samples (12 buckets, +Inf, sum, count) and
    an event counter: about 20 samples (measured and reported as `series`)."""
    per_pair = 20
    workflows = max(1, round(series / per_pair / FUNCTIONS_PER_WORKFLOW))
    return workflows, FUNCTIONS_PER_WORKFLOW


def _batch(chosen: range | list[int], functions: int, round_: int) -> list[Any]:
    from tests.test_metrics import make_call

    steps = tuple((f"fn{f}", "extract", "completed") for f in range(functions))
    return [
        make_call(f"r{round_}-c{w}", workflow=f"wf{w}", steps=steps, events=[{"eventID": f"r{round_}-e{w}",
                  "eventType": "extract", "avgConfidence": 0.8}])
        for w in chosen
    ]  # fmt: skip


def _commit_batches(workflows: int, functions: int, touch: float) -> list[list[Any]]:
    """Batches for the commits, each covering `touch` of the workflows, in rotation."""
    size = max(1, round(workflows * touch))
    count = max(1, min(workflows // size, 3))
    return [_batch([(r * size + w) % workflows for w in range(size)], functions, r + 1) for r in range(count)]


async def _serve(series: int, commit_every: float, touch: float, renderer: str, port_file: Path) -> None:
    from exporter.config import MetricsSettings
    from exporter.metrics import Metrics
    from exporter.server import HttpServer

    settings = MetricsSettings(listen_host="127.0.0.1", listen_port=0, max_label_values=10_000)
    metrics = Metrics(settings, "bench", max_series_per_family=1_000_000, render_from_store=renderer == "store")
    workflows, functions = _workload(series)
    batches = _commit_batches(workflows, functions, touch)
    metrics.recorder.stage(_batch(range(workflows), functions, 0))
    metrics.recorder.publish()
    server = HttpServer(settings, metrics, lambda: True)
    url = await server.start()
    body, _ = metrics.exposition(None)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    port_file.write_text(json.dumps({"url": url, "samples": samples, "text_bytes": len(body)}))
    renders: list[dict[str, float]] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    round_ = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=commit_every)
        metrics.recorder.stage(batches[round_ % len(batches)])
        metrics.recorder.publish()  # starts the background render, as in the exporter
        round_ += 1
        renders.append(await asyncio.to_thread(_time_render, metrics))
    await server.stop()
    print(json.dumps({"renders": renders}))


def _time_render(metrics: Any) -> dict[str, float]:
    """The render this publish costs, measured by waiting for each format's cached body."""
    start = time.perf_counter()
    metrics.exposition(None)
    text = time.perf_counter() - start
    start = time.perf_counter()
    metrics.exposition(OPENMETRICS_ACCEPT)
    return {"text_s": text, "openmetrics_s": time.perf_counter() - start}


async def _scraper(
    client: httpx.AsyncClient, url: str, until: float, openmetrics: bool, interval: float
) -> list[float]:
    headers = (
        {"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"} if openmetrics else {"Accept-Encoding": "identity"}
    )
    latencies: list[float] = []
    await asyncio.sleep(random.uniform(0, interval))  # scrapers out of phase, as independent servers are
    while time.monotonic() < until:
        if latencies and interval:
            await asyncio.sleep(max(0.0, interval - latencies[-1]))
        start = time.perf_counter()
        async with client.stream("GET", f"{url}/metrics", headers=headers) as response:
            async for _ in response.aiter_raw():
                pass
        latencies.append(time.perf_counter() - start)
    return latencies


async def _scrape(url: str, scrapers: int, seconds: float, interval: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=scrapers)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for label, openmetrics in (("openmetrics_gzip", True), ("text", False)):
            until = time.monotonic() + seconds / 2
            runs = await asyncio.gather(*(_scraper(client, url, until, openmetrics, interval) for _ in range(scrapers)))
            latencies = sorted(x for run in runs for x in run)
            out[label] = {
                "scrapes": len(latencies),
                "p50_ms": 1000 * _percentile(latencies, 0.5),
                "p99_ms": 1000 * _percentile(latencies, 0.99),
                "max_ms": 1000 * latencies[-1],
            }
    return out


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(
    series: int = 50_000,
    scrapers: int = 20,
    seconds: float = 30.0,
    commit_every: float = 5.0,
    touch: float = 1.0,
    renderer: str = "store",
    interval: float = 0.0,
) -> dict[str, Any]:
    """Start the server process, scrape it, stop it; the figures as a dict."""
    port_file = Path(f"/tmp/bem-bench-scrape-{time.monotonic_ns()}.json")
    command = [sys.executable, str(Path(__file__)), "--serve", "--series", str(series)]
    command += ["--commit-every", str(commit_every), "--touch", str(touch), "--renderer", renderer]
    command += ["--port-file", str(port_file)]
    server = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("scrape benchmark: the server process did not start")
            time.sleep(0.2)
        started = json.loads(port_file.read_text())
        figures = asyncio.run(_scrape(started["url"], scrapers, seconds, interval))
        output, _ = server.communicate(input="stop\n", timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
        port_file.unlink(missing_ok=True)
    renders = json.loads(output.strip().splitlines()[-1])["renders"]
    return {
        "renderer": renderer,
        "series": started["samples"],
        "touch": touch,
        "text_mb": started["text_bytes"] / 1e6,
        "scrapers": scrapers,
        "scrape_interval_s": interval,
        "commit_every_s": commit_every,
        **figures,
        "commits": len(renders),
        "render_text_ms": 1000 * _mean([r["text_s"] for r in renders]),
        "render_openmetrics_ms": 1000 * _mean([r["openmetrics_s"] for r in renders]),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description="bem-exporter scrape benchmark (see docs/performance.md)")
    parser.add_argument("--series", type=int, default=50_000, help="exposed samples of the call metrics (50000)")
    parser.add_argument("--scrapers", type=int, default=20, help="concurrent scrapers (20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="scraping time, split between formats (30)")
    parser.add_argument(
        "--commit-every", type=float, default=5.0, help="seconds between publishes (5; the poll interval is 15)"
    )
    parser.add_argument(
        "--touch", type=float, default=1.0, help="share of the workflows each commit changes (1: every series)"
    )
    parser.add_argument("--renderer", choices=RENDERERS, default="store", help="who renders the call metrics (store)")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between one scraper's scrapes (0: back to back, a saturation test; Prometheus: 15)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.series, args.commit_every, args.touch, args.renderer, args.port_file))
        return 0
    figures = run(args.series, args.scrapers, args.seconds, args.commit_every, args.touch, args.renderer, args.interval)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

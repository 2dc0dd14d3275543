"""The exporter's side of the benchmark, run as its own process by `bench/run.py`.

    python bench/worker.py throughput CONFIG.json   # backfill a finished workload, then the floor
    python bench/worker.py live CONFIG.json         # `bem-exporter run`'s loop, for freshness

The exporter runs in this process exactly as `bem-exporter run` wires it (`app.open_exporter`:
the real client, SQLite state file, metrics, span delivery over OTLP/HTTP to the receiver
process); only the measurements are added around it. Prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Imported up front so that no import lands inside the measured interval.
import opentelemetry.exporter.otlp.proto.common.trace_encoder  # noqa: E402
import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: E402, F401

from exporter import app  # noqa: E402
from exporter.commands.run import run  # noqa: E402
from exporter.config import Settings, load_settings  # noqa: E402
from exporter.metrics.recorder import MetricsRecorder  # noqa: E402
from exporter.pipeline import FinishedCall  # noqa: E402

PAGE = 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def peak_rss_bytes() -> int:
    """This process's high-water RSS since its exec (VmHWM). Not `ru_maxrss`: Linux carries a
    parent's peak into a child across fork (or vfork) and exec, so a worker started by a large
    bench process would report the bench's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def state_setting(config: dict[str, Any]) -> dict[str, str]:
    """PostgreSQL at `state_url` when given, else the SQLite file `state_path`."""
    if config.get("state_url"):
        return {"BEM_STATE_URL": config["state_url"]}
    return {"BEM_STATE_PATH": config["state_path"]}


def webhook_setting(config: dict[str, Any]) -> dict[str, str]:
    """The webhook listener, when the run has one (bench/webhooks.py)."""
    if not config.get("webhook_listen"):
        return {}
    return {"BEM_WEBHOOK_LISTEN": config["webhook_listen"], "BEM_WEBHOOK_SECRET": config["webhook_secret"]}


def settings_for(config: dict[str, Any]) -> Settings:
    env = {
        "BEM_API_URL": config["api_url"],
        "BEM_API_KEY": "sim-key",
        "BEM_WORKFLOWS": ",".join(config["workflows"]),
        **state_setting(config),
        **webhook_setting(config),
        "BEM_LOOKBACK": config.get("lookback", "3h"),
        "BEM_POLL_INTERVAL": str(config.get("poll_interval", 2)),
        "BEM_MAX_CONCURRENCY": str(config.get("max_concurrency", 16)),
        "BEM_MAX_RPS": str(config.get("max_rps", 100000)),
        "BEM_LISTEN": "127.0.0.1:0",
        "BEM_LOG_LEVEL": "warning",
        "BEM_LOG_FORMAT": "text",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": config["otlp_endpoint"],
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    return load_settings(environ=env)


class RequestCounter:
    """Wraps the observer's `api_request` to count requests per endpoint template."""

    def __init__(self, observer: Any) -> None:
        self.counts: Counter[str] = Counter()
        inner = observer.api_request

        def api_request(endpoint: str, code: str, seconds: float) -> None:
            self.counts[endpoint] += 1
            inner(endpoint, code, seconds)

        observer.api_request = api_request


# -- throughput: one backfill of a finished workload -------------------------------------------


async def lead(exporter: app.Exporter) -> asyncio.Task[str]:
    """A PostgreSQL replica starts as a standby: take the lease and load the state, as
    `run` does on a takeover; the task that renews the lease meanwhile."""
    epoch = await exporter.leadership.campaign(0.1)
    await exporter.poller.reload()
    await exporter.delivery.reload()
    exporter.leadership.took_over(epoch)
    return asyncio.create_task(exporter.leadership.lost())


async def run_backfill(settings: Settings) -> dict[str, Any]:
    async with app.open_exporter(settings) as exporter:
        keeper = await lead(exporter) if exporter.leadership.replicated else None
        requests = RequestCounter(exporter.metrics.observer)
        stop = asyncio.Event()
        gc.collect()
        rss_before = rss_bytes()
        user0, sys0 = cpu()
        wall0 = time.perf_counter()
        worker = asyncio.create_task(exporter.delivery.run(stop))
        backlog = [0]

        async def watch_backlog() -> None:
            while True:
                backlog[0] = max(backlog[0], exporter.delivery.backlog)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_backlog())
        report = await exporter.cycle()
        watcher.cancel()
        wall_cycle = time.perf_counter() - wall0
        stop.set()
        await worker
        delivered = await exporter.delivery.deliver()
        wall = time.perf_counter() - wall0
        user1, sys1 = cpu()
        peak = peak_rss_bytes()
        rss_after = rss_bytes()
        gc.collect()
        rss_after_gc = rss_bytes()
        unexported = await exporter.state.count_unexported()
        if keeper is not None:
            if keeper.done():
                raise SystemExit(f"lost the leader lease during the run: {keeper.result()}")
            keeper.cancel()
    return {
        "ok": report.ok and delivered and unexported == 0,
        "error": report.error,
        "counted": report.counted,
        "finished": report.finished,
        "discovered": report.discovered,
        "trace_fetch_failures": report.trace_fetch_failures,
        "requests": dict(requests.counts),
        "cpu_user_s": user1 - user0,
        "cpu_sys_s": sys1 - sys0,
        "wall_s": wall,
        "wall_cycle_s": wall_cycle,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_after_gc_bytes": rss_after_gc,
        "peak_rss_bytes": peak,
        "max_span_backlog": backlog[0],
    }


def use_http_client(name: str) -> None:
    """The HTTP client under the exporter's API client, for the transport comparison:
    `httpx` (httpx's own transport, what the exporter ships) or `httpx-aiohttp` (aiohttp's
    connection pool under httpx's API). The API client is the only `httpx.AsyncClient` the
    exporter makes, so replacing the class swaps its transport and nothing else."""
    if name == "httpx-aiohttp":
        import httpx
        from httpx_aiohttp import HttpxAiohttpClient

        httpx.AsyncClient = HttpxAiohttpClient  # type: ignore[misc]
    elif name != "httpx":
        raise SystemExit(f"unknown http_client {name!r}")


def throughput(config: dict[str, Any]) -> dict[str, Any]:
    use_http_client(config.get("http_client", "httpx"))
    settings = settings_for(config)
    if config.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        result = asyncio.run(run_backfill(settings))
        profiler.stop()
        Path(config["profile"]).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    else:
        result = asyncio.run(run_backfill(settings))
    if config.get("floor"):
        import floor

        result["floor"] = floor.measure(
            config["api_url"],
            config["workflows"],
            repeat=config.get("floor_repeat", 3),
            limit=config.get("floor_calls"),
        )
    return result


# -- live: the run loop, for freshness -----------------------------------------------------------


def instrument_recorder(lags: list[tuple[float, float]]) -> None:
    """Record, per call, (finishedAt, published - finishedAt): when its counts became visible."""
    stage, publish = MetricsRecorder.stage, MetricsRecorder.publish
    staged: list[float] = []

    def staging(self: MetricsRecorder, batch: Any) -> bytes:
        staged.clear()
        staged.extend(
            item.call.finished_at.timestamp()
            for item in batch
            if isinstance(item, FinishedCall) and item.call.finished_at
        )
        return stage(self, batch)

    def publishing(self: MetricsRecorder) -> None:
        publish(self)
        now = time.time()
        lags.extend((finished, now - finished) for finished in staged)
        staged.clear()

    MetricsRecorder.stage = staging  # type: ignore[method-assign]
    MetricsRecorder.publish = publishing  # type: ignore[method-assign]


def live(config: dict[str, Any]) -> dict[str, Any]:
    use_http_client(config.get("http_client", "httpx"))
    settings = settings_for(config)
    lags: list[tuple[float, float]] = []
    instrument_recorder(lags)
    started = time.time()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.call_later(config["duration"], os.kill, os.getpid(), signal.SIGTERM)
        return await run(settings)

    code = asyncio.run(main())
    return {"ok": code == 0, "started": started, "counter_lags": lags, "peak_rss_bytes": peak_rss_bytes()}


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    config = json.loads(Path(path).read_text())
    result = throughput(config) if mode == "throughput" else live(config)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

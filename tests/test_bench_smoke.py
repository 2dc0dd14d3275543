"""The benchmark (bench/run.py) in a tiny mode: it runs end to end and writes every figure.

No timing is asserted here (a loaded CI machine proves nothing about speed); the figures
themselves are in docs/performance.md.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_tiny_run_writes_every_figure(tmp_path: Path) -> None:
    name = f"smoke-{tmp_path.name}"
    out = ROOT / "bench" / "results" / f"{name}.json"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--name", name]
    command += ["--calls", "200", "--large", "400", "--backfill-calls", "150", "--latency", "0.02", "--live", "8"]
    command += ["--rate", "10", "--poll-interval", "1", "--scrape-series", "2000", "--scrape-seconds", "2"]
    command += ["--state-commits", "20", "--state-calls", "150"]
    command += ["--transport-calls", "150", "--transport-rounds", "1", "--once-calls", "150"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)

    main = result["throughput"]
    assert main["complete"] and main["calls"] >= 150
    for key in ("cpu_us_per_function_call", "calls_per_cpu_s", "spans_per_cpu_s", "api_requests_per_call", "cpu_ratio"):
        assert main[key] is not None and main[key] > 0, key
    for key in ("total", "decode", "build", "encode", "encode_direct", "total_direct"):
        assert main["floor_us_per_function_call"][key] > 0, key
    assert main["cpu_ratio_direct"] > 0
    memory = result["memory"]
    for size in ("small", "large"):
        assert memory[size]["peak_rss_mb"] > 0 and memory[size]["rss_after_mb"] > 0
    assert memory["large"]["calls"] > memory["small"]["calls"]
    backfill = result["backfill"]
    assert backfill["complete"] and backfill["requests_per_s"] > 0 and backfill["ceiling_rps"] > 0
    freshness = result["freshness"]
    for key in ("counter_p50_s", "counter_p99_s", "span_p50_s", "span_p99_s"):
        assert freshness[key] is not None, key
    scraped = result["scrape"]
    assert scraped["series"] > 1000 and scraped["commits"] >= 1
    reference = result["scrape_reference"]  # the same, prometheus_client rendering the call metrics
    assert scraped["renderer"] == "store" and reference["renderer"] == "prometheus_client"
    assert reference["series"] == scraped["series"] and reference["commits"] >= 1
    for label in ("openmetrics_gzip", "text"):
        assert scraped[label]["scrapes"] > 0 and scraped[label]["p99_ms"] > 0
        assert reference[label]["scrapes"] > 0
    for engine in ("sqlite", "postgresql"):
        runs = result["state"][engine]
        assert [run["batch"] for run in runs] == [1, 100], engine
        for run in runs:
            assert run["commits"] == 20 and run["commits_per_s"] > 0 and run["exporter_cpu_ms_per_commit"] > 0
    assert result["state"]["postgresql"][1]["server_cpu_ms_per_commit"] > 0  # 20 x ~3 ms: above the 10 ms tick
    cpu = result["state"]["cpu"]
    for engine in ("sqlite", "postgresql"):
        assert cpu[engine]["complete"] and cpu[engine]["cpu_us_per_function_call"] > 0, engine
    assert cpu["sqlite"]["calls"] == cpu["postgresql"]["calls"]  # the same workload on each engine
    clients = result["transports"]["clients"]
    assert list(clients) == ["old layer", "httpx", "httpx-aiohttp"]  # the old layer from git history
    for client, figures in clients.items():
        assert figures["complete"] and figures["function_calls"] > 0, client
        for key in ("cpu_us_per_function_call", "calls_per_cpu_s", "peak_rss_mb"):
            assert figures[key] > 0 and len(figures["runs"][key]) == 1, (client, key)
    once = result["once"]
    for name in ("before", "now"):
        assert once[name]["returncode"] == 0 and once[name]["summary"].startswith("ok: "), name
        assert once[name]["call_spans"] > 100 and once[name]["function_calls"] > once[name]["call_spans"], name
        assert once[name]["peak_rss_mb"] > 0 and once[name]["cpu_s"] > 0, name
    assert once["now"]["call_spans"] == once["before"]["call_spans"]  # the same work, before and now
    assert set(result["targets"]) == {
        "cpu_within_1_2x_floor",
        "requests_per_call_le_1_05",
        "backfill_ge_80pct_ceiling",
        "rss_flat_within_10pct",
        "freshness_p99_le_interval_plus_1s",
        "calls_per_core_gt_300",
        "once_peak_rss_le_70mib",
    }
    assert result["machine"]["python"] and result["table"]


def test_quality_bench_writes_every_figure() -> None:
    command = [sys.executable, str(ROOT / "bench" / "quality.py"), "--functions", "20", "--scrapes", "3"]
    command += ["--pages", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert all(value > 0 for value in result["scrape_us"].values()) and result["decode_us_per_page"] > 0
    assert result["read_ms"]["page_100"]["pages"] == 1 and result["read_ms"]["page_5"]["pages"] == 6


def test_webhook_delivery_bench_measures_both_phases() -> None:
    command = [sys.executable, str(ROOT / "bench" / "webhook_delivery.py"), "--rate", "5", "--speed", "20"]
    command += ["--seconds", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for phase in ("api_without_webhooks", "api_with_webhooks"):
        assert result[phase]["requests"] > 0 and result[phase]["p99_ms"] > 0
    assert result["deliveries_per_s"] > 0 and result["counts"]["delivered"] > 0


def test_webhooks_bench_quick_run_writes_every_figure() -> None:
    """bench/webhooks.py end to end in its quick mode: both runs measured, figures written."""
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    out = ROOT / "bench" / "results" / f"webhooks-{name}.json"
    command = [sys.executable, str(ROOT / "bench" / "webhooks.py"), "--quick", "--intervals", "2", "--name", name]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        runs = json.loads(out.read_text())["runs"]
    finally:
        out.unlink(missing_ok=True)
    assert [(run["poll_interval_s"], run["webhooks"]) for run in runs] == [(2.0, False), (2.0, True)]
    for run in runs:
        assert run["calls_measured"] > 0 and run["p99_s"] > 0 and run["api_requests_per_call"] > 0
    assert runs[1]["deliveries"].get("delivered", 0) > 0


def test_ratesim_prints_every_case() -> None:
    command = [sys.executable, str(ROOT / "bench" / "ratesim.py"), "--seconds", "30"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = json.loads(done.stdout)
    shown = {(c["limit_rps"], c["bucket_seconds"], c["retry_after"]) for c in cases}
    assert shown == set(itertools.product((5.0, 20.0, 100.0), (1.0, 0.1), (True, False)))
    for case in cases:
        assert 0 < case["share_of_limit"] <= 1.5 and 0 <= case["share_429"] < 1
        assert case["decisions"]["cut"] >= 1  # every limit drew at least one cut within 30 s

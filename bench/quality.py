"""Quality benchmark: what bem's function quality metrics cost the exporter.

    python bench/quality.py                  # 200 functions (the default label cap), 100 a page

- `scrape_us`: CPU per scrape (OpenMetrics, what Prometheus asks) of the whole exposition
  with `--functions` functions' quality gauges (11 samples each) and no call metrics:
  `rendered_on_change` as shipped (the gauges rendered once per read, `Metrics.rare_registry`),
  `rendered_per_scrape` if they were rendered with the self-metrics on every scrape, and
  `without_quality` for reference;
- `decode_us_per_page`: CPU to decode one metrics page of 100 items, item by item;
- `read_ms`: wall time of one whole read (listing and metrics, every page) from the
  simulator on loopback, in this process, at the default page size and at `--small-page`.

CPU figures are the process's (user + system), so a busy machine slows them less than wall
time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.bem.client import BemClient  # noqa: E402
from exporter.config import MetricsSettings  # noqa: E402
from exporter.metrics import SHARE_SECONDS, Metrics  # noqa: E402
from exporter.quality.decode import decode_metrics_page  # noqa: E402
from exporter.quality.gauges import QualityGauges  # noqa: E402
from exporter.quality.reader import QualityReader  # noqa: E402
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer  # noqa: E402

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _item(index: int) -> dict[str, Any]:
    metrics = {
        "accuracy": 0.91,
        "precision": 0.93,
        "recall": 0.9,
        "f1Score": 0.915,
        "tp": 640,
        "fp": 48,
        "tn": 270,
        "fn": 71,
    }
    return {
        "functionName": f"extract-{index:04d}",
        "metrics": metrics,
        "totalResults": 9000,
        "totalLabeledResults": 1029,
    }


def _page(size: int, start: int = 0) -> bytes:
    return json.dumps({"functions": [_item(start + i) for i in range(size)], "totalCount": size}).encode()


def scrape_us(functions: int, scrapes: int) -> dict[str, int]:
    page = decode_metrics_page(_page(functions))
    readings = {function.function_name: function for function in page.functions}
    figures = {}
    for how in ("without_quality", "rendered_on_change", "rendered_per_scrape"):
        metrics = Metrics(MetricsSettings(max_label_values=functions), "bench")
        if how != "without_quality":
            gauges = QualityGauges(metrics.labels)
            if how == "rendered_on_change":
                metrics.rare_registry.register(gauges)
                gauges.on_change = metrics.rare_changed
            else:
                metrics.live_registry.register(gauges)
            gauges.replace(readings)
        metrics.exposition(OPENMETRICS)  # every part rendered once
        started = _cpu()
        for _ in range(scrapes):
            assert metrics.exposition_if_rendered(OPENMETRICS) is not None
            time.sleep(SHARE_SECONDS)  # no body shared between scrapes
        figures[how] = round((_cpu() - started) / scrapes * 1e6)
    return figures


def decode_us_per_page(pages: int) -> float:
    body = _page(100)
    started = _cpu()
    for _ in range(pages):
        decode_metrics_page(body)
    return (_cpu() - started) / pages * 1e6


async def _read(url: str, page_size: int) -> tuple[float, int]:
    async with BemClient(url, "sim-key", "v3", timeout=10, max_concurrency=4, max_rps=1000) as client:
        reader = QualityReader(client, page_size=page_size)
        await reader.read()  # warm: connections open
        started = time.perf_counter()
        reading = await reader.read()
        return (time.perf_counter() - started) * 1000, reading.pages


def read_ms(small_page: int) -> dict[str, Any]:
    simulator = Simulator(SimulatorConfig(seed=1, arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        full, full_pages = asyncio.run(_read(url, 100))
        small, small_pages = asyncio.run(_read(url, small_page))
    return {
        "functions": 28,
        "page_100": {"ms": round(full, 1), "pages": full_pages},
        f"page_{small_page}": {"ms": round(small, 1), "pages": small_pages},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--small-page", type=int, default=5)
    args = parser.parse_args()
    result = {
        "functions": args.functions,
        "scrape_us": scrape_us(args.functions, args.scrapes),
        "decode_us_per_page": round(decode_us_per_page(args.pages)),
        "read_ms": read_ms(args.small_page),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

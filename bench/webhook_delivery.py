"""Webhook delivery benchmark: does delivering webhooks slow the simulator's API?

    python bench/webhook_delivery.py            # 20 new calls/s at speed 10, 20 s without, 20 s with webhooks

The simulator serves from its own thread as in the tests; a client in the main thread reads
`GET /v3/calls?limit=100` back to back and times each answer, first with no subscription,
then with every function subscribed (output and error types, as `bem-exporter subscribe`
makes them) to a receiver in a third thread that answers 200. Reports the API's latency in
both phases; then, with nothing reading, the deliveries per second, the delay from each
event's `createdAt` to its receipt, and the process's CPU per delivery (simulator, sender and
receiver together). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.bem.subscriptions import BemFunction  # noqa: E402
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer  # noqa: E402
from exporter.simulator.catalog import FUNCTIONS_BY_NAME  # noqa: E402

KEY = {"x-api-key": "sim-key"}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Receiver:
    """Answers 200 to every POST /webhook and notes how late each event arrived."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        self._ready.wait()

    async def _handle(self, request: web.Request) -> web.Response:
        doc = msgspec.json.decode(await request.read())
        created = datetime.fromisoformat(doc["createdAt"].replace("Z", "+00:00")).timestamp()
        self.delays.append(time.time() - created)
        return web.Response(status=200)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/webhook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        loop.run_forever()


def _read_for(api: httpx.Client, seconds: float) -> list[float]:
    """Latencies (ms) of back-to-back listing requests for `seconds`."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        assert api.get("/v3/calls", params={"limit": "100", "sortOrder": "desc"}).status_code == 200
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def _summary(latencies: list[float]) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(_quantile(latencies, 0.99) or 0.0, 2),
    }


def _subscribe(api: httpx.Client, url: str) -> int:
    made = 0
    for function in FUNCTIONS_BY_NAME.values():
        for kind in BemFunction(function.id, function.name, function.type).subscription_types():
            body = {"name": f"bench {kind} {function.name}", "type": kind, "functionName": function.name}
            assert api.post("/v3/subscriptions", json={**body, "webhookURL": url}).status_code == 200
            made += 1
    return made


def run(rate: float, speed: float, seconds: float) -> dict[str, Any]:
    sim = Simulator(SimulatorConfig(seed=7, arrival_rate=rate, speed=speed, prefill=2000, history=600))
    receiver = Receiver()
    with SimulatorServer(sim) as url, httpx.Client(base_url=url, headers=KEY, timeout=30) as api:
        without = _read_for(api, seconds)
        subscriptions = _subscribe(api, f"http://127.0.0.1:{receiver.port}/webhook")
        time.sleep(2)  # let the calls in flight at subscription time start delivering
        with_webhooks = _read_for(api, seconds)
        cpu, delivered, began = _cpu(), len(receiver.delays), time.monotonic()
        time.sleep(seconds)  # deliveries alone
        elapsed = time.monotonic() - began
        deliveries = len(receiver.delays) - delivered
        cpu_per_delivery = (_cpu() - cpu) / deliveries * 1e6 if deliveries else None
        delays = receiver.delays[delivered:]
    return {
        "rate": rate,
        "speed": speed,
        "subscriptions": subscriptions,
        "api_without_webhooks": _summary(without),
        "api_with_webhooks": _summary(with_webhooks),
        "deliveries_per_s": round(deliveries / elapsed, 1),
        "delivery_delay_p50_ms": round((_quantile(delays, 0.5) or 0.0) * 1000, 1),
        "delivery_delay_p99_ms": round((_quantile(delays, 0.99) or 0.0) * 1000, 1),
        "cpu_us_per_delivery": round(cpu_per_delivery, 1) if cpu_per_delivery else None,
        "counts": sim.deliveries.counts(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="new calls per second (default 20)")
    parser.add_argument("--speed", type=float, default=10.0, help="workload time multiplier (default 10)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    args = parser.parse_args()
    print(json.dumps(run(args.rate, args.speed, args.seconds), indent=2))


if __name__ == "__main__":
    main()

"""A call whose finishedAt lies in the year 2200 or before its createdAt, through the real CLI:
the exporter runs against the simulator behind a small rewriting proxy that damages the
finishedAt of some calls in every call listing. Every call is counted; the damaged ones feed
no duration histogram, are counted as anomalies, and never reach the persisted sums."""

from __future__ import annotations

import asyncio
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from aiohttp import web
from fault_helpers import finished_ids
from processes import ExporterProcess, free_port, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

FAR_FUTURE = "2200-01-01T00:00:00Z"
_HOP_HEADERS = ("host", "content-length", "accept-encoding", "connection")


def _damage(call_id: str) -> str | None:
    """Which damage a call gets: about a fifth each in the future and before createdAt."""
    bucket = zlib.crc32(call_id.encode()) % 5
    return {0: "future", 1: "before_created"}.get(bucket)


def _rewrite(call: dict[str, object]) -> None:
    damage = _damage(str(call.get("callID")))
    created = call.get("createdAt")
    if not call.get("finishedAt") or not isinstance(created, str):
        return
    if damage == "future":
        call["finishedAt"] = FAR_FUTURE
    elif damage == "before_created":
        earlier = datetime.fromisoformat(created.replace("Z", "+00:00")) - timedelta(seconds=60)
        call["finishedAt"] = earlier.isoformat().replace("+00:00", "Z")


@contextmanager
def rewriting_proxy(upstream: str) -> Iterator[str]:
    """Forwards every GET to `upstream`; rewrites the calls of `/v3/calls` listings."""
    port = free_port()
    started = threading.Event()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    async def forward(request: web.Request) -> web.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
            answer = await client.get(f"{upstream}{request.path_qs}", headers=headers)
        body = answer.content
        if request.path == "/v3/calls" and answer.status_code == 200:
            page = json.loads(body)
            for call in page.get("calls", []):
                _rewrite(call)
            body = json.dumps(page).encode()
        return web.Response(status=answer.status_code, body=body, content_type="application/json")

    async def serve() -> None:
        nonlocal stop, loop
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        assert loop is not None and stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def _total(exporter: ExporterProcess, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in exporter.samples(name).items()
        if all(dict(labels).get(k) == v for k, v in match.items())
    )


def test_out_of_range_finished_at_is_counted_never_observed_nor_persisted(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=120, history=1200.0, arrival_rate=0.0, speed=20.0))
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as upstream, rewriting_proxy(upstream) as url:
        # A prefilled call may still be running: the truth is taken once every call finished.
        wait_until(lambda: set(simulator.status_counts()) <= {"completed", "failed"}, 120, what="all finished")
        truth = finished_ids(simulator)
        damaged = {call_id for call_id in truth if _damage(call_id)}
        assert damaged and damaged != truth
        exporter = ExporterProcess(url, state).start()
        try:
            wait_until(lambda: _total(exporter, "bem_calls_total") == len(truth), 60, what="every call counted")
            assert _total(exporter, "bem_call_duration_seconds_count") == len(truth) - len(damaged)
            assert _total(exporter, "bem_exporter_export_lag_seconds_count") == len(truth) - len(damaged)
            anomalies = _total(exporter, "bem_exporter_trace_anomalies_total", kind="timestamp_out_of_range")
            assert anomalies == len(damaged)
            assert _total(exporter, "bem_call_duration_seconds_sum") < 1e6  # not 5.46e9 per damaged call
        finally:
            exporter.stop()
        restarted = ExporterProcess(url, state).start()
        try:  # what was persisted: the same counts, and sums that never saw the damaged times
            wait_until(lambda: _total(restarted, "bem_calls_total") == len(truth), 60, what="counts restored")
            assert _total(restarted, "bem_call_duration_seconds_count") == len(truth) - len(damaged)
            assert _total(restarted, "bem_call_duration_seconds_sum") < 1e6
        finally:
            restarted.stop()

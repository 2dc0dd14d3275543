"""A status board fed with real finished calls from the simulator, and a server that serves it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from exporter.app import bem_client
from exporter.bem.client import ListQuery
from exporter.config import ApiSettings, MetricsSettings, Secret
from exporter.metrics import Metrics
from exporter.pipeline import CycleReport, FinishedCall
from exporter.server import HttpServer
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.status import SettingRow, StatusBoard

TRACE_URL = "https://grafana.example/explore?left=%7B%22queries%22:%5B%7B%22query%22:%22{trace_id}%22%7D%5D%7D"
API_KEY = "sk-status-test-KEY-0123456789"
PASSWORD = "pw-status-test-HUNTER2"


def finished_calls(count: int = 12) -> list[FinishedCall]:
    """Finished calls with their traces, read over HTTP from a simulator with history."""
    config = SimulatorConfig(seed=3, arrival_rate=0.5, prefill=40, history=1800.0)
    with SimulatorServer(Simulator(config)) as url:
        return asyncio.run(_read(ApiSettings(url=url, key=Secret(config.api_key or "")), count))


async def _read(api: ApiSettings, count: int) -> list[FinishedCall]:
    async with bem_client(api) as client:
        page = await client.list_calls(ListQuery(limit=100))
        calls = [call for call in page.calls if call.finished][:count]
        traces = await asyncio.gather(*(client.get_trace(call.call_id) for call in calls))
    return [FinishedCall(call, trace) for call, trace in zip(calls, traces, strict=True)]


def secret_rows() -> list[SettingRow]:
    """Settings as the exporter would give them, with secret-looking values where a caller
    might slip (the board must mask them whatever it is handed)."""
    return [
        SettingRow("BEM_API_URL", "https://api.bem.ai", "default"),
        SettingRow("BEM_API_KEY", API_KEY, "environment", secret=True),
        SettingRow("BEM_METRICS_BASIC_AUTH_FILE", f"ops:{PASSWORD}", "file", secret=True),
        SettingRow("BEM_STATE_URL", f"postgresql://bem:{PASSWORD}@db:5432/bem?password={PASSWORD}", "flag"),
        SettingRow("BEM_POLL_INTERVAL", "15s", "flag"),
    ]


def fed_board(calls: list[FinishedCall], **options: Any) -> StatusBoard:
    board = StatusBoard("9.9.9", trace_url=TRACE_URL, **options)
    board.set_settings(secret_rows())
    board.cycle_done(CycleReport(ok=True, duration_seconds=0.4, discovered=len(calls), finished=len(calls), tracked=3))
    board.calls_finished(calls)
    return board


@asynccontextmanager
async def serving(board: StatusBoard, **settings: Any) -> AsyncIterator[str]:
    config = MetricsSettings(listen_host="127.0.0.1", listen_port=0, **settings)
    server = HttpServer(config, Metrics(config, "9.9.9"), lambda: True, board)
    url = await server.start()
    try:
        yield url
    finally:
        await server.stop()

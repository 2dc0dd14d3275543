"""/status of the real CLI in a real browser: `bem-exporter run` against the simulator, behind
basic auth, with trace links; the API shown down while the simulator is stopped and up again
after; nothing secret or from a document on the page."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from exporter.ids import trace_id_for
from exporter.simulator import CONTENT_MARKER, URL_MARKER, Simulator, SimulatorConfig, SimulatorServer
from tests.browser import Browser, Page
from tests.processes import ExporterProcess, wait_until
from tests.status_helpers import TRACE_URL

KEY = "sk-status-cli-KEY-0123456789"
PASSWORD = "pw-status-cli-HUNTER2"
AUTH = ("ops", PASSWORD)


def _status(exporter: ExporterProcess) -> Any:
    return httpx.get(f"{exporter.url}/status.json", auth=AUTH, timeout=5).json()


def _api_state(exporter: ExporterProcess) -> str:
    return str(_status(exporter)["api"]["state"])


def test_run_status_page_in_chromium_through_an_outage(tmp_path: Path) -> None:
    auth_file = tmp_path / "basic-auth"
    auth_file.write_text(f"ops:{PASSWORD}\n")
    simulator = Simulator(SimulatorConfig(prefill=40, history=600.0, arrival_rate=0.0, api_key=KEY))
    api = SimulatorServer(simulator)
    env = {"BEM_API_KEY": KEY, "BEM_TRACE_URL": TRACE_URL, "BEM_METRICS_BASIC_AUTH_FILE": str(auth_file)}
    with api as url, ExporterProcess(url, tmp_path / "state.sqlite", env=env) as exporter:

        async def pages() -> tuple[Any, Page, Page, Page]:
            async with Browser() as browser:
                await asyncio.to_thread(wait_until, lambda: _status(exporter)["calls"], 30, what="finished calls")
                document = await asyncio.to_thread(_status, exporter)
                first = await browser.load(f"{exporter.url}/status", auth=AUTH)
                api.stop()
                await asyncio.to_thread(wait_until, lambda: _api_state(exporter) == "down", 60, what="API down")
                down = await browser.load(f"{exporter.url}/status", auth=AUTH)
                api.start()
                await asyncio.to_thread(wait_until, lambda: _api_state(exporter) == "up", 60, what="API up again")
                up = await browser.load(f"{exporter.url}/status", auth=AUTH)
                return document, first, down, up

        document, first, down, up = asyncio.run(pages())
    newest = document["calls"][0]
    assert all(page.status == 200 and page.errors == [] for page in (first, down, up))
    assert newest["trace_id"] == trace_id_for(newest["call_id"]) and newest["trace_id"] in first.text
    assert (TRACE_URL.replace("{trace_id}", newest["trace_id"]), newest["trace_id"]) in first.links
    assert '<span id="api-state" class="up">up</span>' in first.html
    assert '<span id="api-state" class="down">down</span>' in down.html
    assert "cannot connect" in down.text
    assert '<span id="api-state" class="up">up</span>' in up.html
    for page in (first, down, up):
        for secret in (KEY, PASSWORD, CONTENT_MARKER, URL_MARKER):
            assert secret not in page.html, secret

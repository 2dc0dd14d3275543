"""/status in a real headless Chromium: clean rendering under its CSP, a finished call with its
trace link, API health as it changes, and nothing secret on the page."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from exporter.config import BasicAuth, Secret
from exporter.ids import trace_id_for
from exporter.pipeline import FinishedCall
from exporter.simulator import CONTENT_MARKER, URL_MARKER
from exporter.status import CONTENT_SECURITY_POLICY
from tests.browser import Browser, Page
from tests.status_helpers import API_KEY, PASSWORD, TRACE_URL, fed_board, finished_calls, serving

AUTH = ("ops", PASSWORD)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def calls() -> list[FinishedCall]:
    return finished_calls()


def test_page_renders_cleanly_with_a_finished_call_and_its_trace_link(
    calls: list[FinishedCall], tmp_path: Path
) -> None:
    board = fed_board(calls)
    shot = tmp_path / "status.png"

    async def main() -> Page:
        async with serving(board, basic_auth=BasicAuth(*AUTH[:1], Secret(PASSWORD))) as url, Browser() as browser:
            return await browser.load(f"{url}/status", auth=AUTH, screenshot=shot)

    page = asyncio.run(main())
    assert page.status == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.errors == []
    newest = board.snapshot().calls[0]
    assert newest.trace_id == trace_id_for(newest.call_id)
    assert newest.trace_id in page.text and newest.workflow in page.text
    assert (TRACE_URL.replace("{trace_id}", newest.trace_id), newest.trace_id) in page.links
    assert shot.read_bytes().startswith(PNG_SIGNATURE)


def test_page_shows_the_api_down_then_up_again(calls: list[FinishedCall]) -> None:
    board = fed_board(calls)

    async def main() -> tuple[Page, Page]:
        async with serving(board) as url, Browser() as browser:
            board.api_down("GET /v3/calls: cannot connect to 127.0.0.1 (after 1 attempt)")
            down = await browser.load(f"{url}/status")
            board.api_up()
            up = await browser.load(f"{url}/status")
            return down, up

    down, up = asyncio.run(main())
    assert down.errors == [] and up.errors == []
    assert '<span id="api-state" class="down">down</span>' in down.html
    assert "cannot connect to 127.0.0.1 (after 1 attempt)" in down.text
    assert '<span id="api-state" class="up">up</span>' in up.html
    assert "down" not in up.html.split('id="api"')[1].split("</section>")[0].split("last error")[0]


def test_page_holds_no_key_password_or_document_content(calls: list[FinishedCall]) -> None:
    board = fed_board(calls)
    board.api_down(f"HTTP 403 at https://ops:{PASSWORD}@bucket.example/x.pdf?X-Amz-Signature={URL_MARKER}")

    async def main() -> Page:
        async with serving(board) as url, Browser() as browser:
            return await browser.load(f"{url}/status")

    page = asyncio.run(main())
    assert "BEM_API_KEY" in page.text and "https://bucket.example/x.pdf" in page.text
    for secret in (API_KEY, PASSWORD, CONTENT_MARKER, URL_MARKER):
        assert secret not in page.text and secret not in page.html


async def _serve_page(body: str, headers: dict[str, str]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html", headers=headers)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/"


def test_the_harness_reports_csp_violations_and_console_errors() -> None:
    """The controls for `errors == []` above: a page that breaks its CSP, one that logs an error."""
    blocked = '<html><body><script>document.title = "ran"</script><p style="color:red">x</p></body></html>'
    noisy = "<html><body><script>console.error('boom from the page')</script></body></html>"

    async def main() -> tuple[Page, Page]:
        strict, strict_url = await _serve_page(blocked, {"Content-Security-Policy": CONTENT_SECURITY_POLICY})
        loose, loose_url = await _serve_page(noisy, {})
        try:
            async with Browser() as browser:
                return await browser.load(strict_url), await browser.load(loose_url)
        finally:
            await strict.cleanup()
            await loose.cleanup()

    violation, console = asyncio.run(main())
    assert any("Content Security Policy" in error for error in violation.errors), violation.errors
    assert any("boom from the page" in error for error in console.errors), console.errors

"""A real headless browser for tests: Debian's Chromium driven over the DevTools protocol.

No browser is downloaded and no driver library is needed: Chromium is started with a fresh
profile and `--remote-debugging-port=0`, and spoken to over its websocket with aiohttp.

    async with Browser() as browser:
        page = await browser.load(url, auth=("user", "password"), screenshot=Path("shot.png"))
    page.text, page.html, page.links, page.errors, page.status, page.headers

or, from synchronous code (a CLI test with the exporter in a subprocess): `load_page(url)`.
`page.errors` holds every console error, uncaught exception and browser log error (a CSP
violation or a failed sub-resource is one), so "renders cleanly" is `page.errors == []`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CHROMIUM = os.environ.get("BEM_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
VIEWPORT = (1280, 900)


class BrowserError(RuntimeError):
    pass


@dataclass
class Page:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Headers of the main document's response, names lower-cased."""
    text: str = ""
    html: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)
    """(href, text) of every link."""
    errors: list[str] = field(default_factory=list)


class DevTools:
    """One websocket to one page target: calls by id, events kept in order."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._event = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        answer = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        await self._socket.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        reply = await asyncio.wait_for(answer, CALL_TIMEOUT)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def wait_for(self, method: str, after: int = 0) -> dict[str, Any]:
        """The first event named `method` at or after index `after` of `events`."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[after:] if e.get("method") == method), None)

        async with self._event:
            await asyncio.wait_for(self._event.wait_for(lambda: found() is not None), CALL_TIMEOUT)
        event = found()
        assert event is not None
        return event

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()

    async def _read(self) -> None:
        async for message in self._socket:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            async with self._event:
                self.events.append(data)
                self._event.notify_all()


class Browser:
    """A Chromium process with a throw-away profile; `load()` opens each URL in a new tab."""

    def __init__(self) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="bem-chromium-"))
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._base = ""

    async def __aenter__(self) -> Browser:
        log = (self._profile / "chromium.log").open("wb")
        self._process = await asyncio.create_subprocess_exec(
            CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}", "about:blank", stdout=log, stderr=log
        )
        log.close()
        port = await self._debugging_port()
        self._base = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT))
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def load(self, url: str, *, auth: tuple[str, str] | None = None, screenshot: Path | None = None) -> Page:
        assert self._http is not None
        async with self._http.put(f"{self._base}/json/new?about:blank") as response:
            target = await response.json()
        socket = await self._http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        tools = DevTools(socket)
        try:
            return await _load(tools, url, auth, screenshot)
        finally:
            await tools.close()
            async with self._http.get(f"{self._base}/json/close/{target['id']}"):
                pass

    async def _debugging_port(self) -> int:
        """Chromium writes its port to DevToolsActivePort in the profile once it listens."""
        marker = self._profile / "DevToolsActivePort"
        assert self._process is not None
        async with asyncio.timeout(START_TIMEOUT):
            while not marker.exists() or not marker.read_text().strip():
                if self._process.returncode is not None:
                    log = (self._profile / "chromium.log").read_text(errors="replace")
                    raise BrowserError(f"chromium exited with {self._process.returncode}: {log[-2000:]}")
                await asyncio.sleep(0.05)
        return int(marker.read_text().split()[0])


async def _load(tools: DevTools, url: str, auth: tuple[str, str] | None, screenshot: Path | None) -> Page:
    for domain in ("Page", "Runtime", "Log", "Network"):
        await tools.call(f"{domain}.enable")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        await tools.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
    width, height = VIEWPORT
    await tools.call(
        "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
    )
    start = len(tools.events)
    await tools.call("Page.navigate", url=url)
    await tools.wait_for("Page.loadEventFired", after=start)
    page = Page(
        text=await _evaluate(tools, "document.body ? document.body.innerText : ''"),
        html=await _evaluate(tools, "document.documentElement.outerHTML"),
        links=[(a[0], a[1]) for a in await _evaluate(tools, _LINKS)],
    )
    _take_response(page, tools.events[start:])
    if screenshot is not None:
        screenshot.write_bytes(await _screenshot(tools))
    page.errors = [error for event in tools.events[start:] if (error := _error(event)) is not None]
    return page


_LINKS = "Array.from(document.querySelectorAll('a[href]'), a => [a.href, a.textContent])"


async def _evaluate(tools: DevTools, expression: str) -> Any:
    result = await tools.call("Runtime.evaluate", expression=expression, returnByValue=True)
    if "exceptionDetails" in result:
        raise BrowserError(f"evaluating {expression!r}: {result['exceptionDetails'].get('text')}")
    return result["result"].get("value")


def _take_response(page: Page, events: list[dict[str, Any]]) -> None:
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Network.responseReceived" and params.get("type") == "Document":
            response = params["response"]
            page.status = int(response["status"])
            page.headers = {name.lower(): value for name, value in response.get("headers", {}).items()}
            return


async def _screenshot(tools: DevTools) -> bytes:
    metrics = await tools.call("Page.getLayoutMetrics")
    size = metrics["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
    return base64.b64decode(shot["data"])


def _error(event: dict[str, Any]) -> str | None:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"exception: {details.get('exception', {}).get('description') or details.get('text')}"
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        return "console: " + " ".join(str(arg.get("value", arg.get("description"))) for arg in params.get("args", []))
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')}"
    return None


def load_page(url: str, *, auth: tuple[str, str] | None = None, screenshot: Path | None = None) -> Page:
    """`Browser().load(url)` for synchronous callers: one browser, one page, then closed."""

    async def main() -> Page:
        async with Browser() as browser:
            return await browser.load(url, auth=auth, screenshot=screenshot)

    return asyncio.run(main())


if __name__ == "__main__":
    # python -m tests.browser URL OUT.png: the screenshot in docs/ is taken this way.
    import sys

    shown = load_page(sys.argv[1], screenshot=Path(sys.argv[2]))
    print(f"HTTP {shown.status}, {len(shown.errors)} errors", *shown.errors, sep="\n")

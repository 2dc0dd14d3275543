"""Running the simulator: in a background thread (tests, benchmarks, demo) or in the current loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from aiohttp import web

from .app import create_app
from .config import SimulatorConfig
from .faults import FaultInjector
from .model import Simulator

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 0.25
"""Seconds in-flight requests get to finish when the server stops."""


def _runner(app: web.Application) -> web.AppRunner:
    # access_log=None: nothing is logged per request
    return web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the simulator's server has no TCP address")


def _url(host: str, port: int, prefix: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{prefix}"


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return prefix


class SimulatorServer:
    """Serves a Simulator over HTTP from a background thread with its own event loop.

    `start()` returns the base URL (prefix included); `stop()` closes the listener and every
    connection; starting again binds the same port (for outage tests). Also a context manager:
    `with SimulatorServer(sim) as url: ...`.
    """

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0, prefix: str = "") -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self.prefix = _normalize_prefix(prefix)
        self._injector = FaultInjector(simulator.config.seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL to configure a client with (e.g. `http://127.0.0.1:43211`)."""
        return _url(self.host, self.port, self.prefix)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> str:
        if self._thread is not None:
            return self.url
        ready = threading.Event()
        self._error = None
        thread = threading.Thread(target=self._serve, args=(ready,), name="bem-simulator", daemon=True)
        thread.start()
        ready.wait()
        if self._error is not None:
            thread.join()
            raise RuntimeError(f"the bem simulator could not start on {self.host}:{self.port}") from self._error
        self._thread = thread
        return self.url

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = _runner(create_app(self.simulator, prefix=self.prefix, injector=self._injector))
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            loop.run_until_complete(site.start())
            self.port = _bound_port(runner)
        except BaseException as exc:  # noqa: BLE001  the thread's boundary: start() raises it, whatever it was
            self._error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            ready.set()
            return
        self._loop = loop
        self._stopped = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._stopped.wait())
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    def stop(self) -> None:
        """Stop serving: the listener and all connections close. Idempotent."""
        thread, loop, stopped = self._thread, self._loop, self._stopped
        if thread is None:
            return
        if loop is not None and stopped is not None:
            loop.call_soon_threadsafe(stopped.set)
        thread.join()
        self._thread = None
        self._stopped = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


async def serve(
    config: SimulatorConfig,
    host: str,
    port: int,
    *,
    prefix: str = "",
    simulator: Simulator | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the simulator in the current event loop until cancelled (for `bem-exporter simulate`).

    Logs its URL at info level once listening, and calls `on_ready(url)` if given.
    """
    began = time.perf_counter()
    sim = simulator if simulator is not None else Simulator(config)
    if config.prefill:
        log.info("bem simulator: prefilled %d calls in %.1fs", config.prefill, time.perf_counter() - began)
    prefix = _normalize_prefix(prefix)
    runner = _runner(create_app(sim, prefix=prefix))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        url = _url(host, _bound_port(runner), prefix)
        auth = "x-api-key required" if config.api_key is not None else "no authentication"
        log.info("bem API simulator listening on %s (%s, %.3g new calls/s)", url, auth, config.arrival_rate)
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()

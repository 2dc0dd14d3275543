"""A real webhook receiver for tests (aiohttp, on loopback), and bem's signature check written
out independently of the simulator's signing code.

    with WebhookReceiver() as receiver:
        ... subscribe receiver.url ...
        receiver.received()     # every POST /webhook as it came: body, headers, time, answer

`answer(received)` decides each answer: an HTTP status, `HANG` (no answer until the sender gives
up) or `ABORT` (the connection closed without one); `on_receive(received)` runs first, in the
receiver's thread, so a test can look at the simulator at the moment a delivery arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import msgspec
from aiohttp import web

HANG = -1
ABORT = -2
Verdict = Literal["valid", "bad_signature", "stale", "unsigned", "malformed"]


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    """Names lower-cased."""
    received_at: float
    """time.time() when the body had been read."""
    status: int | None = None
    """What the receiver answered; None: no answer (HANG or ABORT)."""
    seen: Any = None
    """What `on_receive` returned."""
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        return str(self.doc.get("eventID"))


def verify(header: str | None, body: bytes, secrets: list[str], now: float, tolerance: float = 300.0) -> Verdict:
    """bem's check: `t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with any of `secrets`,
    `t` within `tolerance` seconds of `now`."""
    if header is None:
        return "unsigned"
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return "malformed"
    signed = parts["t"].encode() + b"." + body
    expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    if not any(hmac.compare_digest(e, parts["v1"]) for e in expected):
        return "bad_signature"
    return "valid" if abs(now - int(parts["t"])) <= tolerance else "stale"


class WebhookReceiver:
    def __init__(
        self,
        answer: Callable[[Received], int] | None = None,
        on_receive: Callable[[Received], Any] | None = None,
    ) -> None:
        self.answer = answer or (lambda _: 200)
        self.on_receive = on_receive
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def answered(self, status: int = 200) -> list[Received]:
        """The deliveries answered `status`."""
        return [r for r in self.received() if r.status == status]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        received = Received(body, {k.lower(): v for k, v in request.headers.items()}, time.time())
        with contextlib.suppress(msgspec.DecodeError):
            received.doc = msgspec.json.decode(body)
        if self.on_receive is not None:
            received.seen = self.on_receive(received)
        status = self.answer(received)
        with self._lock:
            self._received.append(received)
        if status == HANG:
            await asyncio.sleep(3600)
        if status in (HANG, ABORT):
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        received.status = status
        return web.Response(status=status)

    def __enter__(self) -> Self:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="webhook-receiver", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/webhook", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._loop, self._stopped = loop, asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._stopped.wait())
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join()

"""Connection limits for the HTTP server: a bound on header read time and on open connections.

aiohttp's server has no header read timeout (a client sending one header byte a second keeps
its connection, and a handler slot, open indefinitely) and no connection cap. Both are added
here as an asyncio protocol wrapped around the one aiohttp creates for each connection (the
public `AppRunner.server` protocol factory, served with `loop.create_server` as aiohttp's own
`TCPSite` does). The wrapper passes every byte through unchanged and only watches for the
blank line ending a request's headers: a header block still incomplete `header_timeout`
seconds after its first byte (or after the connection opened) gets the connection closed.
Idle keep-alive connections are aiohttp's to close (its public `keepalive_timeout`, set to
`DEFAULT_IDLE_TIMEOUT` by the server). Request bodies
are not expected on these GET-only routes; a body would be timed as if it were headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

DEFAULT_HEADER_TIMEOUT: Final = 10.0
"""Seconds a client may take to send a request's headers (Prometheus sends them at once)."""
DEFAULT_IDLE_TIMEOUT: Final = 75.0
"""Seconds an idle keep-alive connection stays open (aiohttp's `keepalive_timeout`, whose own
default, an hour, would let idle connections hold the slots below)."""
DEFAULT_MAX_CONNECTIONS: Final = 100
"""Open connections at once; more are closed as they arrive (a few scrapers need a few)."""
_END_OF_HEADERS: Final = b"\r\n\r\n"


class ConnectionLimits:
    """The limits, and the count of open connections they are checked against."""

    def __init__(self, header_timeout: float, max_connections: int) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open = 0


class GuardedProtocol(asyncio.Protocol):
    """Forwards everything to `inner`; closes the connection when `limits` say so."""

    def __init__(self, inner: asyncio.Protocol, limits: ConnectionLimits) -> None:
        self._inner = inner
        self._limits = limits
        self._transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limits.open >= self._limits.max_connections:
            _abort(transport)
            return
        self._limits.open += 1
        self._admitted = True
        self._transport = transport
        self._arm()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._limits.open -= 1
        self._disarm()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._watch_headers(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _watch_headers(self, data: bytes) -> None:
        window = self._tail + data
        end = window.rfind(_END_OF_HEADERS)
        if end < 0:
            self._tail = window[-3:]
            if self._deadline is None:
                self._arm()
            return
        self._disarm()
        rest = window[end + len(_END_OF_HEADERS) :]
        self._tail = rest[-3:]
        if rest:  # a pipelined request began in the same chunk
            self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._limits.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._transport is not None:
            _abort(self._transport)


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close at once: a graceful close (a TLS shutdown) would wait on the slow client."""
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


def guarded(factory: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for `loop.create_server` that applies `limits` to `factory`'s."""
    return lambda: GuardedProtocol(factory(), limits)

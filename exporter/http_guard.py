"""Connection limits for the HTTP servers: a bound on request read time and on open connections.

aiohttp's server has no header read timeout (a client sending one header byte a second keeps
its connection, and a handler slot, open indefinitely) and no connection cap. Both are added
here as an asyncio protocol wrapped around the one aiohttp creates for each connection (the
public `AppRunner.server` protocol factory, served with `loop.create_server` as aiohttp's own
`TCPSite` does). The wrapper passes every byte through unchanged and only watches where each
request ends: the blank line after its headers, then the `Content-Length` bytes of its body
(a chunked body ends with a blank line too). A request still incomplete `header_timeout`
seconds after its first byte (or after the connection opened) gets the connection closed, so a
body sent slowly, or announced and never sent, is bounded like slow headers (the webhook
listener takes bodies). Idle keep-alive connections are aiohttp's to close (its public
`keepalive_timeout`, set to `DEFAULT_IDLE_TIMEOUT` by the servers).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

DEFAULT_HEADER_TIMEOUT: Final = 10.0
"""Seconds a client may take to send a request's headers and body (Prometheus and bem send
them at once)."""
DEFAULT_IDLE_TIMEOUT: Final = 75.0
"""Seconds an idle keep-alive connection stays open (aiohttp's `keepalive_timeout`, whose own
default, an hour, would let idle connections hold the slots below)."""
DEFAULT_MAX_CONNECTIONS: Final = 100
"""Open connections at once; more are closed as they arrive (a few scrapers need a few)."""
_END_OF_HEADERS: Final = b"\r\n\r\n"
_MAX_HEAD: Final = 64 * 1024
"""Header bytes kept to find a body's length; aiohttp refuses far smaller header blocks."""
_CONTENT_LENGTH: Final = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_CHUNKED: Final = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.IGNORECASE | re.MULTILINE)


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
        self._head = bytearray()
        """The header block read so far (up to `_MAX_HEAD`), for the body's length."""
        self._body_left = 0
        """Bytes of the current request's body still to come (`Content-Length`)."""
        self._chunked = False
        """The current request's chunked body is still to come (it ends with a blank line)."""
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
        """Follow requests through `data`: armed from a request's first byte until its headers
        and body are complete."""
        view = memoryview(data)
        while view:
            if self._body_left:
                taken = min(len(view), self._body_left)
                self._body_left -= taken
                view = view[taken:]
                if not self._body_left:
                    self._disarm()
                continue
            view = self._watch_block(view)

    def _watch_block(self, view: memoryview) -> memoryview:
        """Headers (or a chunked body) up to their blank line; what follows it."""
        if self._deadline is None:
            self._arm()
        window = self._tail + bytes(view)
        end = window.find(_END_OF_HEADERS)
        if end < 0:
            self._keep(view)
            self._tail = window[-3:]
            return view[len(view) :]
        used = end + len(_END_OF_HEADERS) - len(self._tail)
        self._keep(view[:used])
        self._tail = b""
        head, self._head = bytes(self._head), bytearray()
        if self._chunked:  # the blank line ended a chunked body
            self._chunked = False
        else:
            length = _CONTENT_LENGTH.search(head)
            self._body_left = int(length.group(1)) if length else 0
            self._chunked = _CHUNKED.search(head) is not None
        if not self._body_left and not self._chunked:
            self._disarm()
        return view[used:]

    def _keep(self, part: memoryview) -> None:
        if not self._chunked and len(self._head) < _MAX_HEAD:
            self._head += part[: _MAX_HEAD - len(self._head)]

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

"""An httpx transport over httpcore's connection pool, on plain asyncio streams.

httpx's default transport reaches asyncio through AnyIO. Profiled in `bench/run.py`, that
layer was the largest single cost of a request: on every request (and every release) the
pool asks each pooled connection whether its socket is readable (the server closed it), which
AnyIO answers by building a dict of attribute getters and making a `poll()` system call, and
every read and write goes through AnyIO's stream and cancel-scope machinery. Here the
connections are asyncio streams (`asyncio.open_connection`, `StreamWriter.start_tls`): a
closed connection is known from the stream's own state, for free, and a read is one await.

The rest is httpx and httpcore unchanged, through their public interfaces: the pools
(`httpcore.AsyncConnectionPool`, one per connection: keep-alive, HTTP/1.1), h11, TLS from
`httpx.create_ssl_context`, and httpcore's exceptions raised as httpx's of the same name, as
httpx's own transport does. Proxies are not handled here: `exchange.Exchange` uses httpx's
own transport when the environment names a proxy for the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Final

import httpcore
import httpx

KEEPALIVE_SECONDS: Final = 5.0
"""httpx's default keep-alive expiry."""
DEFAULT_LANES: Final = 16
"""Connections when the limits set none."""
_SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection as an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            if timeout is None:
                return await self._reader.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("timed out reading") from None
        except OSError as error:
            raise httpcore.ReadError(str(error)) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out writing") from None
        except OSError as error:
            raise httpcore.WriteError(str(error)) from None

    async def aclose(self) -> None:
        # Not awaiting wait_closed(): a peer that never acknowledges must not hold a close up.
        self._writer.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            self._writer.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as error:
            self._writer.close()
            raise httpcore.ConnectError(str(error)) from None
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # asked of idle connections: has the server closed it?
            return self._reader.at_eof() or self._writer.is_closing()
        if info in ("ssl_object", "socket"):
            return self._writer.get_extra_info(info)
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections with asyncio (TCP_NODELAY is asyncio's default)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout("timed out connecting") from None
        except OSError as error:
            raise httpcore.ConnectError(str(error)) from None
        sock: socket.socket | None = writer.get_extra_info("socket")
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[_SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used by this client")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as httpx's of the same name (httpx names each one alike)."""
    try:
        yield
    except httpcore.TimeoutException as error:
        raise getattr(httpx, type(error).__name__, httpx.TimeoutException)(str(error)) from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as error:
        raise getattr(httpx, type(error).__name__, httpx.TransportError)(str(error)) from None


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: Any, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        try:
            with _as_httpx_errors():
                await self._stream.aclose()
        finally:
            self._done()


class _Lane:
    """A pool of one connection, and the requests it carries now (response bodies not closed)."""

    __slots__ = ("in_flight", "pool")

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self.pool = pool
        self.in_flight = 0

    def finished(self) -> None:
        self.in_flight -= 1


class AsyncioTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 through httpcore's pools on asyncio streams (see the module's docstring).

    One httpcore pool per connection (a lane), each request on an idle lane: httpcore's
    pool walks every connection, and for each idle one every connection again, on each
    request and each release, which with 16 connections was a third of a request's CPU. With
    BemClient's own limit on requests in flight (the lane count) a free lane always exists.
    """

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or httpx.create_ssl_context()
        expiry = limits.keepalive_expiry if limits.keepalive_expiry is not None else KEEPALIVE_SECONDS
        lanes = limits.max_connections or DEFAULT_LANES
        self._lanes = [
            _Lane(
                httpcore.AsyncConnectionPool(
                    ssl_context=context,
                    max_connections=1,
                    max_keepalive_connections=1,
                    keepalive_expiry=expiry,
                    http1=True,
                    http2=False,
                    network_backend=AsyncioBackend(),
                )
            )
            for _ in range(lanes)
        ]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        lane = self._lane()
        lane.in_flight += 1
        try:
            with _as_httpx_errors():
                response = await lane.pool.handle_async_request(core_request)
        except BaseException:
            lane.finished()
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, lane.finished),
            extensions=response.extensions,
        )

    def _lane(self) -> _Lane:
        """The first idle lane (so that the first lanes stay warm and the last ones' connections
        expire when fewer are needed), else the least busy."""
        for lane in self._lanes:
            if not lane.in_flight:
                return lane
        return min(self._lanes, key=_busy)

    async def aclose(self) -> None:
        for lane in self._lanes:
            await lane.pool.aclose()


def _busy(lane: _Lane) -> int:
    return lane.in_flight

"""One HTTP exchange with bem: a request built once and sent straight through an httpx transport.

`httpx.AsyncClient` merges URLs, headers, cookies and auth and walks its redirect and hook
machinery on every request; none of it applies here (one base URL, fixed headers, no cookies,
no redirects followed, our own hooks), and profiled in `bench/run.py` it cost about a fifth of
the exporter's CPU per finished call. `Exchange` keeps httpx's request and response types and
its transports (public interfaces: `httpx.Request`, `AsyncBaseTransport.handle_async_request`,
`Response.aiter_bytes` for gzip/deflate), and adds the two things the client did for us: the
timeouts, as the request extension httpcore reads, and a proxy named in the environment, for
which httpx's own transport is used (the asyncio one has no proxy support).
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Final

import httpx

from exporter.bem.transport import AsyncioTransport

CONNECT_TIMEOUT_CAP: Final = 10.0
_ACCEPT_ENCODING: Final = "gzip, deflate"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes


class TooLargeError(Exception):
    """The body passed the size limit while being read."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Exchange:
    """Sends requests to paths under `base_url` with fixed headers; one per client."""

    def __init__(
        self, base_url: str, headers: dict[str, str], *, timeout: float, connections: int, max_bytes: int
    ) -> None:
        self._base = base_url.rstrip("/") + "/"
        self._headers = httpx.Headers({**headers, "accept-encoding": _ACCEPT_ENCODING, "connection": "keep-alive"})
        self._timeouts = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_CAP)).as_dict()
        self._max_bytes = max_bytes
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        proxy = _proxy_for(base_url)
        self._transport: httpx.AsyncBaseTransport = (
            AsyncioTransport(limits) if proxy is None else httpx.AsyncHTTPTransport(limits=limits, proxy=proxy)
        )

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def send(self, path: str, params: dict[str, str] | None, body: bytes | None) -> Answer:
        """GET `path` (relative to the base URL), or POST `body` as JSON; the whole answer, its
        body read up to the size limit (`TooLargeError` past it)."""
        response = await self._transport.handle_async_request(self._request(path, params, body))
        try:
            return Answer(response.status_code, response.headers.get("retry-after"), await self._read(response))
        finally:
            await response.aclose()

    def _request(self, path: str, params: dict[str, str] | None, body: bytes | None) -> httpx.Request:
        # Joined as text: httpx parses a URL once either way, and `URL.join` (RFC 3986 resolution)
        # cost twice the whole request's construction.
        url = self._base + path
        extensions = {"timeout": self._timeouts}
        if body is None:
            return httpx.Request("GET", url, params=params, headers=self._headers, extensions=extensions)
        headers = httpx.Headers(self._headers)
        headers["content-type"] = "application/json"
        return httpx.Request("POST", url, params=params, headers=headers, content=body, extensions=extensions)

    async def _read(self, response: httpx.Response) -> bytes:
        """The decoded body, stopping as soon as it passes the size limit."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and "content-encoding" not in response.headers and int(declared) > self._max_bytes:
            raise TooLargeError(response.status_code)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > self._max_bytes:
                    raise TooLargeError(response.status_code)
        except httpx.DecodingError:
            return b""  # a corrupt gzip/deflate/brotli stream: a malformed body, retried as one
        return bytes(body)


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (`HTTPS_PROXY`, `ALL_PROXY`, ..., unless
    `NO_PROXY` covers its host), as httpx's client would pick it."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")

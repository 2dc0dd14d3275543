"""The API client's HTTP transport: aiohttp, behind the small part of httpx's API it uses.

Why not httpx itself: httpx (with httpcore, h11 and anyio) costs about 0.6 ms of CPU per
request on a 10 kB response, 1 ms with 16 connections in its pool (each request checks every
idle connection), while aiohttp costs about 0.07 ms. At one request per finished call that was
most of the exporter's CPU (docs/performance.md). The client still speaks httpx: `get()`
returns an object with `status_code`, `headers` and `aread()`, and failures are raised as
httpx's exception classes, so that retries and error messages stay one piece of code and an
httpx transport (a test's `MockTransport`) can still be plugged in instead.

The behaviour follows the httpx client it replaces: no redirects, a connect timeout and a
per-read timeout, at most `max_connections` connections, the proxy the environment names
(`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), and httpx's TLS trust store (certifi)
for https.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

import aiohttp
import httpx
from yarl import URL

_CONNECT_TIMEOUT: type[BaseException] | None = getattr(aiohttp, "ConnectionTimeoutError", None)  # aiohttp >= 3.10


class Response:
    """What the client reads of an answer: the body is read in full before it is returned."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    async def aread(self) -> bytes:
        return self.content


class AiohttpClient:
    """GET requests relative to `base_url` (which ends with `/` and may carry a path)."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
    ) -> None:
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._headers = dict(headers)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self._max_connections = max_connections
        self._proxy = _env_proxy(self._base)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        ssl = httpx.create_ssl_context() if self._base.startswith("https:") else True
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ssl=ssl)
        # trust_env would read ~/.netrc and the proxy variables on every request (8% of the
        # CPU); the proxy is looked up once instead, and the API key is the only credential.
        session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout, connector=connector)
        # aiohttp sends a GET again, once, when the server drops a reused connection; the
        # client's own retries (with backoff, counted per attempt) are the only ones wanted:
        # an API that drops every connection gets one probe per poll interval, not two.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        self._session = session
        return session

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Response:
        """GET `base_url + path` (already percent-encoded) with `params` as the query."""
        session = self._session or self._open()
        url = self._base + path
        if params:
            url += "?" + urlencode(params)
        try:
            async with session.get(URL(url, encoded=True), allow_redirects=False, proxy=self._proxy) as answer:
                body = await answer.read()
                return Response(answer.status, answer.headers, body)
        except aiohttp.ClientConnectorError as error:
            raise httpx.ConnectError(type(error).__name__) from None
        except TimeoutError as error:  # aiohttp's timeouts are TimeoutErrors too
            if _CONNECT_TIMEOUT is not None and isinstance(error, _CONNECT_TIMEOUT):
                raise httpx.ConnectTimeout("connect timeout") from None
            raise httpx.ReadTimeout("read timeout") from None
        except aiohttp.ServerDisconnectedError:
            raise httpx.RemoteProtocolError("server disconnected without sending a response") from None
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as error:
            raise httpx.ReadError(type(error).__name__) from None

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _env_proxy(base_url: str) -> str | None:
    """The proxy for the API's host from the environment (as httpx's `trust_env` did), once."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if not host or urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None

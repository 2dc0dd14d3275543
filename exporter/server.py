"""The exporter's HTTP server: /metrics, /healthz, /readyz, /status (aiohttp, in the poll loop's event loop).

The call metrics are rendered once per publish, in the background (`exporter.metrics.exposition`):
a scrape is answered on the event loop from the newest complete render plus the small
self-metrics part, so concurrent scrapes never wait on each other or on a render. Only a
variant never rendered before (the first scrape, an unusual Accept header) waits for its
render, in a dedicated one-thread executor so as not to stall the poll loop sharing this
event loop.

Connections go through `exporter.http_guard`: a bound on header read time and on open
connections (aiohttp has neither).

Basic auth, when configured, guards /metrics and /status: /healthz and /readyz stay open so that
orchestrator probes (Kubernetes, Docker) work without credentials; they reveal nothing but
"alive" and "ready".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from exporter.config import MetricsSettings
from exporter.http_guard import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionLimits,
    guarded,
)
from exporter.metrics import Metrics
from exporter.status import CONTENT_SECURITY_POLICY, StatusBoard, render_html, render_json

log = logging.getLogger(__name__)

_REALM = 'Basic realm="bem-exporter", charset="UTF-8"'
_INDEX = (
    "bem-exporter\n\n"
    "/metrics  Prometheus metrics (OpenMetrics with exemplars when asked for)\n"
    "/healthz  liveness\n"
    "/readyz   readiness: 200 after a successful poll, 503 otherwise\n"
    "/status   status page (HTML; /status.json for programs), when the exporter serves one\n"
)


class ServerError(OSError):
    """The server cannot start; `strerror` is one line naming the setting at fault."""


class HttpServer:
    """Serves the metrics and the health endpoints until `stop()`."""

    def __init__(
        self,
        settings: MetricsSettings,
        metrics: Metrics,
        ready: Callable[[], bool],
        status: StatusBoard | None = None,
        *,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._settings = settings
        self._idle_timeout = idle_timeout
        self._limits = ConnectionLimits(header_timeout, max_connections)
        self._status = status
        self._metrics = metrics
        self._ready = ready
        self._credentials: tuple[bytes, bytes] | None = None
        if settings.basic_auth is not None:
            self._credentials = (
                settings.basic_auth.username.encode(),
                settings.basic_auth.password.get().encode(),
            )
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._executor: ThreadPoolExecutor | None = None

    def routes(self) -> list[web.RouteDef]:
        """Every route the server answers; add new pages here."""
        return [
            web.get("/", self._index),
            web.get("/metrics", self._metrics_handler),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
            *(
                [web.get("/status", self._status_page), web.get("/status.json", self._status_json)]
                if self._status is not None
                else []
            ),
        ]

    async def start(self) -> str:
        """Listen; return the base URL (`http(s)://host:port`, the actual port if 0 was asked,
        and loopback when listening on every interface)."""
        ssl_context = tls_context(self._settings.tls_cert_file, self._settings.tls_key_file)
        app = web.Application()
        app.add_routes(self.routes())
        # No access log: a scrape every few seconds would drown the exporter's own logs.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=self._idle_timeout)
        await runner.setup()
        host, port = self._settings.listen_host, self._settings.listen_port
        try:
            self._listener = await listen_guarded(runner, host, port, ssl_context, self._limits)
        except OSError as error:
            await runner.cleanup()
            reason = error.strerror or str(error)
            raise ServerError(error.errno or 0, f"BEM_LISTEN: cannot listen on {host}:{port}: {reason}") from None
        self._runner = runner
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-render")
        return base_url(self._listener, host, port, ssl_context)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()  # closes the open connections too
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- handlers --------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=_INDEX)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            ready = self._ready()
        except Exception:  # a broken probe must answer "not ready", not 500
            log.exception("readiness check failed")
            ready = False
        if ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: no successful poll recently\n")

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        if self._credentials is not None and not self._authorised(request.headers.get("Authorization")):
            return web.Response(status=401, text="authentication required\n", headers={"WWW-Authenticate": _REALM})
        accept = request.headers.get("Accept")
        gzipped = "gzip" in request.headers.get("Accept-Encoding", "")
        served = self._metrics.exposition_if_rendered(accept, gzipped)
        if served is None:
            loop = asyncio.get_running_loop()
            served = await loop.run_in_executor(self._executor, self._metrics.exposition, accept, gzipped)
        body, content_type = served
        headers = {"Content-Type": content_type, "Cache-Control": "no-store", "Vary": "Accept, Accept-Encoding"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def _status_page(self, request: web.Request) -> web.Response:
        if self._credentials is not None and not self._authorised(request.headers.get("Authorization")):
            return _challenge()
        assert self._status is not None
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, **_STATUS_HEADERS}
        return web.Response(text=render_html(self._status.snapshot()), content_type="text/html", headers=headers)

    async def _status_json(self, request: web.Request) -> web.Response:
        if self._credentials is not None and not self._authorised(request.headers.get("Authorization")):
            return _challenge()
        assert self._status is not None
        body = render_json(self._status.snapshot())
        return web.Response(body=body, content_type="application/json", headers=_STATUS_HEADERS)

    def _authorised(self, header: str | None) -> bool:
        assert self._credentials is not None
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        expected_user, expected_password = self._credentials
        # Both comparisons always run (`&`, not `and`): the timing tells nothing either way.
        return bool(sep) & hmac.compare_digest(user, expected_user) & hmac.compare_digest(password, expected_password)


_STATUS_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _challenge() -> web.Response:
    return web.Response(status=401, text="authentication required\n", headers={"WWW-Authenticate": _REALM})


# --- shared with the webhook listener ------------------------------------------------------------


async def listen_guarded(
    runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext | None, limits: ConnectionLimits
) -> asyncio.Server:
    """What `web.TCPSite` does, with each connection's protocol wrapped in the guard."""
    handler_factory = runner.server
    assert handler_factory is not None  # set by setup()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        guarded(handler_factory, limits),
        host or None,
        port,
        ssl=ssl_context,
        ssl_handshake_timeout=limits.header_timeout if ssl_context is not None else None,
        reuse_address=True,
    )


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server side of TLS for `BEM_TLS_CERT_FILE`/`BEM_TLS_KEY_FILE`; None without them."""
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "reason", None) or error.strerror or str(error)
        raise ServerError(
            error.errno or 0, f"BEM_TLS_CERT_FILE/BEM_TLS_KEY_FILE: cannot load {cert!r} and {key!r}: {reason}"
        ) from None
    return context


def base_url(listener: asyncio.Server, host: str, asked_port: int, ssl_context: ssl.SSLContext | None) -> str:
    """`http(s)://host:port` of a listener: the actual port if 0 was asked, and loopback when
    listening on every interface."""
    scheme = "https" if ssl_context is not None else "http"
    return f"{scheme}://{_shown_host(host)}:{_bound_port(listener, asked_port)}"


def _bound_port(listener: asyncio.Server, asked: int) -> int:
    for sock in listener.sockets:
        address = sock.getsockname()
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked


def _shown_host(host: str) -> str:
    """A host for a URL that works from this machine: loopback for the wildcard addresses."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host

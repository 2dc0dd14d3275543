"""The webhook listener: a second aiohttp server that answers only `POST /webhook`.

It is meant to be exposed to bem (through an ingress) while `/metrics` and `/status` stay
private, so it serves nothing else: other paths are 404, other methods 405. Connections go
through the same guard as the metrics server (`exporter.http_guard`: a bound on the time to
send a request, headers and body, and on open connections), with its own limits, so a
slow-loris here takes no slot of the metrics listener. TLS comes from the same settings.

The body is read up to `MAX_BODY` bytes: a larger one (announced or sent) is answered 413
without being read further, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiohttp import StreamReader, web

from exporter.config import MetricsSettings, WebhookSettings
from exporter.http_guard import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, ConnectionLimits
from exporter.server import ServerError, base_url, listen_guarded, tls_context
from exporter.webhooks.intake import Answer, Intake
from exporter.webhooks.verify import SIGNATURE_HEADER

log = logging.getLogger("exporter.webhooks")

PATH: Final = "/webhook"
MAX_BODY: Final = 2**20
"""1 MiB: bem's events are a few KiB; a larger body is refused with 413."""
_READ_CHUNK: Final = 64 * 1024


class WebhookServer:
    def __init__(
        self,
        settings: WebhookSettings,
        tls: MetricsSettings,
        intake: Intake,
        *,
        request_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        assert settings.listen_host is not None, "a webhook server without BEM_WEBHOOK_LISTEN"
        self._host, self._port = settings.listen_host, settings.listen_port
        self._tls = tls
        self._intake = intake
        self._request_timeout = request_timeout
        self._idle_timeout = idle_timeout
        self._limits = ConnectionLimits(request_timeout, max_connections)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen; the base URL (the URL bem posts to is this plus `/webhook`)."""
        ssl_context = tls_context(self._tls.tls_cert_file, self._tls.tls_key_file)
        app = web.Application()
        app.add_routes([web.post(PATH, self._webhook)])
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=self._idle_timeout)
        await runner.setup()
        try:
            self._listener = await listen_guarded(runner, self._host, self._port, ssl_context, self._limits)
        except OSError as error:
            await runner.cleanup()
            reason = error.strerror or str(error)
            where = f"{self._host}:{self._port}"
            raise ServerError(error.errno or 0, f"BEM_WEBHOOK_LISTEN: cannot listen on {where}: {reason}") from None
        self._runner = runner
        return base_url(self._listener, self._host, self._port, ssl_context)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None

    async def _webhook(self, request: web.Request) -> web.Response:
        announced = request.content_length
        if announced is not None and announced > MAX_BODY:
            return _closing(_response(self._intake.too_large()))
        try:
            async with asyncio.timeout(self._request_timeout):
                body = await _read_bounded(request.content, MAX_BODY)
        except TimeoutError:
            return _closing(web.Response(status=408, text="request body too slow\n"))
        if body is None:
            return _closing(_response(self._intake.too_large()))
        return _response(await self._intake.take(body, request.headers.get(SIGNATURE_HEADER)))


async def _read_bounded(stream: StreamReader, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    while chunk := await stream.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _response(answer: Answer) -> web.Response:
    text = answer.result or "not made safe; retry later"
    return web.Response(status=answer.status, text=f"{text}\n", headers={"Cache-Control": "no-store"})


def _closing(response: web.Response) -> web.Response:
    """The rest of the request is not read: the connection cannot carry another one."""
    response.force_close()
    return response

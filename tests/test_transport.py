"""The API client's httpx transport on asyncio streams, against real servers on loopback:
keep-alive, request bodies, a connection the server closed, timeouts and refusals as httpx's exceptions, TLS,
and httpx's own transport when the environment names a proxy (unless `NO_PROXY` covers the API)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from exporter.bem.client import BemClient, ListQuery
from exporter.bem.transport import AsyncioTransport
from tests.test_traces import certificate  # noqa: F401  # the fixture

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@asynccontextmanager
async def _server(
    *, keepalive: float = 75.0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, set[object]]]:
    """An aiohttp server answering `/echo/{n}` with n bytes; yields its URL and the client
    ports it saw (one per connection)."""
    peers: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def posted(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/echo/{n}", echo)
    app.router.add_post("/posted", posted)
    runner = web.AppRunner(app, keepalive_timeout=keepalive)
    await runner.setup()
    sock = _listening()
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", peers
    finally:
        await runner.cleanup()


def test_keep_alive_connections_are_reused_and_bodies_arrive_whole() -> None:
    async def main() -> None:
        async with _server() as (url, peers), httpx.AsyncClient(transport=AsyncioTransport(LIMITS)) as client:
            for size in (0, 1, 70_000, 3_000_000):
                response = await client.get(f"{url}/echo/{size}")
                assert response.status_code == 200 and response.content == b"x" * size
            assert len(peers) == 1
            sent = b'{"document": "' + b"y" * 200_000 + b'"}'
            assert (await client.post(f"{url}/posted", content=sent)).content == sent
            bodies = await asyncio.gather(*(client.get(f"{url}/echo/10") for _ in range(20)))
            assert all(b.content == b"x" * 10 for b in bodies)
            assert len(peers) <= 4  # LIMITS.max_connections

    asyncio.run(main())


def test_a_connection_the_server_closed_is_not_reused() -> None:
    async def main() -> None:
        async with (
            _server(keepalive=0.2) as (url, peers),
            httpx.AsyncClient(transport=AsyncioTransport(LIMITS)) as client,
        ):
            assert (await client.get(f"{url}/echo/5")).content == b"xxxxx"
            await asyncio.sleep(0.6)  # the server closes the idle connection
            assert (await client.get(f"{url}/echo/5")).content == b"xxxxx"
            assert len(peers) == 2

    asyncio.run(main())


def test_silence_and_refusal_are_httpx_exceptions() -> None:
    async def main() -> None:
        silent = _listening()
        port = silent.getsockname()[1]
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        async with httpx.AsyncClient(transport=AsyncioTransport(LIMITS), timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://127.0.0.1:{port}/")
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{closed_port}/")
        silent.close()

    asyncio.run(main())


def test_tls_with_the_certificate_trusted_and_refused_otherwise(
    certificate: tuple[bytes, bytes],  # noqa: F811
    tmp_path: Path,
) -> None:
    cert, key = certificate
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def main() -> None:
        async with _server(tls=server_context) as (url, _):
            trusted = ssl.create_default_context(cafile=tmp_path / "cert.pem")
            async with httpx.AsyncClient(transport=AsyncioTransport(LIMITS, trusted)) as client:
                response = await client.get(f"{url}/echo/3")
                assert response.content == b"xxx"
                assert response.extensions["network_stream"].get_extra_info("ssl_object") is not None
            async with httpx.AsyncClient(transport=AsyncioTransport(LIMITS)) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"{url}/echo/3")

    asyncio.run(main())


def test_a_proxy_named_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        proxied: list[str] = []

        async def proxy(request: web.Request) -> web.Response:
            proxied.append(str(request.url))
            return web.json_response({"calls": [], "totalCount": 0})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = _listening()
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        try:
            client = BemClient(
                "http://bem.invalid", "key", "v3", timeout=5, max_concurrency=2, max_rps=100, max_attempts=1
            )
            async with client:
                page = await client.list_calls(ListQuery())
            assert not page.calls
            assert proxied and proxied[0].startswith("http://bem.invalid/v3/calls")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_no_proxy_covering_the_api_host_sends_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        seen: dict[str, list[str]] = {"proxy": [], "api": []}

        def recorder(name: str) -> web.Application:
            async def record(request: web.Request) -> web.Response:
                seen[name].append(request.path)
                return web.json_response({"calls": [], "totalCount": 0})

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", record)
            return app

        runners, ports = [], []
        for name in ("proxy", "api"):
            runner = web.AppRunner(recorder(name))
            await runner.setup()
            sock = _listening()
            ports.append(sock.getsockname()[1])
            await web.SockSite(runner, sock).start()
            runners.append(runner)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{ports[0]}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        try:
            url = f"http://127.0.0.1:{ports[1]}"
            async with BemClient(url, "key", "v3", timeout=5, max_concurrency=2, max_rps=100, max_attempts=1) as c:
                await c.list_calls(ListQuery())
        finally:
            for runner in runners:
                await runner.cleanup()
        assert seen == {"proxy": [], "api": ["/v3/calls"]}

    asyncio.run(main())

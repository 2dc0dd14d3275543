"""The API client's HTTP, httpx's `AsyncClient` through its public API, against real servers on
loopback: keep-alive, request bodies, chunked bodies, a connection the server closed or wrote an
unsolicited `408` on while it sat idle, silence and refusal, TLS trusted from the environment,
and proxies named in the environment (unless `NO_PROXY` covers the API)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from certificates import self_signed

from exporter.bem.client import ApiError, BemClient, ClientHooks, ListQuery

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
PAGE = json.dumps({"calls": [{"callID": "c1", "status": "running", "createdAt": "2024-05-01T10:00:00Z"}]}).encode()


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _client(url: str, *, codes: list[str] | None = None, **options: Any) -> BemClient:
    settings: dict[str, Any] = {"timeout": 5.0, "max_concurrency": 4, "max_rps": 1e6, "max_attempts": 1}
    settings.update(options)
    hooks = ClientHooks(request=lambda _endpoint, code, _s: codes.append(code)) if codes is not None else None
    return BemClient(url, "key", "v3", hooks=hooks, **settings)


def _raw(body: bytes) -> bytes:
    return body


async def _get(client: BemClient, path: str) -> bytes:
    return await client.get("/echo", path, None, _raw)


@asynccontextmanager
async def _aiohttp(*, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, set[object]]]:
    """An aiohttp server answering `GET /echo/{n}` with n bytes and `POST /posted` with the body
    it got; yields its URL and the client ports it saw (one per connection)."""
    peers: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def posted(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/echo/{n}", echo)
    app.router.add_post("/posted", posted)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = _listening()
    await web.SockSite(runner, sock, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}", peers
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _raw_server(serve: Serve) -> AsyncIterator[str]:
    """A plain asyncio server, for what a framework will not do; each connection is `serve`d."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _head(status: str, headers: dict[str, str]) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def _answer(body: bytes) -> bytes:
    return _head("200 OK", {"content-type": "application/json", "content-length": str(len(body))}) + body


def test_keep_alive_connections_are_reused_and_bodies_arrive_whole() -> None:
    async def main() -> None:
        async with _aiohttp() as (url, peers), _client(url) as client:
            for size in (0, 1, 70_000, 3_000_000):
                assert await _get(client, f"echo/{size}") == b"x" * size
            assert len(peers) == 1
            sent = b'{"document": "' + b"y" * 200_000 + b'"}'
            assert await client.post("/posted", "posted", sent, _raw, str) == sent
            bodies = await asyncio.gather(*(_get(client, "echo/10") for _ in range(20)))
            assert bodies == [b"x" * 10] * 20
            assert len(peers) <= 4  # max_concurrency

    asyncio.run(main())


def test_an_unsolicited_408_on_an_idle_connection_is_not_the_next_answer() -> None:
    """Some servers and proxies write `408 Request Timeout` on a keep-alive connection as they
    close it idle. The next request must get its own answer on a new connection, not that 408."""
    answered, closed = asyncio.Event(), asyncio.Event()
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        index = len(connections)
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(_answer(json.dumps({"connection": index}).encode()))
            await writer.drain()
            if index == 1:
                await answered.wait()  # the client has read it: the connection is idle in its pool
                writer.write(_head("408 Request Timeout", {"content-length": "0", "connection": "close"}))
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                closed.set()
                return

    async def main() -> None:
        codes: list[str] = []
        async with _raw_server(serve) as url, _client(url, codes=codes) as client:
            assert await client.get("/x", "x", None, json.loads) == {"connection": 1}
            answered.set()
            await closed.wait()  # the 408 sits unread in the idle connection's socket
            assert await client.get("/x", "x", None, json.loads) == {"connection": 2}
        assert codes == ["200", "200"]
        assert connections == [1, 2]

    asyncio.run(main())


def test_a_connection_the_server_closed_is_not_reused() -> None:
    """Closed without `connection: close`: the client learns it only from the socket."""
    closed = asyncio.Event()
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_answer(b"[1]"))
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async def main() -> None:
        async with _raw_server(serve) as url, _client(url) as client:
            assert await client.get("/x", "x", None, json.loads) == [1]
            await closed.wait()
            assert await client.get("/x", "x", None, json.loads) == [1]
        assert connections == [1, 2]

    asyncio.run(main())


def _chunked(body: bytes, pieces: int, *, gzipped: bool = False) -> list[bytes]:
    """`body` as a chunked answer, in `pieces` chunks (and writes)."""
    headers = {"content-type": "application/json", "transfer-encoding": "chunked"}
    if gzipped:
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
    size = -(-len(body) // pieces)
    chunks = [body[at : at + size] for at in range(0, len(body), size)]
    return [_head("200 OK", headers), *(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks), b"0\r\n\r\n"]


def test_chunked_answers_are_read_whole_and_the_connection_kept() -> None:
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        gzipped = False
        while await reader.readuntil(b"\r\n\r\n"):
            for piece in _chunked(PAGE, 5, gzipped=gzipped):
                writer.write(piece)
                await writer.drain()
            gzipped = True  # the second answer is gzipped too

    async def main() -> None:
        async with _raw_server(serve) as url, _client(url) as client:
            for _ in range(2):
                page = await client.list_calls(ListQuery())
                assert [call.call_id for call in page.calls] == ["c1"]
        assert connections == [1]

    asyncio.run(main())


def test_a_chunked_body_past_the_limit_is_too_large() -> None:
    """No length is declared: the bound is counted as the chunks arrive."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in _chunked(b" " * 50_000 + PAGE, 10):
            writer.write(piece)
            await writer.drain()

    async def main() -> None:
        too_large: list[str] = []
        async with _raw_server(serve) as url:
            client = BemClient(
                url, "key", "v3", timeout=5, max_concurrency=1, max_rps=1e6, max_response_bytes=10_000,
                hooks=ClientHooks(too_large=too_large.append),
            )  # fmt: skip
            async with client:
                with pytest.raises(ApiError) as caught:
                    await client.list_calls(ListQuery())
        assert caught.value.kind == "too_large" and too_large == ["/v3/calls"]

    asyncio.run(main())


def test_silence_times_out_and_refusal_cannot_connect() -> None:
    async def main() -> None:
        silent = _listening()
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
        closed.close()
        try:
            async with _client(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3) as client:
                with pytest.raises(ApiError, match=r"^/echo: timed out \(after 1 attempt\)$"):
                    await _get(client, "x")
            async with _client(f"http://127.0.0.1:{closed_port}") as client:
                with pytest.raises(ApiError, match=r"^/echo: cannot connect \(after 1 attempt\)$"):
                    await _get(client, "x")
        finally:
            silent.close()

    asyncio.run(main())


def test_tls_trusts_the_certificate_named_by_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def main() -> None:
        async with _aiohttp(tls=server_context) as (url, _):
            async with _client(url) as client:
                with pytest.raises(ApiError, match="cannot connect"):
                    await _get(client, "echo/3")
            monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))
            async with _client(url) as client:
                assert await _get(client, "echo/3") == b"xxx"

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

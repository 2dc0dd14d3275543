"""The HTTP server over real sockets: formats, health, readiness, basic auth, TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from certificates import self_signed

from exporter.config import BasicAuth, MetricsSettings, Secret
from exporter.metrics import Metrics
from exporter.server import HttpServer, ServerError
from tests.test_metrics import OPENMETRICS, make_call

Scenario = Callable[[str, httpx.AsyncClient], Awaitable[None]]


def serve(
    scenario: Scenario,
    *,
    ready: Callable[[], bool] = lambda: True,
    client_options: dict[str, Any] | None = None,
    **settings: Any,
) -> None:
    """Start a server on a free loopback port, run `scenario(base_url, client)`, stop it."""

    async def main() -> None:
        config = MetricsSettings(listen_host="127.0.0.1", listen_port=0, **settings)
        metrics = Metrics(config, "9.9.9")
        metrics.recorder.stage([make_call("c1")])
        metrics.recorder.publish()
        server = HttpServer(config, metrics, ready)
        url = await server.start()
        try:
            async with httpx.AsyncClient(timeout=10, **(client_options or {})) as client:
                await scenario(url, client)
        finally:
            await server.stop()

    asyncio.run(main())


def test_metrics_in_both_formats() -> None:
    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        plain = await client.get(f"{url}/metrics")
        assert plain.status_code == 200
        assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert plain.headers["content-encoding"] == "gzip"  # httpx asks for it, and decodes it
        assert 'bem_calls_total{status="completed",workflow_name="invoice-intake"} 1.0' in plain.text
        assert 'trace_id="' not in plain.text
        openmetrics = await client.get(f"{url}/metrics", headers={"Accept": OPENMETRICS})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert '# {trace_id="' in openmetrics.text and openmetrics.text.endswith("# EOF\n")
        identity = await client.get(f"{url}/metrics", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in identity.headers and "bem_calls_total" in identity.text
        index = await client.get(f"{url}/")
        assert "/metrics" in index.text

    serve(scenario)


def test_health_and_readiness() -> None:
    state = {"ready": False}

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        assert (await client.get(f"{url}/healthz")).status_code == 200
        assert (await client.get(f"{url}/readyz")).status_code == 503
        state["ready"] = True
        assert (await client.get(f"{url}/readyz")).status_code == 200

    serve(scenario, ready=lambda: state["ready"])


def test_a_failing_readiness_check_reads_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        assert (await client.get(f"{url}/readyz")).status_code == 503

    serve(scenario, ready=broken)


def test_basic_auth_guards_metrics_only() -> None:
    auth = BasicAuth("prometheus", Secret("s3cr3t:with colon"))

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        anonymous = await client.get(f"{url}/metrics")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith('Basic realm="bem-exporter"')
        assert "bem_calls_total" not in anonymous.text
        wrong = await client.get(f"{url}/metrics", auth=("prometheus", "nope"))
        assert wrong.status_code == 401
        garbage = await client.get(f"{url}/metrics", headers={"Authorization": "Basic !!notbase64"})
        assert garbage.status_code == 401
        right = await client.get(f"{url}/metrics", auth=("prometheus", "s3cr3t:with colon"))
        assert right.status_code == 200 and "bem_calls_total" in right.text
        # probes need no credentials
        assert (await client.get(f"{url}/healthz")).status_code == 200
        assert (await client.get(f"{url}/readyz")).status_code == 200

    serve(scenario, basic_auth=auth)


def _self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    cert, key = self_signed()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return str(cert_path), str(key_path)


def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=cert)

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        assert url.startswith("https://127.0.0.1:")
        response = await client.get(f"{url}/metrics")
        assert response.status_code == 200 and "bem_calls_total" in response.text
        async with httpx.AsyncClient(timeout=10) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"{url}/healthz")
        plain = url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):
            await client.get(f"{plain}/healthz")

    serve(scenario, client_options={"verify": trust}, tls_cert_file=cert, tls_key_file=key)


def test_unusable_listen_address_is_one_clear_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]

    async def main() -> None:
        settings = MetricsSettings(listen_host="127.0.0.1", listen_port=port)
        server = HttpServer(settings, Metrics(settings, "9.9.9"), lambda: True)
        with pytest.raises(ServerError, match=rf"BEM_LISTEN: cannot listen on 127.0.0.1:{port}"):
            await server.start()
        await server.stop()
        (tmp_path / "bad.pem").write_text("not a certificate")
        bad = MetricsSettings(
            listen_host="127.0.0.1",
            listen_port=0,
            tls_cert_file=str(tmp_path / "bad.pem"),
            tls_key_file=str(tmp_path / "bad.pem"),
        )
        with pytest.raises(ServerError, match="BEM_TLS_CERT_FILE"):
            await HttpServer(bad, Metrics(bad, "9.9.9"), lambda: True).start()

    try:
        asyncio.run(main())
    finally:
        taken.close()


# --- connection limits ---------------------------------------------------------------------------


async def _slow_headers(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.Task[int]]:
    """A client that starts a request and then sends one header byte every 0.1 s, forever;
    the task returns how many bytes it sent once the server stops taking them."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def trickle() -> int:
        sent = 0
        try:
            while True:
                await asyncio.sleep(0.1)
                writer.write(b"a")
                await writer.drain()
                sent += 1
        except (ConnectionError, OSError):
            return sent
        finally:
            writer.close()

    return reader, asyncio.create_task(trickle())


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), timeout=60)
    except ConnectionResetError:
        return True
    return data == b""  # no response, just the end of the stream


def _guarded_server(scenario: Callable[[str, int, str], Awaitable[None]], **limits: Any) -> None:
    async def main() -> None:
        config = MetricsSettings(listen_host="127.0.0.1", listen_port=0)
        server = HttpServer(config, Metrics(config, "9.9.9"), lambda: True, **limits)
        url = await server.start()
        try:
            await scenario("127.0.0.1", int(url.rsplit(":", 1)[1]), url)
        finally:
            await server.stop()

    asyncio.run(main())


def test_slow_header_connections_are_closed_and_do_not_block_scrapes() -> None:
    async def scenario(host: str, port: int, url: str) -> None:
        slow = [await _slow_headers(host, port) for _ in range(50)]
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(f"{url}/metrics")
        assert response.status_code == 200 and "bem_exporter_up" in response.text
        closed = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in slow))
        assert all(closed)
        sent = await asyncio.gather(*(task for _, task in slow))
        # the server hung up while the clients were still sending (not after they gave up)
        assert all(count >= 1 for count in sent)

    _guarded_server(scenario, header_timeout=1.0)


def test_connections_beyond_the_cap_are_refused_until_slots_free_up() -> None:
    async def scenario(host: str, port: int, url: str) -> None:
        slow = [await _slow_headers(host, port) for _ in range(3)]
        await asyncio.sleep(0.2)  # let the server accept all three
        extra_reader, extra_writer = await asyncio.open_connection(host, port)
        extra_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _closed_by_server(extra_reader)
        extra_writer.close()
        assert all(await asyncio.gather(*(_closed_by_server(reader) for reader, _ in slow)))
        await asyncio.gather(*(task for _, task in slow))
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200

    _guarded_server(scenario, header_timeout=2.0, max_connections=3)


def test_idle_keep_alive_connections_are_closed() -> None:
    async def scenario(host: str, port: int, url: str) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(len(b"ok\n"))
        assert await _closed_by_server(reader)  # nothing more was sent: the server hung up
        writer.close()

    _guarded_server(scenario, idle_timeout=1.0)

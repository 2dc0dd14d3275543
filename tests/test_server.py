"""The HTTP server over real sockets: formats, health, readiness, basic auth, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

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
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
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

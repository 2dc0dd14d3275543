"""The one redactor: URLs lose userinfo, query and fragment; text loses secrets and length."""

from __future__ import annotations

from exporter.redact import MASK, redact_text, safe_url


def test_url_keeps_scheme_host_port_and_path_only() -> None:
    assert safe_url("https://user:pw@api.example:8443/v3/calls?sig=abc#frag") == "https://api.example:8443/v3/calls"


def test_url_without_scheme_never_shows_its_password() -> None:
    shown = safe_url("user:pw@host:5432/db")
    assert "pw" not in shown
    assert shown == "host:5432/db"


def test_ipv6_host_keeps_its_brackets() -> None:
    assert safe_url("http://[::1]:4318/v1/traces") == "http://[::1]:4318/v1/traces"


def test_unparseable_url_is_masked_whole() -> None:
    assert safe_url("http://host:notaport/") == MASK


def test_text_has_urls_cut_secrets_masked_and_length_bounded() -> None:
    text = "failed: see https://bucket.s3.example/doc.pdf?X-Amz-Signature=deadbeef with key sk-123"
    shown = redact_text(text, secrets=["sk-123"], limit=60)
    assert "deadbeef" not in shown and "sk-123" not in shown
    assert shown.startswith("failed: see https://bucket.s3.example/doc.pdf with key")
    assert len(redact_text("x" * 500, limit=256)) == 256

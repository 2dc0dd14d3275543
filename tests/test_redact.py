"""The one redactor: URLs lose userinfo, query and fragment; text loses tokens, secrets and
length; names from the API pass the same way, bounded and cached."""

from __future__ import annotations

import json
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.bem.decode import decode_call_page, decode_trace
from exporter.canary.judge import new_reference
from exporter.redact import MASK, MAX_NAME_LENGTH, known_safe, mask_tokens, redact_text, safe_name, safe_url


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


# --- tokens -----------------------------------------------------------------------------------

RANDOM_KEY = "q7ZkP2mXv9LbR4tW8yNc3JdH6sGf1AeU5oKi0QxTj"  # 41 random letters and digits


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("api_key=abc123", "api_key=***"),
        ("X-Amz-Security-Token: FQoGZXIvYXdzE", "X-Amz-Security-Token: ***"),
        ('{"client_secret": "s3cr3t value"}', '{"client_secret": ***}'),
        ("PASSWORD='hunter 2'", "PASSWORD=***"),
        ("Authorization: Bearer abc.def1", "Authorization: Bearer ***"),
        ("sent Basic dXNlcjpwYXNzMQ== upstream", "sent Basic *** upstream"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmN", "jwt ***"),
        ("key AKIAIOSFODNN7EXAMPLE used", "key *** used"),
        ("ghp_" + "a1B2c3D4e5" * 4, "***"),
        ("sk-proj-" + "Ab1" * 10, "***"),
        ("sk_live_" + "Zx9" * 8, "***"),
        ("xoxb-123456789012-abcdef", "***"),
        ("AIza" + "Sy1" * 12, "***"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- after", "*** after"),
        (f"failed with {RANDOM_KEY}", "failed with ***"),
    ],
)
def test_tokens_are_masked(text: str, shown: str) -> None:
    assert mask_tokens(text) == shown


@pytest.mark.parametrize(
    "name",
    [
        "invoice-intake",
        "ExtractInvoiceLineItems",
        "InvoiceExtractorV2ForCustomers2024Europe",
        "invoice_extraction_pipeline_v2_production_europe_west",
        "report-2024-01-15-monthly-summary-q1-final-version-2",
        "sk-learn-feature-extraction-pipeline",
        "wf_2c9AXIj48cUYJtCuv1gsQtHGDzK",  # bem's ids: a prefix and a 27-character KSUID
        "3d5434dc-aa64-4cbe-850a-b04e5e5e151b",
        "4e01ad0410f449cfb2a4a59d74010bd53cdac2c1938d4e4eb5db1d49655ea443",
        "token_expired",
        "the signature check failed",
        "basic extraction failed",
        "timeout after 30s",
        "bem-exporter-canary-20261130T060000-ab12cd34",
    ],
)
def test_names_and_ids_are_not_tokens(name: str) -> None:
    assert safe_name(name) == name


def test_random_runs_are_masked_whatever_their_draw() -> None:
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits
    draws = ["".join(rng.choice(alphabet) for _ in range(48)) for _ in range(500)]
    masked = sum(mask_tokens(draw) == MASK for draw in draws)
    assert masked >= 495, masked  # a draw without a digit or with long single-case stretches may pass


# --- names ------------------------------------------------------------------------------------


def test_a_name_is_cut_down_masked_and_bounded() -> None:
    signed = "https://bucket.s3.example/doc.pdf?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
    assert safe_name(f"fetch {signed}") == "fetch https://bucket.s3.example/doc.pdf"
    assert safe_name(f"kind token={RANDOM_KEY[:12]}") == "kind token=***"
    assert safe_name("x" * 5000) == "x" * MAX_NAME_LENGTH
    assert safe_name("line\nforged\x00") == "line forged "


def test_a_cut_never_keeps_half_a_token_behind_a_shrinking_url() -> None:
    # The URL's query shrinks away, pulling what follows into the kept part: the word the
    # pre-scan cut fell into must not come along (its half would be too short to recognise).
    text = "https://h.example/p?" + "q" * 480 + " " + RANDOM_KEY * 3
    shown = safe_name(text)
    assert RANDOM_KEY[:8] not in shown
    assert shown.startswith("https://h.example/p")


def test_known_safe_learns_the_names_that_pass_unchanged() -> None:
    name = f"fresh-name-{random.random()}"
    assert not known_safe([name, None])
    safe_name(name)
    assert known_safe([name, None])
    safe_name("leaks https://h.example/?sig=1")
    assert not known_safe(["leaks https://h.example/?sig=1"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600), st.text(max_size=600))
def test_a_safe_name_is_bounded_and_never_carries_a_query(before: str, after: str) -> None:
    shown = safe_name(f"{before} https://b.example/k.pdf?X-Amz-Signature=SIGMARK {after}")
    assert len(shown) <= MAX_NAME_LENGTH
    assert not any(ch in shown for ch in "\n\r\x00\x1b")
    assert "SIGMARK" not in shown


# --- at decoding ------------------------------------------------------------------------------


def test_decoding_makes_every_name_safe_and_keeps_the_ids_as_sent() -> None:
    signed = "https://files.example/in.pdf?X-Amz-Signature=SIGMARK"
    call_id = f"cl_{signed}"  # an id is an id: the trace id and the API's paths need it as sent
    names = {field: f"{field} {signed}" for field in ("workflowName", "workflowID", "callReferenceID", "status")}
    page = decode_call_page(
        json.dumps({"calls": [{"callID": call_id, "createdAt": "2026-01-01T00:00:00Z", **names}]}).encode()
    )
    (call,) = page.calls
    assert call.call_id == call_id and page.ids == [call_id]
    assert [getattr(call, field) for field in ("workflow_name", "workflow_id", "reference_id", "status")] == [
        f"{field} https://files.example/in.pdf" for field in names
    ]
    function_call = {"functionCallID": "fc-1", "sourceEventID": signed, "functionName": "f " + "x" * 400}
    event = {"eventID": "ev-1", "eventType": "error", "kind": f"Bearer {RANDOM_KEY}", "message": signed}
    trace = decode_trace(json.dumps({"trace": {"functionCalls": [function_call], "events": [event]}}).encode())
    assert trace.function_calls[0].source_event_id == signed
    assert trace.function_calls[0].function_name == ("f " + "x" * 400)[:MAX_NAME_LENGTH]
    assert trace.events[0].kind == "Bearer ***"
    assert trace.events[0].message == signed  # free text by nature: redacted where it is exported


def test_the_canarys_reference_ids_pass_unchanged() -> None:
    # The canary finds its calls by their reference id: safe_name must leave it as it made it.
    references = {new_reference(1_700_000_000.0 + 3_600 * hour) for hour in range(300)}
    assert all(safe_name(reference) == reference for reference in references)

"""Unexpected errors are reported as what they are: a bug in a re-read of undelivered calls or
in the OTLP transport is logged at warning with its type and (redacted) message and counted in
`bem_exporter_unexpected_errors_total{site}`, while the work goes on (retried, spans kept); a
body whose gzip is corrupt is an error that says so, never an empty body."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import CollectingExporter
from hostile_api import HostileApi, Reply
from prometheus_client import generate_latest
from test_traces import BATCH, payload

from exporter.bem.client import ApiError, BemClient, ListQuery
from exporter.config import TraceSettings
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.observer import SelfMetrics
from exporter.pipeline import NullObserver, Refetched, SourceUnavailableError, UnexpectedSite
from exporter.state.sqlite import SqliteStore
from exporter.state.store import Changes
from exporter.traces.delivery import Delivery, Retention
from exporter.traces.sink import OtlpSpanExporter
from exporter.traces.spans import SpanBuilder, make_resource
from exporter.traces.transport import Outcome

SECRET = "X-Amz-Signature=s3cr3t"
BUG = f"no 'workflowName' in https://bem.example/doc.pdf?{SECRET}"


class Sites(NullObserver):
    def __init__(self) -> None:
        self.sites: list[UnexpectedSite] = []

    def unexpected_error(self, site: UnexpectedSite) -> None:
        self.sites.append(site)


class FailingSource:
    """A TraceSource that fails with `errors` in turn, then finds every call gone."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.reads = 0

    async def refetch(self, call_ids: Sequence[str]) -> Refetched:
        self.reads += 1
        if self.errors:
            raise self.errors.pop(0)
        return Refetched(gone=set(call_ids))


def _delivered_after(source: FailingSource, tmp_path: Path, observer: Sites) -> bool:
    """Delivery of one call left unexported, from `source`, until it is done (or 30 s)."""

    async def main() -> bool:
        store = await SqliteStore.open(str(tmp_path / "state.sqlite"))
        try:
            await store.commit(Changes(handled=[("call-1", time.time())]))
            retention = Retention(window=86_400.0, every=86_400.0)
            delivery = Delivery(CollectingExporter(), store, source, observer, 10, retention)
            await delivery.reload()
            deadline = time.monotonic() + 30
            while not await delivery.deliver():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.05)  # the re-read waits for its backoff (1 s), then goes on
            return await store.count_unexported() == 0
        finally:
            await store.close()

    return asyncio.run(main())


def test_a_bug_in_a_re_read_is_named_counted_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.traces.delivery")
    source, observer = FailingSource(TypeError(BUG)), Sites()
    assert _delivered_after(source, tmp_path, observer)
    assert source.reads == 2 and observer.sites == ["span_delivery"]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "refetch of undelivered calls failed unexpectedly"
    assert warning.__dict__["error"] == "TypeError: no 'workflowName' in https://bem.example/doc.pdf"
    assert SECRET not in caplog.text


def test_the_api_failing_a_re_read_is_not_a_bug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.traces.delivery")
    source, observer = FailingSource(SourceUnavailableError("/v3/calls: HTTP 503 (after 5 attempts)")), Sites()
    assert _delivered_after(source, tmp_path, observer)
    assert source.reads == 2 and observer.sites == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class _BuggyTransport:
    def __init__(self) -> None:
        self.fail = True

    def send(self, body: bytes) -> Outcome:
        if self.fail:
            raise RuntimeError(f"bug at https://collector.example/v1/traces?{SECRET}")
        return Outcome("accepted")

    def close(self) -> None:
        raise ValueError("closing twice")


def test_a_bug_in_the_otlp_transport_is_named_counted_and_the_spans_kept(caplog: pytest.LogCaptureFixture) -> None:
    transport, observer = _BuggyTransport(), Sites()
    settings = TraceSettings(endpoint="http://127.0.0.1:9/v1/traces", timeout=5.0)
    sink = OtlpSpanExporter(SpanBuilder(resource=make_resource("bem")), settings, observer, transport=transport)
    try:
        assert sink.export(BATCH) is None  # kept for the next try, as for an outage
        transport.fail = False
        assert sink.export([payload("call-7")]) == 3
    finally:
        sink.shutdown()  # the close fails too: named and counted, the shutdown goes on
    assert observer.sites == ["span_export", "span_export"]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[0] == (
        "OTLP trace export: unexpected error sending spans: RuntimeError: bug at https://collector.example/v1/traces"
    )
    assert "unexpected error: RuntimeError" in lines[1]  # the failing export's one line names it too
    assert lines[-1] == "OTLP trace export: unexpected error closing the OTLP transport: ValueError: closing twice"
    assert SECRET not in caplog.text


def test_unexpected_errors_are_a_self_metric_from_zero() -> None:
    metrics = SelfMetrics(LabelPolicy(100), "test")
    metrics.unexpected_error("span_export")
    text = generate_latest(metrics.registry).decode()
    assert 'bem_exporter_unexpected_errors_total{site="span_delivery"} 0.0' in text
    assert 'bem_exporter_unexpected_errors_total{site="span_export"} 1.0' in text


@pytest.fixture
def api() -> Iterator[tuple[HostileApi, str]]:
    hostile = HostileApi()
    with hostile as url:
        yield hostile, url


def test_a_corrupt_gzip_body_is_an_error_that_says_so(
    api: tuple[HostileApi, str], caplog: pytest.LogCaptureFixture
) -> None:
    hostile, url = api
    corrupt = Reply(body=b"\x1f\x8b not gzip at all", headers={"content-encoding": "gzip"})
    hostile.fault = lambda _target, _reply: corrupt

    async def main() -> None:
        async with BemClient(url, "key", "v3", timeout=5, max_concurrency=1, max_rps=1e6, max_attempts=2) as client:
            await client.list_calls(ListQuery())

    with pytest.raises(ApiError) as caught:
        asyncio.run(main())
    assert str(caught.value).startswith(
        "/v3/calls: response body is corrupt: its gzip encoding cannot be decoded (DecodingError: "
    )
    assert str(caught.value).endswith(" (after 2 attempts)")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == ["bem API sent a body whose compression is corrupt"] * 2
    assert warned[0].__dict__["encoding"] == "gzip" and warned[0].__dict__["error"].startswith("DecodingError: ")

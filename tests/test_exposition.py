"""Scrapes served from the cached exposition: once a publish's render is done, what concurrent
scrapers get equals a fresh render, in both formats, gzip or not; before that, they get the
previous render whole; the call metrics are rendered once per publish, not once per scrape."""

from __future__ import annotations

import asyncio
import gzip
import time

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.config import MetricsSettings
from exporter.metrics import SHARE_SECONDS, Metrics
from exporter.metrics.render import StoreRenderer
from exporter.server import HttpServer
from tests.test_metrics import OPENMETRICS, make_call

SCRAPERS = 20
PUBLISHES = 4


def _fresh_calls_part(metrics: Metrics, accept: str | None) -> bytes:
    if accept is None:
        return generate_latest(metrics.calls_registry)
    return openmetrics.generate_latest(metrics.calls_registry).removesuffix(b"# EOF\n")


async def _scrape(client: httpx.AsyncClient, url: str, accept: str | None, gzipped: bool) -> bytes:
    headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
    if accept is not None:
        headers["Accept"] = accept
    async with client.stream("GET", f"{url}/metrics", headers=headers) as response:
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    if gzipped:
        assert response.headers["content-encoding"] == "gzip"
        return gzip.decompress(raw)
    assert "content-encoding" not in response.headers
    return raw


def _check(body: bytes, fresh: bytes, accept: str | None) -> None:
    assert body.startswith(fresh)
    text = body.decode()
    if accept is None:
        names = {family.name for family in parse_text(text)}
    else:
        assert text.endswith("# EOF\n") and text.count("# EOF") == 1
        names = {family.name for family in parse_openmetrics(text)}
    assert {"bem_calls", "bem_exporter_up"} <= names or {"bem_calls_total", "bem_exporter_up"} <= names


def test_concurrent_scrapers_get_a_fresh_render_after_each_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    store_renders = 0
    store_render = StoreRenderer.render

    def counting_store_render(self: StoreRenderer, content_type: str) -> bytes | None:
        nonlocal store_renders
        store_renders += 1
        return store_render(self, content_type)

    monkeypatch.setattr(StoreRenderer, "render", counting_store_render)

    async def main() -> None:
        config = MetricsSettings(listen_host="127.0.0.1", listen_port=0)
        metrics = Metrics(config, "9.9.9")
        renders = 0
        collect = metrics.recorder.collect

        def counting_collect():  # type: ignore[no-untyped-def]
            nonlocal renders
            renders += 1
            return collect()

        metrics.recorder.collect = counting_collect  # type: ignore[method-assign]
        server = HttpServer(config, metrics, lambda: True)
        url = await server.start()
        try:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=SCRAPERS)) as client:
                for batch in range(PUBLISHES):
                    metrics.recorder.stage([make_call(f"c{batch}-{i}", workflow=f"wf{i}") for i in range(5)])
                    metrics.recorder.publish()
                    await asyncio.to_thread(metrics.exposition, OPENMETRICS)  # the publish's render is done
                    renders_before = renders
                    store_renders_before = store_renders
                    for accept in (None, OPENMETRICS):
                        for gzipped in (False, True):
                            bodies = await asyncio.gather(
                                *(_scrape(client, url, accept, gzipped) for _ in range(SCRAPERS))
                            )
                            fresh = _fresh_calls_part(metrics, accept)
                            for body in bodies:
                                _check(body, fresh, accept)
                    # the scrapes rendered nothing: only the fresh renders of this test did
                    assert renders - renders_before == 4
                    # nor did the store's renderer: each format is rendered once per publish
                    assert store_renders == store_renders_before
                    value = f'bem_calls_total{{status="completed",workflow_name="wf0"}} {batch + 1}.0'
                    assert value.encode() in bodies[0]
        finally:
            await server.stop()

    asyncio.run(main())


def test_a_scrape_during_a_render_gets_one_whole_version_and_then_the_new_one() -> None:
    metrics = Metrics(MetricsSettings(), "9.9.9")
    metrics.recorder.stage([make_call("c0")])
    metrics.recorder.publish()
    for accept in (None, OPENMETRICS):
        metrics.exposition(accept)  # both variants rendered once
    for batch in range(1, 20):
        previous = {accept: _fresh_calls_part(metrics, accept) for accept in (None, OPENMETRICS)}
        metrics.recorder.stage([make_call(f"c{batch}")])
        metrics.recorder.publish()
        current = {accept: _fresh_calls_part(metrics, accept) for accept in (None, OPENMETRICS)}
        for accept in (None, OPENMETRICS):
            served = metrics.exposition_if_rendered(accept)
            assert served is not None
            assert served[0].startswith(previous[accept]) or served[0].startswith(current[accept])
            waited = metrics.exposition(accept)[0]  # guaranteed current
            assert waited.startswith(current[accept])
            if accept is None:  # the same families as one render of the registry holding both parts
                whole = {family.name for family in parse_text(generate_latest(metrics.registry).decode())}
                assert {family.name for family in parse_text(waited.decode())} == whole
            assert f'workflow_name="invoice-intake"}} {batch + 1}.0'.encode() in waited


def test_shared_self_metrics_are_never_older_than_the_sharing_window() -> None:
    metrics = Metrics(MetricsSettings(), "9.9.9")
    metrics.exposition(OPENMETRICS, gzipped=True)
    metrics.observer.spans_exported(1, 5)
    first = metrics.exposition_if_rendered(OPENMETRICS, gzipped=True)
    assert first is not None and b"bem_exporter_spans_exported_total 5.0" in gzip.decompress(first[0])
    metrics.observer.spans_exported(1, 2)
    time.sleep(SHARE_SECONDS * 1.5)
    later = metrics.exposition_if_rendered(OPENMETRICS, gzipped=True)
    assert later is not None and b"bem_exporter_spans_exported_total 7.0" in gzip.decompress(later[0])

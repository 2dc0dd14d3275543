"""The Prometheus metrics sink: counted call metrics, self-metrics, and their exposition.

`Metrics` is the one object the CLI builds; it hands `.recorder` (a `CallRecorder`) and
`.observer` (an `Observer`) to the poll loop, and `.exposition()` to the HTTP server.
Modules: `store` (series storage, staging, snapshots), `labels` (cardinality control),
`recorder` (finished calls -> counts), `observer` (self-metrics), `exemplars` (trace links),
`exposition` (scrape bodies, cached between publishes), `render` (the call metrics' bodies,
straight from the store, re-rendering only the series a publish changed).
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from exporter.config import MetricsSettings
from exporter.metrics.exemplars import exemplar_labels
from exporter.metrics.exposition import MAX_VARIANTS, CachedExposition, render_live
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.observer import SelfMetrics
from exporter.metrics.recorder import DEFAULT_MAX_SERIES_PER_FAMILY, MetricsRecorder, ScrapeFigures
from exporter.metrics.render import StoreRenderer

SHARE_SECONDS: Final = 0.1
"""Scrapes arriving within this long of each other get the same body (self-metrics included):
a burst of concurrent scrapers then costs one self-metrics render, not one each."""

__all__ = [
    "DEFAULT_MAX_SERIES_PER_FAMILY",
    "LabelPolicy",
    "Metrics",
    "MetricsRecorder",
    "ScrapeFigures",
    "SelfMetrics",
]


class Metrics:
    """Everything Prometheus sees: the call metrics (`calls_registry`, rendered once per
    publish), the gauges that change seldom (`rare_registry`, rendered once per
    `rare_changed()`: bem's function quality, read every few minutes), then the self-metrics
    (`live_registry`, rendered per scrape); `registry` holds all three, in that order."""

    def __init__(
        self,
        settings: MetricsSettings,
        version: str,
        *,
        max_series_per_family: int = DEFAULT_MAX_SERIES_PER_FAMILY,
        render_from_store: bool = True,
    ) -> None:
        """`render_from_store=False` leaves the call metrics' render to prometheus_client (the
        reference `bench/scrape.py` measures the store's renderer against)."""
        self.labels = LabelPolicy(settings.max_label_values, settings.allow_workflows, settings.allow_functions)
        self.live_registry = CollectorRegistry()
        self.observer = SelfMetrics(self.labels, version, self.live_registry)
        # process_cpu_seconds_total and friends (Linux): what the exporter itself costs.
        ProcessCollector(registry=self.live_registry)
        self.recorder = MetricsRecorder(
            self.labels,
            settings.call_buckets,
            settings.function_buckets,
            max_series_per_family=max_series_per_family,
            max_samples=settings.max_scrape_samples,
            observer=self.observer,
        )
        # No auto-describe: the recorder's families change with the data, and describing them
        # would mean collecting everything once more at registration.
        self.calls_registry = CollectorRegistry(auto_describe=False)
        self.calls_registry.register(self.recorder)
        self.rare_registry = CollectorRegistry(auto_describe=False)
        self._rare_version = 0
        self._rare = CachedExposition(self.rare_registry, lambda: self._rare_version)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.calls_registry)
        self.registry.register(self.rare_registry)
        self.registry.register(self.live_registry)
        renderer = StoreRenderer(self.recorder.store, exemplar_labels).render if render_from_store else None
        self._calls = CachedExposition(self.calls_registry, lambda: self.recorder.version, renderer)
        self.recorder.on_change = self._calls.changed
        self._shared: dict[tuple[str, bool], tuple[float, tuple[int, int], bytes]] = {}
        """(Accept, gzipped) -> (monotonic time, render versions, body) of the last body served."""

    def rare_changed(self) -> None:
        """A collector of `rare_registry` changed: render it again (off the caller's thread)."""
        self._rare_version += 1
        self._rare.changed()

    def exposition(self, accept: str | None, gzipped: bool = False) -> tuple[bytes, str]:
        """The body and Content-Type of a scrape: OpenMetrics (with exemplars) when `accept`
        asks for `application/openmetrics-text`, else the Prometheus text format 0.0.4;
        gzip-compressed when asked. Renders the call metrics only if they changed since the
        last render (which `publish()` has usually started already): may block, so call it
        from a worker thread when `exposition_if_rendered()` returns None."""
        accept = accept or ""
        _, content_type = choose_encoder(accept)
        live = self._rare.body(accept, False, render_live(self.live_registry, accept))
        return self._calls.body(accept, gzipped, live), content_type

    def exposition_if_rendered(self, accept: str | None, gzipped: bool = False) -> tuple[bytes, str] | None:
        """A scrape body without waiting (a few ms: fine on the event loop): the self-metrics
        (shared with scrapes of the last `SHARE_SECONDS`), after the newest complete render of
        the call metrics, which lags a publish by that render's duration; None if this
        variant was never rendered."""
        accept = accept or ""
        _, content_type = choose_encoder(accept)
        key = (accept, gzipped)
        now = time.monotonic()
        shared = self._shared.get(key)
        version = (self._calls.render_version, self._rare.render_version)
        if shared is not None and now - shared[0] < SHARE_SECONDS and shared[1] == version:
            return shared[2], content_type
        live = self._rare.rendered(accept, False, render_live(self.live_registry, accept))
        body = None if live is None else self._calls.rendered(accept, gzipped, live)
        if body is None:
            return None
        if key in self._shared or len(self._shared) < MAX_VARIANTS:
            self._shared[key] = (now, version, body)
        return body, content_type

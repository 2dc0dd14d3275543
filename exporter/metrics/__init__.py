"""The Prometheus metrics sink: counted call metrics, self-metrics, and their exposition.

`Metrics` is the one object the CLI builds; it hands `.recorder` (a `CallRecorder`) and
`.observer` (an `Observer`) to the poll loop, and `.exposition()` to the HTTP server.
Modules: `store` (series storage, staging, snapshots), `labels` (cardinality control),
`recorder` (finished calls -> counts), `observer` (self-metrics), `exemplars` (trace links).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder

from exporter.config import MetricsSettings
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.observer import SelfMetrics
from exporter.metrics.recorder import MetricsRecorder

__all__ = ["LabelPolicy", "Metrics", "MetricsRecorder", "SelfMetrics"]


class Metrics:
    """Everything Prometheus sees, in one registry."""

    def __init__(self, settings: MetricsSettings, version: str) -> None:
        self.labels = LabelPolicy(settings.max_label_values, settings.allow_workflows, settings.allow_functions)
        self.recorder = MetricsRecorder(self.labels, settings.call_buckets, settings.function_buckets)
        self.observer = SelfMetrics(self.labels, version)
        # No auto-describe: our collectors' families change with the data, and describing them
        # would mean collecting everything once more at registration.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.recorder)
        self.registry.register(self.observer)
        # process_cpu_seconds_total and friends (Linux): what the exporter itself costs.
        ProcessCollector(registry=self.registry)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The body and Content-Type of a scrape: OpenMetrics (with exemplars) when `accept`
        asks for `application/openmetrics-text`, else the Prometheus text format 0.0.4.
        Blocking (milliseconds for thousands of series): call it from a worker thread."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

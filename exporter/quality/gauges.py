"""The quality gauges of DESIGN section 1.2, from the last successful read: a Collector.

They change once per read (every few minutes), so they are rendered then, not per scrape
(`Metrics.rare_registry`; 200 functions, 2,200 samples, would cost a scrape about 10 ms of
CPU through prometheus_client's encoder).

A read replaces every series at once: a function gone from bem's answer loses its series, and a
ratio bem reports as null has none (a 0 would read as a collapse). Function names pass the
same label policy as the call metrics (allow-list `BEM_METRICS_FUNCTIONS`, cap
`BEM_METRICS_MAX_LABEL_VALUES`); a function whose name would fold into `other` gets no series,
since ratios of different functions cannot be merged into one, and the fold is counted in
`bem_exporter_label_overflow_total` like any other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.metrics.labels import OTHER, LabelPolicy
from exporter.quality.records import OUTCOMES, FunctionQuality, RatioName

RATIO_METRICS: Final[dict[RatioName, str]] = {
    "accuracy": "bem_function_accuracy_ratio",
    "precision": "bem_function_precision_ratio",
    "recall": "bem_function_recall_ratio",
    "f1": "bem_function_f1_ratio",
}
RESULTS: Final = "bem_function_results"
LABELED_RESULTS: Final = "bem_function_labeled_results"
EVALUATIONS: Final = "bem_function_evaluations"
_LABELS: Final = ["function_name"]
_HELP: Final[dict[RatioName, str]] = {
    "accuracy": "bem's accuracy of the function's labeled results (0 to 1), as of the last quality read.",
    "precision": "bem's precision of the function's labeled results (0 to 1), as of the last quality read.",
    "recall": "bem's recall of the function's labeled results (0 to 1), as of the last quality read.",
    "f1": "bem's F1 score of the function's labeled results (0 to 1), as of the last quality read.",
}


def _nothing() -> None:
    return None


class QualityGauges(Collector):
    """Holds the functions of the last successful read, as label value -> record."""

    def __init__(self, labels: LabelPolicy) -> None:
        self._labels = labels
        self._lock = threading.Lock()
        self._functions: dict[str, FunctionQuality] = {}
        self.on_change: Callable[[], None] = _nothing
        """Called after each change (the exposition renders these gauges then, not per scrape)."""

    def replace(self, functions: Mapping[str, FunctionQuality]) -> None:
        """Show `functions` (by name) instead of what was shown."""
        shown: dict[str, FunctionQuality] = {}
        for name, function in functions.items():
            label = self._labels.function(name)
            if label != OTHER:
                shown.setdefault(label, function)
        with self._lock:
            self._functions = shown
        self.on_change()

    def clear(self) -> None:
        with self._lock:
            self._functions = {}
        self.on_change()

    @property
    def shown(self) -> int:
        """Functions with series now."""
        return len(self._functions)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            functions = self._functions
        for ratio, name in RATIO_METRICS.items():
            family = GaugeMetricFamily(name, _HELP[ratio], labels=_LABELS, unit="ratio")
            for label, function in functions.items():
                value = function.metrics.ratio(ratio)
                if value is not None:
                    family.add_metric([label], value)
            yield family
        yield from _counts(functions)

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _counts(functions: Mapping[str, FunctionQuality]) -> Iterator[Metric]:
    results = GaugeMetricFamily(
        RESULTS, "bem's totalResults of the function, as of the last quality read.", labels=_LABELS
    )
    labeled = GaugeMetricFamily(
        LABELED_RESULTS, "bem's totalLabeledResults of the function, as of the last quality read.", labels=_LABELS
    )
    evaluations = GaugeMetricFamily(
        EVALUATIONS,
        "bem's confusion counts of the function's labeled results by outcome (tp, fp, tn, fn), as of the last "
        "quality read.",
        labels=[*_LABELS, "outcome"],
    )
    for label, function in functions.items():
        results.add_metric([label], function.results)
        labeled.add_metric([label], function.labeled_results)
        for outcome in OUTCOMES:
            evaluations.add_metric([label, outcome], function.metrics.outcome(outcome))
    return iter((results, labeled, evaluations))

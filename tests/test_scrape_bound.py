"""The bound on samples per scrape (BEM_MAX_SCRAPE_SAMPLES): the largest families fold into
`other` first, no count is lost, the fold is counted and survives a restart."""

from __future__ import annotations

from collections import Counter

from prometheus_client.parser import text_string_to_metric_families
from test_metrics import make_call

from exporter.config import MetricsSettings
from exporter.metrics import Metrics
from exporter.metrics.recorder import specs
from exporter.pipeline import FinishedCall

FUNCTION_DURATION = "bem_function_call_duration_seconds"
BOUND = 6_000


def new_metrics(bound: int = BOUND) -> Metrics:
    return Metrics(MetricsSettings(max_label_values=1000, max_scrape_samples=bound), "1.2.3")


def batch(first: int, count: int, functions: int = 20) -> list[FinishedCall]:
    """`count` calls of their own workflow, each with `functions` functions of their own."""
    return [
        make_call(
            f"c{n}",
            workflow=f"wf{n}",
            steps=tuple((f"fn{n}-{f}", "extract", "failed" if f == 0 else "completed") for f in range(functions)),
        )
        for n in range(first, first + count)
    ]


def scrape(metrics: Metrics) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """sample name -> labels -> value, of every sample in a scrape."""
    body, _ = metrics.exposition(None)
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


COUNTERS, HISTOGRAMS = specs((1.0,), (1.0,))
COUNTED = {spec.name for spec in COUNTERS} | {
    f"{spec.name}_{suffix}" for spec in HISTOGRAMS for suffix in ("bucket", "count", "sum")
}


def is_counted(name: str) -> bool:
    """A sample of the counted families (the ones the bound covers)."""
    return name in COUNTED


def counted_samples(got: dict[str, dict[frozenset[tuple[str, str]], float]]) -> int:
    return sum(len(series) for name, series in got.items() if is_counted(name))


def total(got: dict[str, dict[frozenset[tuple[str, str]], float]], name: str) -> float:
    return sum(got.get(name, {}).values())


def single(got: dict[str, dict[frozenset[tuple[str, str]], float]], name: str, **labels: str) -> float:
    return got[name][frozenset(labels.items())]


def record(metrics: Metrics, calls: list[FinishedCall]) -> None:
    metrics.recorder.stage(calls)
    metrics.recorder.publish()


def test_the_largest_family_folds_first_and_no_count_is_lost() -> None:
    metrics = new_metrics()
    record(metrics, batch(0, 40))  # 800 function series: about 24,000 function-duration samples alone
    got = scrape(metrics)
    assert counted_samples(got) <= BOUND
    assert single(got, "bem_exporter_scrape_samples") == counted_samples(got)
    assert single(got, "bem_exporter_scrape_samples_limit") == BOUND
    # Exact: every call and function call is counted, in its own series or in `other`.
    assert total(got, "bem_calls_total") == 40
    assert total(got, "bem_function_calls_total") == 800
    assert total(got, f"{FUNCTION_DURATION}_count") == 800
    assert total(got, "bem_events_total") == 800
    # The histogram of function durations is the largest family: it gave way first, and
    # the per-call families kept every workflow.
    folded = {dict(labels)["metric"]: n for labels, n in got["bem_exporter_scrape_folded_series_total"].items()}
    assert folded[FUNCTION_DURATION] > 0
    assert folded["bem_calls_total"] == 0 and folded["bem_call_duration_seconds"] == 0
    assert {dict(labels)["workflow_name"] for labels in got["bem_calls_total"]} == {f"wf{n}" for n in range(40)}
    other_failed = {"workflow_name": "other", "function_name": "other", "function_type": "other", "status": "failed"}
    assert single(got, f"{FUNCTION_DURATION}_count", **other_failed) > 0
    # A series folds with its siblings of other statuses: no function is split across `other`
    # (each function has a series per finished status there, created at 0 on first sight).
    assert folded["bem_function_calls_total"] > 0
    kept = Counter(dict(labels)["function_name"] for labels in got["bem_function_calls_total"])
    assert set(kept.values()) == {2}, kept


def test_new_names_of_a_folded_family_fold_as_they_come() -> None:
    metrics = new_metrics()
    record(metrics, batch(0, 40))
    before = scrape(metrics)
    kept = set(before[f"{FUNCTION_DURATION}_count"])
    record(metrics, batch(40, 5))
    got = scrape(metrics)
    assert counted_samples(got) <= BOUND
    # No new series of the folded family (the others grew, so it may have given way further).
    assert set(got[f"{FUNCTION_DURATION}_count"]) <= kept
    assert total(got, f"{FUNCTION_DURATION}_count") == 900


def test_a_restart_restores_the_same_fold() -> None:
    metrics = new_metrics()
    record(metrics, batch(0, 40))
    snapshot = metrics.recorder.snapshot()
    restarted = new_metrics()
    restarted.recorder.restore(snapshot)
    assert _counted(scrape(restarted)) == _counted(scrape(metrics))
    # The lowered cap came back with the snapshot: the next names fold in both alike.
    record(metrics, batch(40, 5))
    record(restarted, batch(40, 5))
    assert _counted(scrape(restarted)) == _counted(scrape(metrics))
    assert restarted.recorder.scrape_figures().caps == metrics.recorder.scrape_figures().caps != {}


def test_a_tighter_bound_folds_the_restored_counts_and_a_wider_one_lifts_the_caps() -> None:
    metrics = new_metrics()
    record(metrics, batch(0, 40))
    snapshot = metrics.recorder.snapshot()
    tighter = new_metrics(BOUND // 2)
    tighter.recorder.restore(snapshot)
    got = scrape(tighter)
    assert counted_samples(got) <= BOUND // 2
    assert total(got, "bem_function_calls_total") == 800
    wider = new_metrics(BOUND * 100)
    wider.recorder.restore(snapshot)
    assert wider.recorder.scrape_figures().caps == {}
    record(wider, batch(40, 5))
    assert any(dict(labels)["function_name"] == "fn44-3" for labels in scrape(wider)["bem_function_calls_total"])


def test_a_bound_too_low_for_the_other_series_is_warned_once(caplog: object) -> None:
    metrics = new_metrics(bound=10)
    record(metrics, batch(0, 3))
    record(metrics, batch(3, 3))
    got = scrape(metrics)
    assert total(got, "bem_function_calls_total") == 120
    messages = [r.getMessage() for r in caplog.records if "BEM_MAX_SCRAPE_SAMPLES" in r.getMessage()]  # type: ignore[attr-defined]
    assert len(messages) == 1


def _counted(
    got: dict[str, dict[frozenset[tuple[str, str]], float]],
) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    # The export lag depends on when a batch was counted: not compared.
    return {name: series for name, series in got.items() if is_counted(name) and "export_lag" not in name}

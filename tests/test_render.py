"""The store's own renderer writes what prometheus_client writes for the same data, byte for
byte and as its parsers read it, in both formats, after every commit; a commit re-renders only
the series it changed."""

from __future__ import annotations

import json

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.metrics import Metrics
from exporter.metrics.exemplars import exemplar_labels
from exporter.metrics.render import StoreRenderer, go_float
from exporter.pipeline import FinishedCall
from tests.test_metrics import OPENMETRICS, make_call, new_metrics

ACCEPTS = (
    "",
    OPENMETRICS,
    "application/openmetrics-text;version=2.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
)
ODD_NAMES = ('quo"te', "back\\slash", "new\nline", "ünïcode ✓", "  padded  ", "{braces}=,")


def _reference(metrics: Metrics, accept: str) -> bytes:
    encoder, _ = choose_encoder(accept)
    return encoder(metrics.calls_registry).removesuffix(b"# EOF\n")


def _ours(renderer: StoreRenderer, accept: str) -> bytes:
    _, content_type = choose_encoder(accept)
    body = renderer.render(content_type)
    assert body is not None
    return body


def _batch(round_: int) -> list[FinishedCall]:
    calls = [make_call(f"r{round_}-plain{i}", workflow=f"wf{i % 3}", duration=0.5 + i * 7.3) for i in range(4)]
    for index, name in enumerate(ODD_NAMES):
        steps = ((name, "extract", "completed"), (f"{name}-2", "route", "failed"))
        events = [{"eventID": f"r{round_}-x{index}", "eventType": "error", "kind": name, "avgConfidence": 0.37}]
        calls.append(make_call(f"r{round_}-odd{index}", workflow=name, steps=steps, events=events))
    calls.append(make_call(f"r{round_}-slow", workflow="slow", status="failed", duration=12_345_678.9))
    calls.append(make_call(f"r{round_}-fn", workflow=None))
    return calls


def test_both_formats_match_prometheus_client_byte_for_byte_after_every_commit() -> None:
    metrics = new_metrics(max_label_values=100)
    renderer = StoreRenderer(metrics.recorder.store, exemplar_labels)
    for accept in ACCEPTS:  # the empty store: headers only
        assert _ours(renderer, accept) == _reference(metrics, accept)
    for round_ in range(4):
        metrics.recorder.stage(_batch(round_))
        metrics.recorder.publish()
        for accept in ACCEPTS:
            assert _ours(renderer, accept) == _reference(metrics, accept), accept


def test_the_parsers_read_the_same_families_and_exemplars() -> None:
    metrics = new_metrics(max_label_values=100)
    renderer = StoreRenderer(metrics.recorder.store, exemplar_labels)
    metrics.recorder.stage(_batch(0))
    metrics.recorder.publish()
    ours = list(parse_openmetrics(_ours(renderer, OPENMETRICS).decode() + "# EOF\n"))  # type: ignore[no-untyped-call]
    reference = list(parse_openmetrics(_reference(metrics, OPENMETRICS).decode() + "# EOF\n"))  # type: ignore[no-untyped-call]
    assert ours == reference
    exemplars = [s.exemplar for family in ours for s in family.samples if s.exemplar is not None]
    assert exemplars and all("trace_id" in e.labels for e in exemplars)
    assert list(parse_text(_ours(renderer, "").decode())) == list(parse_text(_reference(metrics, "").decode()))


def test_restored_large_and_fractional_values_are_written_as_prometheus_client_writes_them() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c0")])
    snapshot = json.loads(metrics.recorder.stage([make_call("c0")]))
    metrics.recorder.discard()
    snapshot["counters"]["bem_calls_total"]["series"] = [
        [["a", "completed"], 12_345_678],
        [["b", "completed"], 1234567],
        [["c", "completed"], 0.1 + 0.2],
        [["d", "completed"], 1e22],
    ]
    metrics.recorder.restore(json.dumps(snapshot).encode())
    renderer = StoreRenderer(metrics.recorder.store, exemplar_labels)
    for accept in ACCEPTS:
        assert _ours(renderer, accept) == _reference(metrics, accept)
    assert b'workflow_name="a"} 1.2345678e+07' in _ours(renderer, "")


@pytest.mark.parametrize(
    "value", [0, 1, 999_999, 1_000_000, -5, 2.5, 1e-7, 1234567.0, 123456.0, 99999999, float("inf"), -3.0, 1e300]
)
def test_go_float_is_prometheus_clients_formatting(value: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert go_float(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_a_commit_renders_only_the_series_it_changed() -> None:
    metrics = new_metrics(max_label_values=100)
    renderer = StoreRenderer(metrics.recorder.store, exemplar_labels)
    metrics.recorder.stage([make_call(f"c{i}", workflow=f"wf{i}") for i in range(50)])
    metrics.recorder.publish()
    _ours(renderer, OPENMETRICS)
    everything = renderer.formats[True].rendered_anew
    metrics.recorder.stage([make_call("later", workflow="wf7")])
    metrics.recorder.publish()
    assert _ours(renderer, OPENMETRICS) == _reference(metrics, OPENMETRICS)
    touched = renderer.formats[True].rendered_anew
    # wf7's calls, function calls and events counters, its call, queue, function and
    # confidence rows, and the export lag: a handful, out of hundreds
    assert 0 < touched < 15 < everything
    _ours(renderer, OPENMETRICS)
    assert renderer.formats[True].rendered_anew == 0  # nothing changed since


def test_escaping_that_renames_is_left_to_prometheus_client() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c0")])
    metrics.recorder.publish()
    renderer = StoreRenderer(metrics.recorder.store, exemplar_labels)
    dots, values = (
        "application/openmetrics-text;version=1.0.0;escaping=dots",
        "text/plain;version=1.0.0;escaping=values",
    )
    for accept in (dots, values):
        _, content_type = choose_encoder(accept)
        assert renderer.render(content_type) is None
        body, _ = metrics.exposition(accept)
        assert body.startswith(_reference(metrics, accept))
    assert b"bem__calls__total" in metrics.exposition(dots)[0]

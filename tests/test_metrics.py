"""The metrics sink: exactly-once staging, snapshots, label control, exemplars, self-metrics."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.bem.decode import decode_call_page, decode_trace
from exporter.config import MetricsSettings
from exporter.ids import function_call_span_id_for, trace_id_for
from exporter.metrics import Metrics
from exporter.pipeline import CycleReport, FinishedCall

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(T0.timestamp() + seconds, UTC).isoformat().replace("+00:00", "Z")


def make_call(
    call_id: str,
    workflow: str | None = "invoice-intake",
    status: str = "completed",
    *,
    duration: float = 30.0,
    steps: Sequence[tuple[str, str, str]] = (("classify", "route", "completed"), ("extract", "extract", "completed")),
    events: Sequence[dict[str, Any]] | None = None,
) -> FinishedCall:
    """A finished call with one function call per step (each 2 s after the previous), each
    emitting one event of its type; extra `events` are added to the first function call."""
    call: dict[str, Any] = {
        "callID": call_id,
        "status": status,
        "callType": "workflow" if workflow else "direct_function",
        "createdAt": _at(0),
        "finishedAt": _at(duration),
        "s3URL": "https://secret.example/doc.pdf",
    }
    if workflow:
        call.update(workflowID=f"wf-id-{workflow}", workflowName=workflow, workflowVersionNum=3)
    else:
        call.update(functionID="fn-id-x", functionName=steps[0][0], functionType=steps[0][1])
    function_calls = []
    trace_events: list[dict[str, Any]] = []
    for index, (name, ftype, fstatus) in enumerate(steps):
        fc_id = f"{call_id}-fc{index}"
        function_calls.append(
            {
                "functionCallID": fc_id,
                "functionID": f"fn-id-{name}",
                "functionName": name,
                "type": ftype,
                "status": fstatus,
                "startedAt": _at(1 + 2 * index),
                "finishedAt": _at(2 + 2 * index),
                "sourceEventID": f"{call_id}-ev{index - 1}" if index else None,
            }
        )
        trace_events.append(
            {
                "eventID": f"{call_id}-ev{index}",
                "eventType": ftype,
                "functionCallID": fc_id,
                "functionName": name,
                "createdAt": _at(2 + 2 * index),
            }
        )
    for extra in events or ():
        trace_events.append({"functionCallID": f"{call_id}-fc0", "functionName": steps[0][0], **extra})
    page = decode_call_page(json.dumps({"calls": [call]}).encode())
    trace = decode_trace(json.dumps({"trace": {"functionCalls": function_calls, "events": trace_events}}).encode())
    assert page.calls and not page.rejected and not trace.rejected
    return FinishedCall(page.calls[0], trace)


def new_metrics(**settings: Any) -> Metrics:
    return Metrics(MetricsSettings(**settings), "1.2.3")


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.exposition(None)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def counted(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of the counted (persisted) families only."""
    return {k: v for k, v in samples(metrics).items() if k[0].startswith("bem_") and "exporter" not in k[0]}


CALLS = {"workflow_name": "invoice-intake", "status": "completed"}


# --- exactly-once handshake ----------------------------------------------------------------------


def test_staged_counts_are_invisible_until_published() -> None:
    metrics = new_metrics()
    snapshot = metrics.recorder.stage([make_call("c1")])
    assert snapshot
    assert value(metrics, "bem_calls_total", **CALLS) is None
    assert value(metrics, "bem_call_duration_seconds_count", **CALLS) is None
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", **CALLS) == 1
    assert value(metrics, "bem_call_duration_seconds_count", **CALLS) == 1


def test_discard_drops_the_stage() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1")])
    metrics.recorder.discard()
    assert value(metrics, "bem_calls_total", **CALLS) is None
    metrics.recorder.stage([make_call("c1")])  # the retry after a failed commit
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", **CALLS) == 1
    metrics.recorder.publish()  # a stray publish changes nothing
    assert value(metrics, "bem_calls_total", **CALLS) == 1


def test_a_new_stage_replaces_an_unpublished_one() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1")])
    snapshot = metrics.recorder.stage([make_call("c2")])
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", **CALLS) == 1
    fresh = new_metrics()
    fresh.recorder.restore(snapshot)
    assert value(fresh, "bem_calls_total", **CALLS) == 1


def test_stage_returns_the_snapshot_that_includes_the_batch() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1")])
    metrics.recorder.publish()
    snapshot = metrics.recorder.stage([make_call("c2"), make_call("c3", status="failed")])
    restored = new_metrics()
    restored.recorder.restore(snapshot)
    assert value(restored, "bem_calls_total", **CALLS) == 2
    assert value(restored, "bem_calls_total", workflow_name="invoice-intake", status="failed") == 1


def test_snapshot_round_trips_exactly() -> None:
    metrics = new_metrics()
    batch = [
        make_call(f"c{i}", workflow=("a", "b", None)[i % 3], status=("completed", "failed")[i % 2], duration=i * 7.3)
        for i in range(30)
    ]
    metrics.recorder.stage(batch[:10])
    metrics.recorder.publish()
    metrics.recorder.stage(batch[10:])
    metrics.recorder.publish()
    snapshot = metrics.recorder.snapshot()
    restored = new_metrics()
    restored.recorder.restore(snapshot)
    assert restored.recorder.snapshot() == snapshot
    assert counted(restored) == counted(metrics)
    # and counting goes on from there
    restored.recorder.stage([make_call("c99", workflow="a")])
    restored.recorder.publish()
    before = value(metrics, "bem_calls_total", workflow_name="a", status="completed")
    assert before is not None
    assert value(restored, "bem_calls_total", workflow_name="a", status="completed") == before + 1


def test_unreadable_snapshot_starts_from_zero(caplog: pytest.LogCaptureFixture) -> None:
    metrics = new_metrics()
    with caplog.at_level(logging.ERROR):
        metrics.recorder.restore(b"{not json")
    assert "counters restart at zero" in caplog.text
    metrics.recorder.restore(b"")  # no snapshot yet: silently empty
    metrics.recorder.stage([make_call("c1")])
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", **CALLS) == 1


def test_changed_buckets_are_rebinned_on_restore() -> None:
    before = new_metrics(call_buckets=(10.0, 20.0, 40.0))
    before.recorder.stage([make_call("a", duration=5), make_call("b", duration=15), make_call("c", duration=35)])
    before.recorder.publish()
    after = new_metrics(call_buckets=(20.0, 30.0, 60.0))
    after.recorder.restore(before.recorder.snapshot())
    name = "bem_call_duration_seconds_bucket"
    assert value(after, name, le="20.0", **CALLS) == 2  # a bound in both layouts stays exact
    assert value(after, name, le="60.0", **CALLS) == 3
    assert value(after, "bem_call_duration_seconds_count", **CALLS) == 3
    assert value(after, "bem_call_duration_seconds_sum", **CALLS) == 55


def test_restore_drops_series_outside_a_new_allow_list() -> None:
    before = new_metrics()
    before.recorder.stage([make_call("a", workflow="keep"), make_call("b", workflow="gone")])
    before.recorder.publish()
    after = new_metrics(allow_workflows=("keep",))
    after.recorder.restore(before.recorder.snapshot())
    names = {dict(labels).get("workflow_name") for _, labels in counted(after)}
    assert names == {"keep"}


# --- values ------------------------------------------------------------------------------------


def test_one_call_in_detail() -> None:
    metrics = new_metrics()
    call = make_call(
        "c1",
        duration=30.0,
        steps=(("classify", "route", "completed"), ("extract", "extract", "failed"), ("mystery", "teleport", "odd")),
        events=[
            {"eventID": "e-err1", "eventType": "error", "kind": "timeout", "functionCallTryNumber": 1},
            {"eventID": "e-err2", "eventType": "error", "functionCallTryNumber": 2},
            {"eventID": "e-conf", "eventType": "extract", "avgConfidence": 0.87},
            {"eventID": "e-conf", "eventType": "extract", "avgConfidence": 0.87},  # a duplicate record
            {"eventID": "e-new", "eventType": "hologram"},
        ],
    )
    metrics.recorder.stage([call])
    metrics.recorder.publish()
    got = samples(metrics)

    def at(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    wf = {"workflow_name": "invoice-intake"}
    assert at("bem_calls_total", **CALLS) == 1
    assert at("bem_call_duration_seconds_sum", **CALLS) == 30.0
    assert at("bem_call_duration_seconds_bucket", le="20.0", **CALLS) == 0
    assert at("bem_call_duration_seconds_bucket", le="30.0", **CALLS) == 1
    assert at("bem_call_queue_seconds_sum", **wf) == 1.0
    fn = {**wf, "function_name": "extract", "function_type": "extract"}
    assert at("bem_function_calls_total", status="failed", **fn) == 1
    assert at("bem_function_calls_total", status="completed", **fn) == 0  # pre-initialised
    assert at("bem_function_call_duration_seconds_sum", status="failed", **fn) == 1.0
    # unknown types and statuses keep their raw value
    odd = {**wf, "function_name": "mystery", "function_type": "teleport", "status": "odd"}
    assert at("bem_function_calls_total", **odd) == 1
    assert at("bem_events_total", function_name="classify", event_type="hologram", **wf) == 1
    # error events: in events_total and, each try, in call_errors_total
    assert at("bem_events_total", function_name="classify", event_type="error", **wf) == 2
    assert at("bem_call_errors_total", function_name="classify", error_kind="timeout", **wf) == 1
    assert at("bem_call_errors_total", function_name="classify", error_kind="unknown", **wf) == 1
    assert at("bem_events_total", function_name="classify", event_type="extract", **wf) == 1
    assert at("bem_function_confidence_count", function_name="classify", **wf) == 1
    assert at("bem_function_confidence_bucket", function_name="classify", le="0.9", **wf) == 1
    assert at("bem_function_confidence_bucket", function_name="classify", le="0.8", **wf) == 0
    assert at("bem_exporter_export_lag_seconds_count") == 1


def test_first_sight_creates_zero_series() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1", workflow="w")])
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", workflow_name="w", status="failed") == 0
    assert value(metrics, "bem_call_duration_seconds_count", workflow_name="w", status="failed") == 0
    fn = {"workflow_name": "w", "function_name": "classify", "function_type": "route"}
    assert value(metrics, "bem_function_calls_total", status="failed", **fn) == 0


def test_function_only_call_has_workflow_none() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1", workflow=None, steps=(("parse-pdf", "parse", "completed"),))])
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", workflow_name="(none)", status="completed") == 1
    fn = {"workflow_name": "(none)", "function_name": "parse-pdf", "function_type": "parse", "status": "completed"}
    assert value(metrics, "bem_function_calls_total", **fn) == 1


def test_label_values_are_never_ids() -> None:
    metrics = new_metrics()
    calls = [
        make_call(f"call-{i:04d}-zz", events=[{"eventID": f"event-{i}-zz", "eventType": "send"}]) for i in range(5)
    ]
    metrics.recorder.stage(calls)
    metrics.recorder.publish()
    for accept in (None, OPENMETRICS):
        body = metrics.exposition(accept)[0].decode()
        for family in text_string_to_metric_families(metrics.exposition(None)[0].decode()):
            for sample in family.samples:
                assert not any("zz" in v or "-fc" in v for v in sample.labels.values())
        # the ids appear nowhere, not even in exemplars (which carry derived trace ids)
        assert "zz" not in body and "fn-id" not in body and "wf-id" not in body and "secret" not in body


# --- cardinality ---------------------------------------------------------------------------------


def test_allow_lists_fold_other_names_without_overflow() -> None:
    metrics = new_metrics(allow_workflows=("a",), allow_functions=("classify",))
    metrics.recorder.stage([make_call("1", workflow="a"), make_call("2", workflow="b"), make_call("3", workflow=None)])
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", workflow_name="a", status="completed") == 1
    assert value(metrics, "bem_calls_total", workflow_name="other", status="completed") == 1
    assert value(metrics, "bem_calls_total", workflow_name="(none)", status="completed") == 1
    fn = {"workflow_name": "a", "function_type": "extract", "status": "completed"}
    assert value(metrics, "bem_function_calls_total", function_name="other", **fn) == 1
    assert value(metrics, "bem_exporter_label_overflow_total", label="workflow_name") == 0


def test_cap_folds_overflow_into_other_and_counts_it() -> None:
    metrics = new_metrics(max_label_values=3)
    metrics.recorder.stage([make_call(f"c{i}", workflow=f"wf{i}") for i in range(5)])
    metrics.recorder.publish()
    workflows = {dict(labels)["workflow_name"] for name, labels in counted(metrics) if name == "bem_calls_total"}
    assert workflows == {"wf0", "wf1", "wf2", "other"}
    assert value(metrics, "bem_calls_total", workflow_name="other", status="completed") == 2
    assert value(metrics, "bem_exporter_label_overflow_total", label="workflow_name") == 2
    # an admitted value stays admitted; a restored process does not admit new ones beyond the cap
    restored = new_metrics(max_label_values=3)
    restored.recorder.restore(metrics.recorder.snapshot())
    restored.recorder.stage([make_call("x", workflow="wf1"), make_call("y", workflow="wf9")])
    restored.recorder.publish()
    assert value(restored, "bem_calls_total", workflow_name="wf1", status="completed") == 2
    assert value(restored, "bem_calls_total", workflow_name="wf9", status="completed") is None


def test_long_and_empty_values_are_bounded() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1", steps=(("x" * 500, "", "completed"),))])
    metrics.recorder.publish()
    names = {dict(labels).get("function_name") for name, labels in counted(metrics)}
    assert "x" * 128 in names
    types = {dict(labels).get("function_type") for name, labels in counted(metrics)}
    assert "unknown" in types


# --- exemplars -----------------------------------------------------------------------------------


def test_exemplars_in_openmetrics_only() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call("c1", duration=30.0)])
    metrics.recorder.publish()
    openmetrics, content_type = metrics.exposition(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    text = openmetrics.decode()
    assert text.endswith("# EOF\n")
    # no exemplar timestamp: the scraper stamps it with the scrape's, which never goes back
    assert (
        f'bem_call_duration_seconds_bucket{{le="30.0",status="completed",workflow_name="invoice-intake"}} 1.0 '
        f'# {{trace_id="{trace_id_for("c1")}"}} 30.0\n'
    ) in text
    assert f'span_id="{function_call_span_id_for("c1-fc0")}"' in text
    plain, content_type = metrics.exposition("text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"trace_id=" not in plain and b"# EOF" not in plain


def test_a_confidence_bucket_links_to_the_function_call_that_fell_into_it() -> None:
    """The Quality dashboard's heatmap opens the trace of a low-confidence call from here."""
    metrics = new_metrics()
    low = make_call("low", events=[{"eventID": "e-low", "eventType": "extract", "avgConfidence": 0.31}])
    metrics.recorder.stage([low])
    metrics.recorder.publish()
    text = metrics.exposition(OPENMETRICS)[0].decode()
    labels = f'span_id="{function_call_span_id_for("low-fc0")}",trace_id="{trace_id_for("low")}"'
    buckets = [line for line in text.splitlines() if line.startswith("bem_function_confidence_bucket")]
    linked = [line for line in buckets if "# {" in line]
    assert len(linked) == 1 and 'le="0.4"' in linked[0] and linked[0].endswith(f"# {{{labels}}} 0.31")
    assert "trace_id=" not in metrics.exposition("text/plain")[0].decode()


def test_the_newest_exemplar_stays() -> None:
    metrics = new_metrics(call_buckets=(100.0,))
    older = make_call("old", duration=10.0)
    newer = make_call("new", duration=20.0)
    metrics.recorder.stage([newer, older])  # handed on out of order
    metrics.recorder.publish()
    text = metrics.exposition(OPENMETRICS)[0].decode()
    assert trace_id_for("new") in text and trace_id_for("old") not in text


# --- self-metrics ----------------------------------------------------------------------------------


def _call(call_id: str, workflow: str, status: str, created: float) -> Any:
    payload = {"callID": call_id, "status": status, "workflowName": workflow, "createdAt": _at(created)}
    return decode_call_page(json.dumps({"calls": [payload]}).encode()).calls[0]


def test_in_progress_gauges_are_replaced_and_idle_workflows_read_zero() -> None:
    metrics = new_metrics()
    now = T0.timestamp() + 100
    observer = metrics.observer
    observer.in_progress(
        [_call("1", "a", "running", 40), _call("2", "a", "pending", 90), _call("3", "b", "running", 0)], now
    )
    assert value(metrics, "bem_calls_in_progress", workflow_name="a", status="running") == 1
    assert value(metrics, "bem_calls_in_progress", workflow_name="a", status="pending") == 1
    assert value(metrics, "bem_calls_in_progress", workflow_name="b", status="pending") == 0
    assert value(metrics, "bem_calls_oldest_in_progress_age_seconds", workflow_name="a") == 60
    assert value(metrics, "bem_calls_oldest_in_progress_age_seconds", workflow_name="b") == 100
    observer.in_progress([_call("4", "a", "running", 95)], now)
    assert value(metrics, "bem_calls_in_progress", workflow_name="b", status="running") == 0
    assert value(metrics, "bem_calls_oldest_in_progress_age_seconds", workflow_name="b") == 0
    assert value(metrics, "bem_calls_oldest_in_progress_age_seconds", workflow_name="a") == 5


def test_observer_counts() -> None:
    metrics = new_metrics()
    observer = metrics.observer
    assert value(metrics, "bem_exporter_up") == 0
    assert value(metrics, "bem_exporter_last_successful_poll_timestamp_seconds") is None
    assert value(metrics, "bem_exporter_build_info", version="1.2.3") == 1
    observer.cycle_done(CycleReport(ok=True, duration_seconds=0.3, tracked=7, export_backlog=2), 1700000000.0)
    observer.api_request("/v3/calls", "200", 0.02)
    observer.api_request("/v3/calls", "error", 0.5)
    observer.rejected_record("call")
    observer.trace_anomaly("cycle")
    observer.spans_exported(2, 9)
    observer.span_export_failed(3)
    observer.spans_dropped(4)
    observer.calls_abandoned(5)
    got = samples(metrics)
    assert got[("bem_exporter_up", frozenset())] == 1
    assert got[("bem_exporter_last_successful_poll_timestamp_seconds", frozenset())] == 1700000000.0
    assert got[("bem_exporter_tracked_calls", frozenset())] == 7
    assert got[("bem_exporter_export_backlog_calls", frozenset())] == 2
    assert got[("bem_exporter_poll_duration_seconds_count", frozenset())] == 1
    assert got[("bem_exporter_api_requests_total", frozenset({("endpoint", "/v3/calls"), ("code", "error")}))] == 1
    assert got[("bem_exporter_api_request_duration_seconds_count", frozenset({("endpoint", "/v3/calls")}))] == 2
    assert got[("bem_exporter_rejected_records_total", frozenset({("record", "call")}))] == 1
    assert got[("bem_exporter_rejected_records_total", frozenset({("record", "response")}))] == 0
    assert got[("bem_exporter_trace_anomalies_total", frozenset({("kind", "cycle")}))] == 1
    assert got[("bem_exporter_spans_exported_total", frozenset())] == 9
    assert got[("bem_exporter_span_export_failures_total", frozenset())] == 1
    assert got[("bem_exporter_spans_dropped_total", frozenset())] == 4
    assert got[("bem_exporter_calls_abandoned_total", frozenset())] == 5
    observer.cycle_done(CycleReport(ok=False, duration_seconds=1.0), 1700000100.0)
    assert value(metrics, "bem_exporter_up") == 0
    assert value(metrics, "bem_exporter_last_successful_poll_timestamp_seconds") == 1700000000.0


# --- lint ----------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_finds_nothing_to_lint() -> None:
    metrics = new_metrics()
    metrics.recorder.stage([make_call(f"c{i}", status=("completed", "failed")[i % 2]) for i in range(4)])
    metrics.recorder.publish()
    metrics.observer.cycle_done(CycleReport(ok=True, duration_seconds=0.3, tracked=1), 1700000000.0)
    metrics.observer.api_request("/v3/calls", "200", 0.02)
    metrics.observer.in_progress([_call("1", "a", "running", 40)], T0.timestamp() + 60)
    body, _ = metrics.exposition(None)
    result = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"" and result.stderr == b"", (result.stdout + result.stderr).decode()


def test_expected_api_endpoints_start_at_zero() -> None:
    from exporter.config import MetricsSettings
    from exporter.metrics import Metrics

    metrics = Metrics(MetricsSettings(), "test")
    metrics.observer.expect_endpoints(["/v3/calls", "/v3/calls/{callID}/trace"])
    metrics.observer.api_request("/v3/calls", "200", 0.01)
    text = metrics.exposition(None)[0].decode()
    assert 'bem_exporter_api_requests_total{code="429",endpoint="/v3/calls/{callID}/trace"} 0.0' in text
    assert 'bem_exporter_api_requests_total{code="200",endpoint="/v3/calls"} 1.0' in text


# --- series per family, out-of-range timestamps --------------------------------------------------


def test_series_per_family_are_capped_and_the_overflow_counted() -> None:
    """200 workflows x 100 functions: without the cap, 40,000 function series (x buckets)."""
    cap = 10_000
    metrics = Metrics(MetricsSettings(max_label_values=1000), "1.2.3", max_series_per_family=cap)
    steps = tuple((f"fn{f}", "extract", "completed") for f in range(100))
    metrics.recorder.stage([make_call(f"c{w}", workflow=f"wf{w}", steps=steps) for w in range(200)])
    metrics.recorder.publish()
    got = samples(metrics)
    families: dict[str, set[frozenset[tuple[str, str]]]] = {}
    totals: dict[str, float] = {}
    for (name, labels), sample in got.items():
        if not name.startswith("bem_") or "exporter" in name:
            continue
        series = frozenset((k, v) for k, v in labels if k != "le")
        families.setdefault(name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum"), set()).add(series)
        totals[name] = totals.get(name, 0) + sample
    for name, series in families.items():
        assert len(series) <= cap + 2, name  # the cap, plus one `other` series per status
    # nothing is lost: every function call is counted, in its own series or in `other`
    assert totals["bem_function_calls_total"] == 200 * 100
    assert totals["bem_function_call_duration_seconds_count"] == 200 * 100
    other = {"workflow_name": "other", "function_name": "other", "function_type": "other", "status": "completed"}
    assert got[("bem_function_calls_total", frozenset(other.items()))] > 0
    assert got[("bem_exporter_label_overflow_total", frozenset({("label", "series")}))] > 0
    assert len(metrics.exposition(OPENMETRICS)[0]) < 20_000_000


def _out_of_range_anomalies(metrics: Metrics) -> float | None:
    return value(metrics, "bem_exporter_trace_anomalies_total", kind="timestamp_out_of_range")


@pytest.mark.parametrize("duration", [5.46e9, -30.0], ids=["year-2200", "before-createdAt"])
def test_out_of_range_finished_at_is_counted_but_never_observed(duration: float) -> None:
    metrics = new_metrics()
    assert _out_of_range_anomalies(metrics) == 0
    metrics.recorder.stage([make_call("bad", duration=duration), make_call("good", duration=30.0)])
    assert _out_of_range_anomalies(metrics) == 0  # not before the batch is published
    metrics.recorder.publish()
    assert value(metrics, "bem_calls_total", **CALLS) == 2  # the call itself is counted
    assert value(metrics, "bem_call_duration_seconds_count", **CALLS) == 1
    assert value(metrics, "bem_call_duration_seconds_sum", **CALLS) == 30.0
    assert value(metrics, "bem_exporter_export_lag_seconds_count") == 1
    assert _out_of_range_anomalies(metrics) == 1
    assert b"5460000000" not in metrics.recorder.snapshot()  # never persisted into the sums


def test_function_call_finishing_in_the_far_future_is_not_observed() -> None:
    metrics = new_metrics()
    call = make_call("c1")
    classify, extract = call.trace.function_calls
    late = msgspec.structs.replace(extract, finished_at=datetime(2200, 1, 1, tzinfo=UTC))
    trace = msgspec.structs.replace(call.trace, function_calls=(classify, late))
    metrics.recorder.stage([FinishedCall(call.call, trace)])
    metrics.recorder.publish()
    extract_labels = {
        "workflow_name": "invoice-intake",
        "function_name": "extract",
        "function_type": "extract",
        "status": "completed",
    }
    assert value(metrics, "bem_function_calls_total", **extract_labels) == 1
    assert value(metrics, "bem_function_call_duration_seconds_count", **extract_labels) is None
    assert _out_of_range_anomalies(metrics) == 1


def test_new_self_metrics_start_at_zero_and_follow_their_methods() -> None:
    metrics = new_metrics()
    observer = metrics.observer
    got = samples(metrics)
    for kind in ("disk_full", "io_error", "corrupt", "fenced", "unavailable", "other"):
        assert got[("bem_exporter_state_errors_total", frozenset({("kind", kind)}))] == 0
    for name in ("api_throttled_total", "leader_transitions_total", "fenced_commits_total"):
        assert got[(f"bem_exporter_{name}", frozenset())] == 0
    for name in ("api_throttle_seconds", "api_rate_limit", "backfill_remaining_calls"):
        assert got[(f"bem_exporter_{name}", frozenset())] == 0
    assert got[("bem_exporter_leader", frozenset())] == 1
    assert got[("bem_exporter_label_overflow_total", frozenset({("label", "series")}))] == 0
    observer.expect_endpoints(["/v3/calls"])
    assert value(metrics, "bem_exporter_responses_too_large_total", endpoint="/v3/calls") == 0
    observer.api_throttled(30.0)
    observer.api_rate_limit(12.5)
    observer.response_too_large("/v3/calls")
    observer.state_error("disk_full")
    observer.backfill_remaining(420)
    observer.leader(False)
    observer.leader(False)
    observer.leader(True)
    observer.fenced_commit()
    got = samples(metrics)
    assert got[("bem_exporter_api_throttled_total", frozenset())] == 1
    assert got[("bem_exporter_api_throttle_seconds", frozenset())] == 30.0
    assert got[("bem_exporter_api_rate_limit", frozenset())] == 12.5
    assert got[("bem_exporter_responses_too_large_total", frozenset({("endpoint", "/v3/calls")}))] == 1
    assert got[("bem_exporter_state_errors_total", frozenset({("kind", "disk_full")}))] == 1
    assert got[("bem_exporter_backfill_remaining_calls", frozenset())] == 420
    assert got[("bem_exporter_leader", frozenset())] == 1
    assert got[("bem_exporter_leader_transitions_total", frozenset())] == 2
    assert got[("bem_exporter_fenced_commits_total", frozenset())] == 1
    observer.throttle_cleared()
    assert value(metrics, "bem_exporter_api_throttle_seconds") == 0

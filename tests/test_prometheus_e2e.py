"""End to end with a real Prometheus: the simulator (in this process) -> `bem-exporter run` (a
subprocess) -> Prometheus (a subprocess, scraping every second, exemplar storage on, the
shipped rule files loaded) -> PromQL over HTTP. No mocks.

What Prometheus computes from the scrapes is compared with the simulator's ground truth:
finished calls, failure ratios, function calls, exemplars naming real traces; across a
SIGTERM and a kill -9 no counter resets; and every panel of the shipped dashboards returns
data. With two replicas sharing their state in PostgreSQL, both scraped, through a kill -9 of
the leader: the shipped recording rules and dashboard queries count every call once, and
lose none.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from otlp_receiver import HttpReceiver
from processes import ROOT, ExporterProcess, free_port, wait_until
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_server import Labels, PrometheusServer, prometheus_binary
from test_webhooks_e2e import subscribe

from exporter.simulator import DEMO_WEBHOOK_SECRET, Simulator, SimulatorConfig, SimulatorServer

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None, reason="needs the prometheus binary (scripts/test installs it)"
)

RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yaml"))
FINISHED = ("completed", "failed")
SPEED = 40.0
"""Simulator time multiplier: the longest call (60 s queue + 300 s run) finishes in ~9 s."""

PERSISTED = (
    "bem_calls_total",
    "bem_function_calls_total",
    "bem_events_total",
    "bem_call_errors_total",
    "bem_call_duration_seconds_bucket",
    "bem_call_duration_seconds_count",
    "bem_call_duration_seconds_sum",
    "bem_call_queue_seconds_bucket",
    "bem_call_queue_seconds_count",
    "bem_function_call_duration_seconds_bucket",
    "bem_function_call_duration_seconds_count",
    "bem_function_confidence_bucket",
    "bem_function_confidence_count",
    "bem_exporter_export_lag_seconds_count",
)
"""Counters and histogram series kept in the durable state: monotonic across restarts."""


def trace_id(call_id: str) -> str:
    return hashlib.sha256(f"bem.call:{call_id}".encode()).digest()[:16].hex()


def span_id(function_call_id: str) -> str:
    return hashlib.sha256(f"bem.function_call:{function_call_id}".encode()).digest()[:8].hex()


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def without(labels: Labels, *names: str) -> Labels:
    return tuple((k, v) for k, v in labels if k not in names)


def labels_tuple(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def series_labels(labels: Labels) -> Labels:
    """Labels of a bem series with what Prometheus adds (name, job, instance) removed."""
    return without(labels, "__name__", "job", "instance")


@dataclass
class Truth:
    """What the simulator says happened, for the calls finished at the end of a run."""

    calls: dict[tuple[str, str], int]
    """(workflow_name, status) -> finished calls."""
    by_trace: dict[str, dict[str, Any]] = field(default_factory=dict)
    """trace_id -> {workflow_name, status, duration} of each finished call."""
    function_calls: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """(workflow_name, function_name, function_type, status) -> function calls of finished calls."""
    by_span: dict[str, dict[str, Any]] = field(default_factory=dict)
    """span_id -> {trace_id, labels, duration} of each function call of a finished call."""


def ground_truth(simulator: Simulator) -> Truth:
    truth = Truth(calls=simulator.finished_counts())
    for call in simulator.calls():
        if call["status"] not in FINISHED:
            continue
        workflow = call.get("workflowName") or "(none)"
        tid = trace_id(call["callID"])
        truth.by_trace[tid] = {
            "workflow_name": workflow,
            "status": call["status"],
            "duration": seconds_between(call["createdAt"], call["finishedAt"]),
        }
        seen: set[str] = set()
        for fc in simulator.trace(call["callID"])["functionCalls"]:
            if fc["functionCallID"] in seen:
                continue
            seen.add(fc["functionCallID"])
            key = (workflow, fc["functionName"], fc["type"], fc["status"])
            truth.function_calls[key] += 1
            if fc.get("startedAt") and fc.get("finishedAt"):
                truth.by_span[span_id(fc["functionCallID"])] = {
                    "trace_id": tid,
                    "labels": key,
                    "duration": seconds_between(fc["startedAt"], fc["finishedAt"]),
                }
    return truth


def in_flight(simulator: Simulator) -> int:
    counts = simulator.status_counts()
    return int(counts.get("pending", 0) + counts.get("running", 0))


def quiesce(simulator: Simulator, timeout: float = 30.0) -> None:
    """Stop the arrivals and the faults, and wait until every call has finished."""
    simulator.config.arrival_rate = 0.0
    simulator.config.faults.rate_429 = 0.0
    simulator.config.faults.rate_5xx = 0.0
    time.sleep(0.2)  # an arrival already drawn may still land
    wait_until(lambda: in_flight(simulator) == 0, timeout, interval=0.2, what="every simulated call finished")


def settle(simulator: Simulator, exporter: ExporterProcess, prometheus: PrometheusServer) -> Truth:
    """After `quiesce`: wait until the exporter and then Prometheus hold the final counts."""
    truth = ground_truth(simulator)
    wait_until(lambda: exporter.calls_total() == truth.calls, 30, what=f"the exporter's counts == {truth.calls}")
    total = sum(truth.calls.values())
    prometheus.wait_for("sum(bem_calls_total)", lambda v: v == total, 20, what=f"sum(bem_calls_total) == {total}")
    prometheus.wait_scraped()
    return truth


def ingestion_errors(prometheus: PrometheusServer) -> dict[str, float]:
    """Samples and exemplars Prometheus rejected while scraping (its own counters), by counter."""
    own = httpx.get(f"{prometheus.url}/metrics", timeout=10).text
    errors = {}
    for name in (
        "prometheus_target_scrapes_exemplar_out_of_order_total",
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_bounds_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_tsdb_exemplar_out_of_order_exemplars_total",
    ):
        values = [float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", own, re.MULTILINE)]
        assert values, f"Prometheus does not expose {name}"
        if any(values):
            errors[name] = sum(values)
    return errors


def shut_down(exporter: ExporterProcess, prometheus: PrometheusServer) -> None:
    """Stop the exporter (SIGTERM, then SIGKILL if it hangs) and Prometheus, whatever happens."""
    try:
        if exporter.process is not None and exporter.process.poll() is None:
            try:
                exporter.stop()
            except subprocess.TimeoutExpired:
                exporter.kill()
    finally:
        prometheus.stop()


def above(threshold: float | None) -> Callable[[float | None], bool]:
    return lambda value: value is not None and threshold is not None and value > threshold


def finite(values: dict[Labels, float]) -> dict[Labels, float]:
    return {labels: value for labels, value in values.items() if math.isfinite(value)}


# --- one run shared by the counting, exemplar, exposition and dashboard tests -------------------


@dataclass
class Run:
    simulator: Simulator
    exporter: ExporterProcess
    prometheus: PrometheusServer
    receiver: HttpReceiver
    started: float
    truth: Truth


def webhook_env(port: int) -> dict[str, str]:
    """The webhook listener on `port`, with the simulator's signing secret."""
    return {"BEM_WEBHOOK_LISTEN": f"127.0.0.1:{port}", "BEM_WEBHOOK_SECRET": DEMO_WEBHOOK_SECRET}


def hook_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/webhook"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Prefilled calls plus ~8 s of live arrivals (with 429s and 5xx injected for 2 s of it),
    their events delivered as webhooks to the exporter's listener (subscribed as an operator
    does), then quiet until every call has finished and Prometheus has scraped the final counts."""
    directory = tmp_path_factory.mktemp("prometheus-e2e")
    simulator = Simulator(SimulatorConfig(seed=17, prefill=150, history=600.0, arrival_rate=10.0, speed=SPEED))
    hook_port = free_port()
    with SimulatorServer(simulator) as url, HttpReceiver() as receiver:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": receiver.protocol,
            **canary_env(RUN_CANARY_WORKFLOW),
            **webhook_env(hook_port),
        }
        exporter = ExporterProcess(url, directory / "state.sqlite", env=env)
        prometheus = PrometheusServer(
            directory / "prometheus", [f"127.0.0.1:{exporter.port}"], rule_files=RULE_FILES
        ).start()
        try:
            with prometheus.diagnose(exporter.log):
                started = time.time()
                exporter.start()
                subscribe(url, hook_url(hook_port), directory)
                prometheus.wait_for("sum(bem_calls_total)", lambda v: bool(v), 30, what="a first scrape with calls")
                time.sleep(2.0)
                simulator.config.faults.rate_429 = 0.3
                simulator.config.faults.rate_5xx = 0.2
                time.sleep(2.0)
                simulator.config.faults.rate_429 = 0.0
                simulator.config.faults.rate_5xx = 0.0
                time.sleep(3.0)
                stop_canary(simulator)
                quiesce(simulator)
                truth = settle(simulator, exporter, prometheus)
                # Spans leave asynchronously: wait for the trace of every finished call, so that
                # the exemplars can be checked against what the trace backend received.
                wait_until(
                    lambda: set(truth.by_trace) <= {span["trace_id"] for span in receiver.spans()},
                    30,
                    what="the trace of every finished call at the OTLP receiver",
                )
                prometheus.wait_rules_evaluated()
            yield Run(simulator, exporter, prometheus, receiver, started, truth)
        finally:
            shut_down(exporter, prometheus)


def diagnosed(test: Callable[[Run], None]) -> Callable[[Run], None]:
    """Print Prometheus' log tail, its targets and the exporter's log when the test fails."""

    @functools.wraps(test)
    def wrapper(run: Run) -> None:
        with run.prometheus.diagnose(run.exporter.log):
            test(run)

    return wrapper


@diagnosed
def test_prometheus_sees_every_finished_call_once(run: Run) -> None:
    prometheus, truth = run.prometheus, run.truth
    assert sum(truth.calls.values()) > 150
    assert prometheus.scalar("sum(bem_calls_total)") == sum(truth.calls.values())

    by_series = prometheus.vector("sum by (workflow_name, status) (bem_calls_total)")
    seen = {(dict(k)["workflow_name"], dict(k)["status"]): int(v) for k, v in by_series.items() if v}
    assert seen == truth.calls

    ratio = finite(
        prometheus.vector(
            'sum by (workflow_name) (bem_calls_total{status="failed"}) / sum by (workflow_name) (bem_calls_total)'
        )
    )
    expected = {}
    for workflow in {w for w, _ in truth.calls}:
        failed, completed = truth.calls.get((workflow, "failed"), 0), truth.calls.get((workflow, "completed"), 0)
        expected[workflow] = failed / (failed + completed)
    assert {dict(k)["workflow_name"]: v for k, v in ratio.items()} == pytest.approx(expected, abs=1e-12)
    assert any(0 < v < 1 for v in expected.values())


@diagnosed
def test_histogram_counts_match_the_counters(run: Run) -> None:
    prometheus = run.prometheus
    calls = {series_labels(k): v for k, v in prometheus.vector("bem_calls_total").items()}
    counts = {series_labels(k): v for k, v in prometheus.vector("bem_call_duration_seconds_count").items()}
    infinity = {
        without(series_labels(k), "le"): v
        for k, v in prometheus.vector('bem_call_duration_seconds_bucket{le="+Inf"}').items()
    }
    assert counts == calls
    assert infinity == calls
    assert len(calls) >= 2 * len({w for w, _ in run.truth.calls}), "both statuses of every workflow exist"

    functions = {series_labels(k): v for k, v in prometheus.vector("bem_function_calls_total").items()}
    durations = {series_labels(k): v for k, v in prometheus.vector("bem_function_call_duration_seconds_count").items()}
    # Every function call of the simulator has startedAt and finishedAt once its call finished.
    assert {k: v for k, v in durations.items() if v} == {k: v for k, v in functions.items() if v}


@diagnosed
def test_function_calls_match_the_traces_of_finished_calls(run: Run) -> None:
    prometheus, truth = run.prometheus, run.truth
    total = sum(truth.function_calls.values())
    assert total > sum(truth.calls.values()), "calls run more than one function call"
    assert prometheus.scalar("sum(bem_function_calls_total)") == total

    by_series = prometheus.vector(
        "sum by (workflow_name, function_name, function_type, status) (bem_function_calls_total)"
    )
    seen = {
        (dict(k)["workflow_name"], dict(k)["function_name"], dict(k)["function_type"], dict(k)["status"]): int(v)
        for k, v in by_series.items()
        if v
    }
    assert seen == dict(truth.function_calls)


@diagnosed
def test_exemplars_name_real_traces_of_finished_calls(run: Run) -> None:
    prometheus, truth = run.prometheus, run.truth
    end = time.time() + 1
    found = prometheus.query_exemplars("bem_call_duration_seconds_bucket", run.started - 60, end)
    exemplars = [(series["seriesLabels"], e) for series in found for e in series["exemplars"]]
    assert exemplars, "no exemplars stored: is the exporter serving OpenMetrics to Prometheus?"
    received = {span["trace_id"] for span in run.receiver.spans()}
    with_exemplar: set[Labels] = set()
    for series, exemplar in exemplars:
        tid = exemplar["labels"]["trace_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", tid), tid
        assert tid in truth.by_trace, f"{tid} is not the trace id of a finished call"
        call = truth.by_trace[tid]
        assert (series["workflow_name"], series["status"]) == (call["workflow_name"], call["status"])
        assert float(exemplar["value"]) == pytest.approx(call["duration"], abs=0.002)
        assert float(exemplar["value"]) <= float(series["le"])
        assert tid in received, "the exemplar links to a trace the backend never got"
        with_exemplar.add(series_labels(labels_tuple(series)))

    # Every bucket that counted a call carries an exemplar (the latest call that fell into it).
    filled = set()
    buckets = prometheus.vector("bem_call_duration_seconds_bucket")
    by_series: dict[Labels, list[tuple[float, float, Labels]]] = {}
    for labels, value in buckets.items():
        clean = series_labels(labels)
        le = float(dict(clean)["le"])
        by_series.setdefault(without(clean, "le"), []).append((le, value, clean))
    for rows in by_series.values():
        previous = 0.0
        for _, cumulative, clean in sorted(rows):
            if cumulative > previous:
                filled.add(clean)
            previous = cumulative
    assert filled and filled <= with_exemplar, f"buckets without an exemplar: {sorted(filled - with_exemplar)[:5]}"


@diagnosed
def test_function_exemplars_name_the_function_calls_span(run: Run) -> None:
    prometheus, truth = run.prometheus, run.truth
    found = prometheus.query_exemplars("bem_function_call_duration_seconds_bucket", run.started - 60, time.time() + 1)
    exemplars = [(series["seriesLabels"], e) for series in found for e in series["exemplars"]]
    assert exemplars
    for series, exemplar in exemplars:
        sid = exemplar["labels"]["span_id"]
        assert sid in truth.by_span, f"{sid} is not the span id of a function call of a finished call"
        function_call = truth.by_span[sid]
        assert exemplar["labels"]["trace_id"] == function_call["trace_id"]
        labels = (series["workflow_name"], series["function_name"], series["function_type"], series["status"])
        assert labels == function_call["labels"]
        assert float(exemplar["value"]) == pytest.approx(function_call["duration"], abs=0.002)


@diagnosed
def test_exposition_passes_promtool_and_prometheus_ingests_it_cleanly(run: Run) -> None:
    text = run.exporter.metrics()
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    # promtool 2.x parses only the text format (it reads an exemplar as a malformed timestamp),
    # so OpenMetrics is checked by prometheus_client's strict parser and by Prometheus itself.
    openmetrics = run.exporter.metrics(openmetrics=True)
    assert openmetrics.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(openmetrics)}  # type: ignore[no-untyped-call]
    assert {"bem_calls", "bem_call_duration_seconds", "bem_function_calls"} <= set(families)
    assert any(s.exemplar is not None for s in families["bem_call_duration_seconds"].samples)

    targets = run.prometheus.active_targets()
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    assert ingestion_errors(run.prometheus) == {}


# --- restarts ----------------------------------------------------------------------------------


def test_restarts_neither_double_count_nor_reset_counters(tmp_path: Path) -> None:
    """With Prometheus scraping throughout, the exporter is stopped with SIGTERM and later
    killed with -9 while calls arrive and run, and restarted each time on the same state file
    and port. The counters continue where they were: the last value equals the truth, and
    Prometheus sees no counter reset in any persisted series, while it does see the restarts
    (the process start time changes, the self-metrics restart at zero)."""
    simulator = Simulator(SimulatorConfig(seed=23, prefill=120, history=600.0, arrival_rate=12.0, speed=SPEED))
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(url, tmp_path / "state.sqlite")
        prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{exporter.port}"]).start()
        try:
            with prometheus.diagnose(exporter.log):
                started = time.time()
                exporter.start()
                prometheus.wait_for("sum(bem_calls_total)", lambda v: bool(v), 30, what="a first scrape with calls")
                for how in (signal.SIGTERM, signal.SIGKILL):
                    time.sleep(1.5)
                    prometheus.wait_scraped()
                    assert in_flight(simulator) > 0, "stopping mid-way through the workload"
                    before = prometheus.scalar("sum(bem_calls_total)")
                    code = exporter.stop(how)
                    assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
                    time.sleep(1.5)  # calls finish while it is down
                    exporter.start()
                    prometheus.wait_for("sum(bem_calls_total)", above(before), 20, what=f"more than {before} calls")
                quiesce(simulator)
                truth = settle(simulator, exporter, prometheus)

                window = f"{math.ceil(time.time() - started) + 10}s"
                assert prometheus.scalar("sum(bem_calls_total)") == sum(truth.calls.values())
                last = prometheus.vector("sum by (workflow_name, status) (bem_calls_total)")
                assert {(dict(k)["workflow_name"], dict(k)["status"]): int(v) for k, v in last.items() if v} == (
                    truth.calls
                )
                # Prometheus saw three processes and the self-metrics start from zero each time.
                assert prometheus.scalar(f"changes(process_start_time_seconds[{window}])") == 2
                assert (prometheus.scalar(f"resets(bem_exporter_poll_duration_seconds_count[{window}])") or 0) >= 1
                # ...but no persisted counter or histogram series ever went down.
                for name in PERSISTED:
                    resets = prometheus.vector(f"resets({name}[{window}])")
                    assert resets, f"no {name} series"
                    assert {k: v for k, v in resets.items() if v} == {}, f"{name} was reset"
                persisted = "|".join(PERSISTED)
                samples = prometheus.matrix(f'{{__name__=~"{persisted}"}}[{window}]')
                assert len(samples) > 100
                for labels, points in samples.items():
                    values = [v for _, v in points]
                    assert values == sorted(values), f"{dict(labels)} went down: {values}"
                # Exemplars stamped at scrape time never go backwards, not even across restarts.
                assert ingestion_errors(prometheus) == {}
        finally:
            shut_down(exporter, prometheus)


# --- the shipped dashboards --------------------------------------------------------------------

QUALITY_PRICE = "0.01"
"""A price per function call for the Quality dashboard's spend panels (empty as shipped: no data)."""


@diagnosed
def test_every_dashboard_query_returns_data(run: Run) -> None:
    """Each PromQL query of each panel of grafana/dashboards/*.json, run as Grafana runs it (a
    range query over the dashboard's time range, here the run) against this Prometheus with
    the shipped recording rules loaded, returns at least one finite value."""
    dashboards = pytest.importorskip("dashboards")
    # The dashboards match `workflow_name="$workflow"`: pick the canary's workflow, one of the
    # busiest, whose canary the overview's canary row then shows.
    calls: Counter[str] = Counter()
    for (workflow, _), count in run.truth.calls.items():
        if workflow != "(none)":
            calls[workflow] += count
    workflow = RUN_CANARY_WORKFLOW
    assert calls[workflow] >= calls.most_common(1)[0][1] / 2, calls
    queries = dashboards.dashboard_queries({"workflow": workflow, "price": QUALITY_PRICE})
    assert len(queries) > 50

    prometheus = run.prometheus
    start, end = run.started - 5, time.time()
    empty = []
    for uid, title, expr in queries:
        values = prometheus.query_range(expr, start, end, step=1.0)
        if not any(math.isfinite(v) for points in values.values() for _, v in points):
            empty.append(f"{uid} / {title}: {' '.join(expr.split())} ({'all NaN' if values else 'no series'})")
        elif not any(math.isfinite(v) and v != 0 for points in values.values() for _, v in points):
            print(f"only zeros: {uid} / {title}: {' '.join(expr.split())}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    # The template variables offer values, and the annotations are valid queries.
    for uid, name, selector in dashboards.variable_queries():
        selector = selector.replace('workflow_name=".*"', f'workflow_name="{workflow}"')
        assert prometheus.series([selector], start, end), f"{uid}: variable {name} ({selector}) has no values"
    for _, _, expr in dashboards.annotation_queries():
        prometheus.query_range(expr, start, end, step=1.0)


@diagnosed
def test_the_webhook_panels_show_the_simulators_deliveries(run: Run) -> None:
    """The exporter-health Webhooks row shows more than zeros: deliveries accepted, calls
    counted from webhooks (some, and never more than every call: each is counted once), and a
    webhook delay."""
    dashboards = pytest.importorskip("dashboards")
    prometheus, total = run.prometheus, sum(run.truth.calls.values())
    assert (prometheus.scalar('sum(bem_exporter_webhooks_received_total{result="accepted"})') or 0) > 0
    from_webhooks = prometheus.scalar("sum(bem_exporter_webhook_counted_calls_total)")
    assert from_webhooks is not None and 0 < from_webhooks <= total
    queries = dashboards.dashboard_queries()
    delays = [expr for uid, title, expr in queries if (uid, title) == ("bem-exporter-health", "Webhook delay")]
    assert len(delays) == 2
    for expr in delays:
        values = prometheus.query_range(expr, run.started - 5, time.time(), step=1.0)
        assert any(math.isfinite(v) and v > 0 for points in values.values() for _, v in points), expr


# --- replicas on one PostgreSQL, through a leader kill ------------------------------------------

LEASE = "2s"
"""A short lease, so that the standby takes over within a few seconds of the kill."""


@dataclass
class Replicas:
    """Two `bem-exporter run` replicas sharing their state in PostgreSQL."""

    first: ExporterProcess
    second: ExporterProcess

    def both(self) -> tuple[ExporterProcess, ExporterProcess]:
        return self.first, self.second

    def logs(self) -> str:
        return "\n".join(f"--- replica {r.url}:\n{r.log()[-6000:]}" for r in self.both())


def shared_state_replica(api_url: str, state_url: str, name: Path, hook_port: int) -> ExporterProcess:
    """A `run` process on the shared state (BEM_STATE_URL, so no BEM_STATE_PATH), with its
    webhook listener on `hook_port`."""
    env = {"BEM_STATE_URL": state_url, "BEM_LEADER_LEASE": LEASE, **webhook_env(hook_port)}
    process = ExporterProcess(api_url, name.with_suffix(".state"), env=env)
    del process.env["BEM_STATE_PATH"]
    return process


def instance(exporter: ExporterProcess) -> str:
    return f"127.0.0.1:{exporter.port}"


def serving(exporter: ExporterProcess) -> bool:
    if exporter.process is not None and exporter.process.poll() is not None:
        raise AssertionError(f"replica exited with {exporter.process.returncode}:\n{exporter.log()}")
    try:
        return httpx.get(f"{exporter.url}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def leads(exporter: ExporterProcess) -> bool:
    return serving(exporter) and exporter.samples("bem_exporter_leader") == {(): 1.0}


def window_bounds(
    prometheus: PrometheusServer, metric: str, by: tuple[str, ...], at: float, seconds: float
) -> dict[Labels, tuple[float, float]]:
    """What `sum by (<by>) (max without (instance, pod) (increase(<metric>[<seconds>s])))`
    may return at `at`, from the raw samples of every replica: at least the largest increase
    any replica's series shows in the window (last minus first sample: nothing lost), at most
    that with Prometheus' extrapolation to the window's edges (each side at most 1.1 times the
    series' average scrape interval). A sum over the replicas, or a lost increment, falls
    outside."""
    samples = prometheus.matrix(f"{metric}[{int(seconds * 1000)}ms]", at=at)
    per_key: dict[Labels, tuple[float, float]] = {}
    for labels, points in samples.items():
        if len(points) < 2:
            continue
        v0, v1 = points[0][1], points[-1][1]
        assert v1 >= v0, f"{dict(labels)} went down in the window"
        # A rule evaluated at `at` may miss the last scrape stamped before it: one sample fewer.
        stretch = 1 + 2.2 / max(len(points) - 2, 1)
        key = without(labels, "__name__", "instance")
        low, high = per_key.get(key, (0.0, 0.0))
        per_key[key] = (max(low, v1 - v0), max(high, (v1 - v0) * stretch))
    grouped: dict[Labels, tuple[float, float]] = {}
    for key, (low, high) in per_key.items():
        group = tuple((k, v) for k, v in key if k in by)
        total_low, total_high = grouped.get(group, (0.0, 0.0))
        grouped[group] = (total_low + low, total_high + high)
    return grouped


def recorded_at(prometheus: PrometheusServer, record: str) -> float:
    """The time of the latest evaluation of a recording rule."""
    result = prometheus.query(record)["result"]
    assert result, f"{record} has no value"
    return float(result[0]["value"][0])


def assert_within(values: dict[Labels, float], bounds: dict[Labels, tuple[float, float]], what: str) -> None:
    assert any(low > 0 for low, _ in bounds.values()), f"{what}: nothing counted in the window"
    missing = {labels for labels, (low, _) in bounds.items() if low > 0} - set(values)
    assert not missing, f"{what}: no value for {sorted(missing)}"
    for labels, value in values.items():
        assert labels in bounds, f"{what}: {dict(labels)} has no series behind it"
        low, high = bounds[labels]
        assert low - 1e-9 <= value <= high + 1e-9, f"{what} {dict(labels)}: {value} not in [{low}, {high}]"


def serves_truth(replica: ExporterProcess, calls: dict[tuple[str, str], int]) -> Callable[[], bool]:
    return lambda: replica.calls_total() == calls


def test_two_replicas_through_a_leader_kill_count_once(tmp_path: Path, postgres_url: str) -> None:
    """Two replicas share one PostgreSQL state and Prometheus scrapes both, with the shipped
    rules loaded. The leader is killed with -9 mid-traffic; the standby takes over; the killed
    one comes back as a standby. The simulator's webhooks go to the standby, which hands them
    to the leader through the shared state. Every replica serves the same counts (so a plain
    sum doubles them), and the shipped recording rules and dashboard queries count every call
    once, losing none: the survivor's series holds every call up to the simulator's truth, and
    the recorded rates cover all of it."""
    simulator = Simulator(SimulatorConfig(seed=31, prefill=120, history=600.0, arrival_rate=10.0, speed=SPEED))
    with SimulatorServer(simulator) as url:
        hook_ports = free_port(), free_port()
        replicas = Replicas(
            shared_state_replica(url, postgres_url, tmp_path / "replica-1", hook_ports[0]),
            shared_state_replica(url, postgres_url, tmp_path / "replica-2", hook_ports[1]),
        )
        first, second = replicas.both()
        prometheus = PrometheusServer(
            tmp_path / "prometheus", [instance(first), instance(second)], rule_files=RULE_FILES
        ).start()
        try:
            with prometheus.diagnose(replicas.logs):
                started = time.time()
                first.start(ready=False)
                wait_until(lambda: leads(first), 30, interval=0.2, what="the first replica leads")
                second.start(ready=False)
                wait_until(lambda: serving(second), 30, interval=0.2, what="the second replica serves /metrics")
                assert not leads(second), "two leaders"
                subscribe(url, hook_url(hook_ports[1]), tmp_path)  # the survivor's listener
                prometheus.wait_for(
                    f'sum(bem_calls_total{{instance="{instance(second)}"}})', bool, 30, what="the standby's counts"
                )
                time.sleep(2.0)
                assert in_flight(simulator) > 0, "killing the leader mid-way through the workload"
                assert first.stop(signal.SIGKILL) == -signal.SIGKILL
                killed = time.time()
                wait_until(lambda: leads(second), 30, interval=0.2, what="the standby takes over")
                time.sleep(1.5)
                first.start(ready=False)  # back, on the same port: a standby now
                wait_until(lambda: serving(first), 30, interval=0.2, what="the killed replica serves again")
                assert not leads(first), "two leaders"
                quiesce(simulator)
                truth = ground_truth(simulator)
                for replica in replicas.both():
                    wait_until(serves_truth(replica, truth.calls), 30, what=f"{replica.url} serves {truth.calls}")
                total = sum(truth.calls.values())
                prometheus.wait_for("sum(bem_calls_total)", lambda v: v == 2 * total, 20, what="both replicas scraped")
                prometheus.wait_scraped()
                prometheus.wait_rules_evaluated()
                assert time.time() - started < 240, "the run must fit in the recording rules' 5m window"
                check_replicated_run(prometheus, truth, second, started, killed)
        finally:
            try:
                for replica in replicas.both():
                    if replica.process is not None and replica.process.poll() is None:
                        replica.kill()
            finally:
                prometheus.stop()


def check_replicated_run(
    prometheus: PrometheusServer, truth: Truth, survivor: ExporterProcess, started: float, killed: float
) -> None:
    total = sum(truth.calls.values())
    # Both replicas serve every call: a plain sum doubles, the deduplicated sum is the truth.
    assert prometheus.scalar("sum(bem_calls_total)") == 2 * total
    deduped = prometheus.vector("sum by (workflow_name, status) (max without (instance, pod) (bem_calls_total))")
    assert {(dict(k)["workflow_name"], dict(k)["status"]): int(v) for k, v in deduped.items() if v} == truth.calls

    # No replica's persisted series ever went down, the kill and the restart included.
    window = f"{math.ceil(time.time() - started) + 10}s"
    for name in PERSISTED:
        resets = prometheus.vector(f"resets({name}[{window}])")
        assert resets, f"no {name} series"
        assert {k: v for k, v in resets.items() if v} == {}, f"{name} was reset"

    # The survivor's series began before the kill and ends at the truth: it holds every call.
    mine = prometheus.matrix(f'bem_calls_total{{instance="{instance(survivor)}"}}[{window}]')
    assert min(points[0][0] for points in mine.values()) < killed
    last = {(dict(k)["workflow_name"], dict(k)["status"]): int(p[-1][1]) for k, p in mine.items() if p[-1][1]}
    assert last == truth.calls

    # The recording rules: every call of the run once (the run fits in their 5m window).
    at = recorded_at(prometheus, "workflow_status:bem_calls:rate5m")
    bounds = window_bounds(prometheus, "bem_calls_total", ("workflow_name", "status"), at, 300)
    recorded = {series_labels(k): v * 300 for k, v in prometheus.vector("workflow_status:bem_calls:rate5m", at).items()}
    assert_within(recorded, bounds, "workflow_status:bem_calls:rate5m * 300")
    by_workflow = window_bounds(prometheus, "bem_calls_total", ("workflow_name",), at, 300)
    recorded = {series_labels(k): v * 300 for k, v in prometheus.vector("workflow:bem_calls:rate5m", at).items()}
    assert_within(recorded, by_workflow, "workflow:bem_calls:rate5m * 300")
    # ...which the naive sum over the replicas is not: these bounds catch a doubling.
    naive = prometheus.vector("sum by (workflow_name) (increase(bem_calls_total[300s]))", at)
    assert any(v > by_workflow[k][1] for k, v in naive.items()), "both replicas' series were in the window"

    # The dashboards' totals over the time picker's range, here the same 5 minutes.
    dashboards = pytest.importorskip("dashboards")
    queries = dashboards.dashboard_queries({"__range": "300s"})
    table = next(expr for uid, title, expr in queries if (uid, title) == ("bem-overview", "Workflows"))
    assert_within(
        {series_labels(k): v for k, v in prometheus.vector(table, at).items()}, by_workflow, f"overview: {table}"
    )
    workflow = max(truth.calls, key=lambda key: truth.calls[key])[0]
    queries = dashboards.dashboard_queries({"__range": "300s", "workflow": workflow})
    steps = next(expr for uid, title, expr in queries if (uid, title) == ("bem-workflow", "Function steps"))
    selector = f'bem_function_calls_total{{workflow_name="{workflow}"}}'
    bounds = window_bounds(prometheus, selector, ("function_name",), at, 300)
    assert_within({series_labels(k): v for k, v in prometheus.vector(steps, at).items()}, bounds, f"workflow: {steps}")

    # Every panel has data through the kill, and no call panel shows a series per replica.
    empty = []
    for uid, title, expr in dashboards.dashboard_queries({"workflow": workflow, "price": QUALITY_PRICE}):
        if "bem_canary_" in expr:
            continue  # no canary in this run: the module's `run` checks those panels
        values = prometheus.query_range(expr, started - 5, time.time(), step=2.0)
        if not any(math.isfinite(v) for points in values.values() for _, v in points):
            empty.append(f"{uid} / {title}: {' '.join(expr.split())}")
        if uid != "bem-exporter-health":
            split = [dict(labels) for labels in values if "instance" in dict(labels)]
            assert not split, f"{uid} / {title} shows one series per replica: {expr}"
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


# --- the synthetic canary ----------------------------------------------------------------------

CANARY_DOCUMENT = ROOT / "exporter" / "simulator" / "canary.pdf"
RUN_CANARY_WORKFLOW = "email-router"
"""The canary's workflow in the shared run, one of its busiest: the dashboard test selects it as
`$workflow`, so the canary row's panels show its canary."""


def canary_env(workflow: str, interval: str = "2s", timeout: str = "20s") -> dict[str, str]:
    """A canary of a simulated workflow with the shipped document: a call every `interval`,
    one in flight at most; the timeout is past the longest simulated call (~9 s at SPEED)."""
    return {
        "BEM_CANARY_WORKFLOW": workflow,
        "BEM_CANARY_FILE": str(CANARY_DOCUMENT),
        "BEM_CANARY_INTERVAL": interval,
        "BEM_CANARY_TIMEOUT": timeout,
    }


def stop_canary(simulator: Simulator) -> None:
    """Refuse the canary's create requests (a 400 is final): no new call keeps the workload
    from quiescing, and each refusal counts as a `submit_error`."""
    simulator.config.faults.canary_reject = 400


def canary_calls(simulator: Simulator) -> list[dict[str, Any]]:
    return [c for c in simulator.calls() if str(c.get("callReferenceID", "")).startswith("bem-exporter-canary-")]


@diagnosed
def test_prometheus_sees_each_canary_call_judged_once(run: Run) -> None:
    prometheus = run.prometheus
    calls = canary_calls(run.simulator)
    assert calls and all(call["status"] in FINISHED for call in calls)
    query = f'sum by (result) (bem_canary_runs_total{{workflow_name="{RUN_CANARY_WORKFLOW}"}})'
    by_result = {dict(k)["result"]: v for k, v in prometheus.vector(query).items()}
    completed = sum(call["status"] == "completed" for call in calls)
    assert (by_result["success"], by_result["failure"]) == (completed, len(calls) - completed)
    assert by_result["timeout"] == 0 and by_result["submit_error"] >= 1  # refused once stopped
    assert prometheus.scalar("sum(bem_canary_duration_seconds_count)") == len(calls)


def test_bem_canary_failing_fires_when_canary_calls_fail(tmp_path: Path) -> None:
    """Quiet while the canary succeeds; firing once the simulator makes its calls fail."""
    simulator = Simulator(SimulatorConfig(seed=29, arrival_rate=0.0, failure_rate=0.0, speed=SPEED))
    firing = 'count(ALERTS{alertname="BemCanaryFailing", alertstate="firing", workflow_name="receipt-extract"})'
    with SimulatorServer(simulator) as url:
        env = canary_env("receipt-extract", interval="1s", timeout="15s")
        exporter = ExporterProcess(url, tmp_path / "state.sqlite", env=env)
        prometheus = PrometheusServer(
            tmp_path / "prometheus", [f"127.0.0.1:{exporter.port}"], rule_files=RULE_FILES
        ).start()
        try:
            with prometheus.diagnose(exporter.log):
                exporter.start()
                success = 'sum(bem_canary_runs_total{result="success"})'
                prometheus.wait_for(success, lambda v: (v or 0) >= 2, 60, what="two canary successes")
                prometheus.wait_rules_evaluated()
                assert prometheus.scalar(firing) is None, "BemCanaryFailing fires on a healthy canary"
                simulator.config.faults.canary_outcome = "fail"
                prometheus.wait_for(firing, lambda v: v == 1, 90, what="BemCanaryFailing firing")
                failed = prometheus.scalar('sum(bem_canary_runs_total{result="failure"})')
                assert failed is not None and failed >= 2
                assert prometheus.scalar('max(bem_canary_success{workflow_name="receipt-extract"})') == 0
        finally:
            shut_down(exporter, prometheus)


# --- quality: a drifting accuracy ----------------------------------------------------------------

QUALITY_ALERTS = ("BemFunctionAccuracyDropped", "BemFunctionConfidenceDropped", "BemFunctionLabelingStalled")


def quality_rules_at_once(directory: Path) -> list[Path]:
    """The shipped rule files with the quality alerts' `for` cut to 0s: the test sees the rules'
    expressions judge the exporter's real series in seconds; promtool tests the `for` durations
    (prometheus/tests/bem-quality.test.yaml)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for source in RULE_FILES:
        document = yaml.safe_load(source.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in QUALITY_ALERTS:
                    rule["for"] = "0s"
        target = directory / source.name
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        files.append(target)
    return files


def test_bem_function_accuracy_dropped_fires_when_accuracy_drifts(tmp_path: Path) -> None:
    """Silent while the simulator's function accuracies hold (their counts still grow); firing,
    for the drifting function alone, once the simulator's drift has taken its accuracy more than
    0.10 below its best, read by `bem-exporter run` every second through the shipped rules."""
    simulator = Simulator(SimulatorConfig(seed=37, arrival_rate=0.5, speed=SPEED))
    drifting = "extract-invoice"
    alerts = 'ALERTS{alertname="BemFunctionAccuracyDropped"}'
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(url, tmp_path / "state.sqlite", env={"BEM_QUALITY_INTERVAL": "1s"})
        rules = quality_rules_at_once(tmp_path / "rules")
        prometheus = PrometheusServer(tmp_path / "prometheus", [f"127.0.0.1:{exporter.port}"], rule_files=rules).start()
        try:
            with prometheus.diagnose(exporter.log):
                exporter.start()
                recorded = 'count(function_ratio:bem_function_quality:ratio{ratio="accuracy"})'
                prometheus.wait_for(recorded, lambda v: (v or 0) >= 10, 60, what="accuracy of 10 labeled functions")
                accuracy = f'max(bem_function_accuracy_ratio{{function_name="{drifting}"}})'
                best = prometheus.scalar(accuracy)
                assert best is not None and best > 0.85
                for _ in range(5):  # five rule evaluations over steady accuracies
                    prometheus.wait_rules_evaluated()
                assert prometheus.vector(alerts) == {}, "BemFunctionAccuracyDropped on steady accuracies"

                simulator.config.quality.start_drift(drifting, per_hour=0.02 * 3600, now=time.time())  # 0.02/s
                firing = f'count({alerts[:-1]}, alertstate="firing", function_name="{drifting}"}})'
                prometheus.wait_for(firing, lambda v: (v or 0) >= 1, 60, what="BemFunctionAccuracyDropped firing")
                now = prometheus.scalar(accuracy)
                assert now is not None and now < best - 0.10
                fired = {dict(labels)["function_name"] for labels in prometheus.vector(alerts)}
                assert fired == {drifting}, f"other functions alerted: {fired}"
        finally:
            shut_down(exporter, prometheus)

"""bem's function quality metrics, read over real HTTP from the simulator: the gauges equal the
simulator's numbers across several pages; a null ratio and a vanished function leave no series;
a failing endpoint (500, 429, a malformed body, 404 on an account without the feature) keeps
the last values and is reported, in the self-metrics and on /status, while `bem-exporter run`
goes on counting calls."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import Clock
from processes import ExporterProcess, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.bem.client import BemClient
from exporter.config import MetricsSettings
from exporter.metrics import Metrics
from exporter.metrics.labels import LabelPolicy
from exporter.metrics.observer import SelfMetrics
from exporter.quality.gauges import QualityGauges
from exporter.quality.reader import QualityReader
from exporter.quality.watch import QualityWatch
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.catalog import FUNCTIONS_BY_NAME
from exporter.simulator.quality import UNLABELED, functions_of, truth
from exporter.status import StatusBoard, render_html, render_json

T = TypeVar("T")
GUARD = 120.0
RATIO_METRICS = {
    "accuracy": "bem_function_accuracy_ratio",
    "precision": "bem_function_precision_ratio",
    "recall": "bem_function_recall_ratio",
    "f1Score": "bem_function_f1_ratio",
}
OUTCOMES = ("tp", "fp", "tn", "fn")
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def served(clock: Clock) -> Iterator[tuple[Simulator, str]]:
    simulator = Simulator(SimulatorConfig(seed=5, arrival_rate=0.0), clock=clock)
    with SimulatorServer(simulator) as url:
        yield simulator, url


def with_client(url: str, use: Callable[[BemClient], Awaitable[T]], attempts: int = 2) -> T:
    async def main() -> T:
        async with BemClient(
            url, "sim-key", "v3", timeout=5.0, max_concurrency=4, max_rps=1000.0, max_attempts=attempts
        ) as client:
            return await asyncio.wait_for(use(client), GUARD)

    return asyncio.run(main())


def exposed(*collectors: Any) -> Series:
    """What a scrape of these collectors shows: (sample name, labels) -> value."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def expected_series(items: dict[str, dict[str, Any]]) -> Series:
    """The series DESIGN section 1.2 promises for the simulator's items."""
    series: Series = {}
    for name, item in items.items():
        label = (("function_name", name),)
        for field, metric in RATIO_METRICS.items():
            if item["metrics"][field] is not None:
                series[(metric, label)] = item["metrics"][field]
        series[("bem_function_results", label)] = item["totalResults"]
        series[("bem_function_labeled_results", label)] = item["totalLabeledResults"]
        for outcome in OUTCOMES:
            outcome_labels = (("function_name", name), ("outcome", outcome))
            series[("bem_function_evaluations", outcome_labels)] = item["metrics"][outcome]
    return series


def read_into(gauges: QualityGauges, page_size: int = 5, workflows: tuple[str, ...] = ()) -> Any:
    async def read(client: BemClient) -> Any:
        reading = await QualityReader(client, workflows, page_size=page_size).read()
        gauges.replace(reading.functions)
        return reading

    return read


def test_gauges_equal_the_simulators_numbers_across_pages(served: tuple[Simulator, str], clock: Clock) -> None:
    simulator, url = served
    gauges = QualityGauges(LabelPolicy(200))
    reading = with_client(url, read_into(gauges, page_size=5))
    assert reading.pages == math.ceil(len(FUNCTIONS_BY_NAME) / 5) == 6
    assert simulator.requests["GET /v3/functions"] == simulator.requests["GET /v3/functions/metrics"] == 6
    items = truth(simulator.config.quality, clock.now)
    assert exposed(gauges) == expected_series(items)
    nulls = {name for name, item in items.items() if item["metrics"]["accuracy"] is None}
    assert UNLABELED in nulls and len(nulls) >= 5, "the run covers functions with null ratios"
    assert all(("bem_function_accuracy_ratio", (("function_name", n),)) not in exposed(gauges) for n in nulls)


def test_a_vanished_function_and_a_garbled_item_lose_their_series_alone(
    served: tuple[Simulator, str], clock: Clock
) -> None:
    simulator, url = served
    gauges = QualityGauges(LabelPolicy(200))
    with_client(url, read_into(gauges))
    knobs = simulator.config.quality
    knobs.hidden.add("extract-invoice")
    knobs.garbled.add("extract-receipt")
    rejected: list[tuple[str, int]] = []

    async def read(client: BemClient) -> Any:
        reader = QualityReader(client, page_size=5, rejected=lambda what, n: rejected.append((what, n)))
        reading = await reader.read()
        gauges.replace(reading.functions)
        return reading

    reading = with_client(url, read)
    assert reading.rejected == 1 and rejected == [("function_metrics", 1)]
    items = truth(knobs, clock.now)
    del items["extract-receipt"]
    shown = exposed(gauges)
    assert shown == expected_series(items)
    assert not [key for key in shown if dict(key[1]).get("function_name") in ("extract-invoice", "extract-receipt")]


def test_workflows_filter_what_is_read(served: tuple[Simulator, str]) -> None:
    _, url = served
    gauges = QualityGauges(LabelPolicy(200))
    reading = with_client(url, read_into(gauges, page_size=3, workflows=("claims-triage", "email-router")))
    assert set(reading.functions) == functions_of("claims-triage") | functions_of("email-router")


def test_the_label_cap_applies_and_folded_functions_get_no_series(served: tuple[Simulator, str]) -> None:
    _, url = served
    folded: list[tuple[str, int]] = []
    policy = LabelPolicy(4)
    policy.report_overflows_to(lambda label, count: folded.append((label, count)))
    gauges = QualityGauges(policy)
    with_client(url, read_into(gauges, page_size=100))
    names = {dict(labels)["function_name"] for _, labels in exposed(gauges)}
    assert len(names) == 4 and "other" not in names
    assert folded == [("function_name", 1)] * (len(FUNCTIONS_BY_NAME) - 4)


# --- failures: the last values stay, and the failure is reported -------------------------------


@pytest.mark.parametrize(
    ("fault", "result"),
    [("500", "rejected"), ("429", "rejected"), ("malformed", "malformed"), ("404", "unavailable")],
)
def test_a_failing_read_keeps_the_last_values_and_says_so(
    served: tuple[Simulator, str], clock: Clock, fault: str, result: str
) -> None:
    simulator, url = served
    knobs = simulator.config.quality
    labels = LabelPolicy(200)
    observer = SelfMetrics(labels, "test")
    gauges = QualityGauges(labels)
    board = StatusBoard("test", clock=clock)
    observer.expect_quality(("function", "function_metrics"))

    async def two_reads(client: BemClient) -> tuple[bool, bool]:
        watch = QualityWatch(QualityReader(client, page_size=10), gauges, observer, 300.0, board=board, clock=clock)
        first = await watch.read_once()
        before = exposed(gauges)
        clock.advance(60)
        if fault == "malformed":
            knobs.malformed = True
        else:
            knobs.status = int(fault)
        second = await watch.read_once()
        assert exposed(gauges) == before, "a failed read changed the gauges"
        return first, second

    first_read_at = clock.now
    assert with_client(url, two_reads) == (True, False)
    assert exposed(gauges) == expected_series(truth(knobs, first_read_at))
    reads = {
        dict(labels)["result"]: value
        for (name, labels), value in exposed(observer.registry).items()
        if name == "bem_exporter_quality_reads_total"
    }
    assert reads == {
        "success": 1,
        "unavailable": 0,
        "rejected": 0,
        "unreachable": 0,
        "malformed": 0,
        "too_large": 0,
    } | {result: 1}
    last_success = exposed(observer.registry)[("bem_exporter_quality_last_success_timestamp_seconds", ())]
    assert last_success == first_read_at

    summary = board.snapshot().quality
    assert summary is not None
    assert (summary.last_result, summary.last_success_at, summary.last_attempt_at) == (
        result,
        first_read_at,
        first_read_at + 60,
    )
    assert summary.functions == len(FUNCTIONS_BY_NAME) and summary.last_error
    if fault == "404":
        assert "BEM_QUALITY_INTERVAL=0" in summary.last_error
    document = json.loads(render_json(board.snapshot()))
    assert document["quality"]["last_result"] == result
    assert document["quality"]["functions"] == len(FUNCTIONS_BY_NAME)
    assert 'id="quality-error"' in render_html(board.snapshot())


def test_run_reads_quality_beside_the_poll_loop_and_keeps_counting_calls(tmp_path: Path) -> None:
    """`bem-exporter run` with quality reads every second: the gauges equal the simulator's
    numbers; while the quality endpoints answer 500 (each read retried for seconds) the calls
    go on being counted, the gauges keep their values and /status.json says what failed;
    after recovery a function that vanished in between has no series."""
    simulator = Simulator(SimulatorConfig(seed=11, prefill=40, history=300.0, arrival_rate=3.0, speed=20.0))
    knobs = simulator.config.quality
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(url, tmp_path / "state.sqlite", env={"BEM_QUALITY_INTERVAL": "1s"})
        try:
            exporter.start()

            def accuracy() -> dict[str, float]:
                found = exporter.samples("bem_function_accuracy_ratio")
                return {dict(labels)["function_name"]: value for labels, value in found.items()}

            wait_until(lambda: len(accuracy()) >= 10, 30, what="the quality gauges")
            expected = {
                name: item["metrics"]["accuracy"]
                for name, item in truth(knobs, simulator.now_ms() / 1000).items()
                if item["metrics"]["accuracy"] is not None
            }
            # The simulator's counts grow with its clock between the read and now: a label or two.
            assert accuracy() == pytest.approx(expected, abs=0.01)

            knobs.status = 500
            reads = "bem_exporter_quality_reads_total"
            wait_until(
                lambda: exporter.samples(reads).get((("result", "rejected"),), 0) >= 1, 60, what="a failed quality read"
            )
            kept = accuracy()
            counted = sum(exporter.calls_total().values())
            wait_until(
                lambda: exporter.samples(reads).get((("result", "rejected"),), 0) >= 2, 60, what="a second failed read"
            )
            assert sum(exporter.calls_total().values()) > counted, "no call counted while quality reads failed"
            assert accuracy() == kept, "a failed read changed the gauges"
            status = httpx.get(f"{exporter.url}/status.json", timeout=5).json()["quality"]
            assert status["last_result"] == "rejected" and "500" in status["last_error"]

            knobs.hidden.add("extract-invoice")
            knobs.status = None
            wait_until(lambda: "extract-invoice" not in accuracy(), 60, what="the vanished function's series gone")
            assert not [
                labels
                for labels in exporter.samples("bem_function_results")
                if ("function_name", "extract-invoice") in labels
            ]
        finally:
            exporter.stop()


def test_only_the_leader_reads_and_a_standby_serves_no_quality_gauges(tmp_path: Path, postgres_url: str) -> None:
    """Two replicas on one PostgreSQL state: the leader serves the quality gauges, the standby
    none; when the leader dies the standby takes over and serves them."""
    from replicas import Replicas

    simulator = Simulator(SimulatorConfig(seed=13, arrival_rate=0.5))
    with SimulatorServer(simulator) as url:
        replicas = Replicas(url, postgres_url, tmp_path, env={"BEM_QUALITY_INTERVAL": "1s", "BEM_LEADER_LEASE": "2s"})
        try:
            first, second = replicas.add(), replicas.add()
            leader = replicas.wait_leader(30)
            standby = second if leader is first else first

            def shown(replica: ExporterProcess) -> int:
                return len(replica.samples("bem_function_results"))

            wait_until(lambda: shown(leader) == len(FUNCTIONS_BY_NAME), 30, what="the leader's quality gauges")
            wait_until(lambda: bool(standby.samples("bem_exporter_leader")), 30, what="the standby serving")
            time.sleep(2.0)  # a few of the leader's reads later
            assert shown(standby) == 0
            assert set(standby.samples("bem_exporter_quality_reads_total").values()) == {0.0}, "a standby read"
            replicas.kill(leader)
            assert replicas.wait_leader(30) is standby
            wait_until(lambda: shown(standby) == len(FUNCTIONS_BY_NAME), 30, what="the new leader's quality gauges")
        finally:
            replicas.stop_all()


def test_the_gauges_are_rendered_when_a_read_changes_them_not_per_scrape(served: tuple[Simulator, str]) -> None:
    """Wired as `run` wires them (`Metrics.rare_registry`): every scrape body, plain, gzipped
    and OpenMetrics, holds the last read's gauges once and is valid; a change shows at once."""
    _, url = served
    metrics = Metrics(MetricsSettings(), "test")
    gauges = QualityGauges(metrics.labels)
    metrics.rare_registry.register(gauges)
    gauges.on_change = metrics.rare_changed
    with_client(url, read_into(gauges, page_size=100))
    openmetrics = "application/openmetrics-text; version=1.0.0"
    text = metrics.exposition(openmetrics)[0].decode()
    families = {family.name: family for family in parse_openmetrics(text)}
    assert len(families["bem_function_accuracy_ratio"].samples) >= 10 and text.count("# EOF") == 1
    zipped = gzip.decompress(metrics.exposition(openmetrics, gzipped=True)[0]).decode()
    quality = [line for line in text.splitlines() if "bem_function_" in line]
    assert [line for line in zipped.splitlines() if "bem_function_" in line] == quality and zipped.endswith("# EOF\n")
    plain = metrics.exposition(None)[0].decode()
    assert plain.count("# TYPE bem_function_results gauge") == 1
    gauges.clear()
    assert "bem_function_accuracy_ratio{" not in metrics.exposition(openmetrics)[0].decode()
    wait_until(lambda: metrics.exposition_if_rendered(openmetrics) is not None, 10, what="the rendered body")
    served_body = metrics.exposition_if_rendered(openmetrics)
    assert served_body is not None and "bem_function_accuracy_ratio{" not in served_body[0].decode()


class _CrashingOnce:
    """A reader whose first read fails with a bug (not an API error), then reads for real."""

    def __init__(self, reader: QualityReader) -> None:
        self._reader = reader
        self.reads = 0

    async def read(self) -> Any:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("a bug in the reader")
        return await self._reader.read()


def test_a_crashing_read_is_logged_and_the_loop_goes_on(
    served: tuple[Simulator, str], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = served
    labels = LabelPolicy(200)
    gauges = QualityGauges(labels)
    observer = SelfMetrics(labels, "test")
    observer.expect_quality(())

    async def loop(client: BemClient) -> int:
        reader = _CrashingOnce(QualityReader(client))
        watch = QualityWatch(reader, gauges, observer, 0.01, clock=clock)
        task = asyncio.create_task(watch.run())
        while not gauges.shown:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return reader.reads

    assert with_client(url, loop) >= 2
    assert "quality read failed unexpectedly" in caplog.text
    assert observer.registry.get_sample_value("bem_exporter_unexpected_errors_total", {"site": "quality_read"}) == 1
    assert gauges.shown == 0, "the gauges go with the task"

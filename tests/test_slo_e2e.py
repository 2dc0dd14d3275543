"""SLO alerts end to end with a real Prometheus: the simulator (in this process) ->
`bem-exporter run` (a subprocess) -> Prometheus (a subprocess, scraping every second) with the
rules `bem-exporter slo-rules --config` generated for an SLO per workflow -> PromQL over HTTP.

The simulator fails every call of one workflow; the page alert of that workflow's SLO fires,
the other workflows' SLOs, whose calls all complete, stay silent. The windows are shortened
through the config file (a period of an hour, windows of seconds, Sloth's budget shares);
the shipped rules keep Sloth's google-30d windows.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import ROOT, ExporterProcess
from prometheus_server import PrometheusServer, prometheus_binary

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.catalog import WORKFLOWS

pytestmark = pytest.mark.skipif(
    prometheus_binary() is None, reason="needs the prometheus binary (scripts/test installs it)"
)

FAILING = "invoice-intake"
SPEED = 40.0
"""Simulator time multiplier: the longest call (60 s queue + 300 s run) finishes in ~9 s."""
WINDOWS = """\
# An hour's period, in windows of seconds: the factors are Sloth's formula's for these windows
# (page 3.6 over 20s and 5s, or 3 over 1m and 10s; ticket 3 over 2m and 20s, or 1.2 over 5m
# and 1m); with an objective of 99% a page needs more than 3.6% of calls to fail.
[windows]
period = "1h"
page_quick = { budget_percent = 2, short = "5s", long = "20s" }
page_slow = { budget_percent = 5, short = "10s", long = "1m" }
ticket_quick = { budget_percent = 10, short = "20s", long = "2m" }
ticket_slow = { budget_percent = 10, short = "1m", long = "5m" }
"""


def config_text() -> str:
    slos = [f'[[slo]]\nname = "{w.name}-availability"\nworkflow = "{w.name}"\nobjective = 99\n' for w in WORKFLOWS]
    return WINDOWS + "\n" + "\n".join(slos)


def generate_rules(directory: Path) -> Path:
    """The rules as a user makes them: the console command, a config file, stdout to a file."""
    config = directory / "slos.toml"
    config.write_text(config_text(), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "slo-rules", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    rules = directory / "slo-rules.yaml"
    rules.write_text(result.stdout, encoding="utf-8")
    return rules


@dataclass
class Stack:
    simulator: Simulator
    exporter: ExporterProcess
    prometheus: PrometheusServer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    simulator = Simulator(SimulatorConfig(seed=41, arrival_rate=8.0, speed=SPEED, failure_rate=0.0))
    with SimulatorServer(simulator) as url:
        exporter = ExporterProcess(url, tmp_path / "state.sqlite")
        prometheus = PrometheusServer(
            tmp_path / "prometheus", [f"127.0.0.1:{exporter.port}"], rule_files=[generate_rules(tmp_path)]
        )
        prometheus.start()
        try:
            with prometheus.diagnose(exporter.log):
                exporter.start(timeout=90)
            yield Stack(simulator, exporter, prometheus)
        finally:
            try:
                exporter.kill()
            finally:
                prometheus.stop()


def slo_alerts(prometheus: PrometheusServer, selector: str = "") -> dict[str, set[str]]:
    """sloth_slo -> the severities of its BemAvailabilitySLO alerts now."""
    found: dict[str, set[str]] = {}
    for labels in prometheus.vector(f'ALERTS{{alertname="BemAvailabilitySLO"{selector}}}'):
        label = dict(labels)
        found.setdefault(label["sloth_slo"], set()).add(f"{label['sloth_severity']}/{label['alertstate']}")
    return found


def test_a_failing_workflow_pages_its_slo_and_no_other(stack: Stack) -> None:
    # On failure: Prometheus' log tail, its targets and the exporter's log.
    with stack.prometheus.diagnose(stack.exporter.log):
        check_a_failing_workflow_pages_its_slo_and_no_other(stack)


def check_a_failing_workflow_pages_its_slo_and_no_other(stack: Stack) -> None:
    prometheus, simulator = stack.prometheus, stack.simulator
    slos = {f"{w.name}-availability" for w in WORKFLOWS}
    started = time.time()

    # Healthy traffic first: every SLO has a ratio (its workflow had calls), all 0, no alert.
    prometheus.wait_for(
        "count(slo:sli_error:ratio_rate20s == 0)", lambda v: v == len(slos), 90, what="a ratio of 0 for every SLO"
    )
    prometheus.wait_rules_evaluated(timeout=60)
    assert slo_alerts(prometheus) == {}

    simulator.config.failing_workflows = frozenset({FAILING})
    page = (
        f'ALERTS{{alertname="BemAvailabilitySLO",alertstate="firing",sloth_severity="page",'
        f'sloth_slo="{FAILING}-availability"}}'
    )
    prometheus.wait_for(page, lambda v: v == 1, 120, what=f"the page of {FAILING}'s SLO")
    firing = slo_alerts(prometheus)
    assert set(firing) == {f"{FAILING}-availability"}, firing
    assert "page/firing" in firing[f"{FAILING}-availability"]

    # The others never alerted, and not for want of data: their calls kept completing.
    window = f"{math.ceil(time.time() - started) + 5}s"
    others = f'sloth_slo!="{FAILING}-availability"'
    assert prometheus.vector(f'max_over_time(ALERTS{{alertname="BemAvailabilitySLO",{others}}}[{window}])') == {}
    ratios = prometheus.vector(f"max_over_time(slo:sli_error:ratio_rate5s{{{others}}}[{window}])")
    assert {dict(labels)["sloth_slo"] for labels in ratios} == slos - {f"{FAILING}-availability"}
    assert set(ratios.values()) == {0.0}
    # The failing workflow's calls are the only failed ones the exporter counted.
    failed = prometheus.vector('sum by (workflow_name) (bem_calls_total{status="failed"}) > 0')
    assert {dict(labels)["workflow_name"] for labels in failed} == {FAILING}
    # The budget is recorded by another rule group than the page's, evaluated on its own
    # schedule: it may trail the page by an evaluation (or more on a busy machine).
    budget = f'slo:period_error_budget_remaining:ratio{{sloth_slo="{FAILING}-availability"}}'
    prometheus.wait_for(budget, lambda v: v is not None and v < 1, 60, what=f"{FAILING}'s error budget spent")

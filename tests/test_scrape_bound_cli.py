"""The bound on samples per scrape, through the real CLI: a proxy in front of the simulator
gives every call one of 60 workflow names and every function call one of 100 function names,
enough for a scrape several times BEM_MAX_SCRAPE_SAMPLES. The scrape stays within the bound,
no call or function call goes uncounted, the folding is reported in the self-metrics and on
/status.json, and a restart restores the same fold."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import httpx
from fault_helpers import finished_ids
from hostile_api import HostileApi, Reply
from processes import ExporterProcess, wait_until
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics.recorder import specs
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

BOUND = 8_000
WORKFLOWS = 60
FUNCTIONS = 100
FUNCTION_SAMPLES = 12 + 3
"""Samples of one series of bem_function_call_duration_seconds: 12 buckets, +Inf, sum, count."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _bucket(text: str, size: int) -> int:
    return zlib.crc32(text.encode()) % size


def _workflow(call_id: str) -> str:
    return f"wf-{_bucket(call_id, WORKFLOWS)}"


def _function(function_call_id: str) -> str:
    return f"fn-{_bucket(function_call_id, FUNCTIONS)}"


def _rename(target: str, reply: Reply) -> Reply:
    if reply.status != 200:
        return reply
    doc: dict[str, Any] = json.loads(reply.body)
    for call in doc.get("calls") or []:
        call["workflowName"] = _workflow(call["callID"])
    for function_call in (doc.get("trace") or {}).get("functionCalls") or []:
        function_call["functionName"] = _function(function_call["functionCallID"])
    return reply.but(body=json.dumps(doc).encode())


def _pairs(upstream: str, call_ids: set[str]) -> tuple[int, set[tuple[str, str]]]:
    """Function calls of these calls, and their distinct (workflow, function) names."""
    count, pairs = 0, set()
    with httpx.Client(base_url=upstream, headers={"x-api-key": "sim-key"}) as client:
        for call_id in call_ids:
            function_calls = client.get(f"/v3/calls/{call_id}/trace").json()["trace"]["functionCalls"]
            count += len(function_calls)
            pairs.update((_workflow(call_id), _function(fc["functionCallID"])) for fc in function_calls)
    return count, pairs


def _samples(exporter: ExporterProcess) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exporter.metrics())
        for sample in family.samples
    }


COUNTERS, HISTOGRAMS = specs((1.0,), (1.0,))
COUNTED = {spec.name for spec in COUNTERS} | {
    f"{spec.name}_{suffix}" for spec in HISTOGRAMS for suffix in ("bucket", "count", "sum")
}
"""Sample names of the counted families (the ones the bound covers)."""


def _counted(samples: Samples) -> Samples:
    return {key: value for key, value in samples.items() if key[0] in COUNTED}


def _total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def test_names_that_would_make_a_huge_scrape_stay_under_the_bound_and_lose_no_count(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=400, history=600.0, arrival_rate=0.0, speed=20.0, seed=23))
    with SimulatorServer(simulator) as upstream:
        wait_until(lambda: set(simulator.status_counts()) <= {"completed", "failed"}, 120, what="all finished")
        truth = finished_ids(simulator)
        function_calls, pairs = _pairs(upstream, truth)
        env = {"BEM_MAX_SCRAPE_SAMPLES": str(BOUND)}
        state = tmp_path / "s.sqlite"
        with HostileApi(upstream, _rename) as url:
            with ExporterProcess(url, state, env=env) as exporter:
                wait_until(lambda: sum(exporter.calls_total().values()) == len(truth), 90, what="every call counted")
                wait_until(
                    lambda: _total(_samples(exporter), "bem_function_calls_total") == function_calls,
                    30,
                    what="every function call counted",
                )
                before = _samples(exporter)
                status = httpx.get(f"{exporter.url}/status.json", timeout=10).json()["scrape"]
            with ExporterProcess(url, state, env=env) as restarted:
                wait_until(lambda: sum(restarted.calls_total().values()) == len(truth), 60, what="restored")
                after = _samples(restarted)
                status_after = httpx.get(f"{restarted.url}/status.json", timeout=10).json()["scrape"]

    # Unbounded, the function durations alone would be several times the bound.
    assert len(pairs) * FUNCTION_SAMPLES > 3 * BOUND, len(pairs)
    counted = _counted(before)
    assert len(counted) <= BOUND
    assert before[("bem_exporter_scrape_samples", frozenset())] == len(counted)
    assert before[("bem_exporter_scrape_samples_limit", frozenset())] == BOUND
    # Nothing lost: every call and function call is counted, in its series or in `other`.
    assert _total(before, "bem_calls_total") == len(truth)
    assert _total(before, "bem_function_calls_total") == function_calls
    assert _total(before, "bem_function_call_duration_seconds_count") == function_calls
    folded = {dict(labels)["metric"]: n for (name, labels), n in before.items() if name.endswith("folded_series_total")}
    assert folded["bem_function_call_duration_seconds"] > 0 and folded["bem_calls_total"] == 0
    # Reported on /status.json: the size, and each family folded with its lowered cap.
    assert status["samples"] == len(counted) and status["max_samples"] == BOUND
    assert {f["metric"]: f["folded_series"] for f in status["folded"]} == {m: n for m, n in folded.items() if n}
    assert all(f["series_cap"] is not None for f in status["folded"])
    # A restart restores the same fold: the same series, the same counts, the caps it lowered.
    assert _counted(after) == counted
    assert {f["metric"]: f["series_cap"] for f in status_after["folded"]} == {
        f["metric"]: f["series_cap"] for f in status["folded"]
    }

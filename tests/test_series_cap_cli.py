"""The series cap per metric family (issue: 200 workflows x 100 functions made a 49 MB scrape),
through the real CLI: a proxy in front of the simulator gives every call one of 60 workflow
names and every function call one of 100 function names. With BEM_MAX_SERIES_PER_METRIC=300
no family grows past the cap, the overflow is folded into `other` and counted, no call or
function call goes uncounted, and the process stays small."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import httpx
from fault_helpers import finished_ids, peak_rss_kib
from hostile_api import HostileApi, Reply
from processes import ExporterProcess, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

CAP = 300
WORKFLOWS = 60
FUNCTIONS = 100


def _bucket(text: str, size: int) -> int:
    return zlib.crc32(text.encode()) % size


def _rename(target: str, reply: Reply) -> Reply:
    if reply.status != 200:
        return reply
    doc: dict[str, Any] = json.loads(reply.body)
    if target.startswith("/v3/calls?"):
        for call in doc.get("calls", []):
            call["workflowName"] = f"wf-{_bucket(call['callID'], WORKFLOWS)}"
    elif target.endswith("/trace"):
        for function_call in doc.get("trace", {}).get("functionCalls", []):
            function_call["functionName"] = f"fn-{_bucket(function_call['functionCallID'], FUNCTIONS)}"
    return reply.but(body=json.dumps(doc).encode())


def _function_calls(upstream: str, call_ids: set[str]) -> int:
    with httpx.Client(base_url=upstream, headers={"x-api-key": "sim-key"}) as client:
        return sum(len(client.get(f"/v3/calls/{cid}/trace").json()["trace"]["functionCalls"]) for cid in call_ids)


def test_a_family_never_grows_past_the_cap_and_loses_no_count(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=400, history=600.0, arrival_rate=0.0, speed=20.0, seed=23))
    with SimulatorServer(simulator) as upstream:
        wait_until(lambda: set(simulator.status_counts()) <= {"completed", "failed"}, 120, what="all finished")
        truth = finished_ids(simulator)
        function_calls = _function_calls(upstream, truth)
        env = {"BEM_MAX_SERIES_PER_METRIC": str(CAP)}
        with HostileApi(upstream, _rename) as url, ExporterProcess(url, tmp_path / "s.sqlite", env=env) as exporter:
            wait_until(lambda: sum(exporter.calls_total().values()) == len(truth), 90, what="every call counted")
            wait_until(
                lambda: sum(exporter.samples("bem_function_calls_total").values()) == function_calls,
                30,
                what="every function call counted",
            )
            counted = exporter.samples("bem_function_calls_total")
            overflow = exporter.samples("bem_exporter_label_overflow_total")
            assert exporter.process is not None
            rss_mib = peak_rss_kib(exporter.process.pid) / 1024
    # Without the cap these names make about WORKFLOWS x FUNCTIONS x types x statuses series.
    assert len(counted) <= CAP + 2, len(counted)  # the cap, plus an `other` series per status
    assert any(dict(labels).get("function_name") == "other" for labels in counted)
    assert overflow[(("label", "series"),)] > 0
    assert rss_mib < 150, rss_mib

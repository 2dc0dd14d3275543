"""The canary end to end: `bem-exporter run` (the real CLI, a subprocess) against the simulator
over real HTTP, with a clock the test moves, so a canary call finishes exactly when the test
says. Results are read from /metrics, the create requests counted at the simulator, the spans
at a real OTLP receiver, and the document's bytes looked for in everything that leaves.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Clock
from fault_helpers import log_records, otlp_env
from hostile_api import HostileApi, Reply
from otlp_receiver import HttpReceiver
from processes import ExporterProcess, wait_until

from exporter.ids import trace_id_for
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

WORKFLOW = "invoice-intake"
MARKER = b"CANARY-DOC-CONTENT-5e1f0c"
DOCUMENT = b"%PDF-1.4\n" + MARKER + b"\n%%EOF\n"
CREATE = "POST /v3/workflows/{workflowName}/call"
RESULTS = ("success", "failure", "timeout", "submit_error")


@contextmanager
def simulator(clock: Clock, **faults: Any) -> Iterator[tuple[Simulator, str]]:
    """Only the canary's calls: no arrivals, none failing unless the canary faults say so."""
    sim = Simulator(SimulatorConfig(arrival_rate=0, failure_rate=0.0), clock=clock)
    for name, value in faults.items():
        setattr(sim.config.faults, name, value)
    with SimulatorServer(sim) as url:
        yield sim, url


def canary_env(tmp_path: Path, interval: str = "1h", timeout: str = "30s") -> dict[str, str]:
    document = tmp_path / "canary.pdf"
    document.write_bytes(DOCUMENT)
    return {
        "BEM_CANARY_WORKFLOW": WORKFLOW,
        "BEM_CANARY_FILE": str(document),
        "BEM_CANARY_INTERVAL": interval,
        "BEM_CANARY_TIMEOUT": timeout,
    }


def runs(exporter: ExporterProcess) -> dict[str, float]:
    """bem_canary_runs_total by result (every result is exposed, from 0)."""
    found = exporter.samples("bem_canary_runs_total")
    assert {dict(labels)["workflow_name"] for labels in found} == {WORKFLOW}
    return {dict(labels)["result"]: value for labels, value in found.items()}


def judged(exporter: ExporterProcess, result: str, count: int = 1) -> None:
    wait_until(lambda: runs(exporter)[result] >= count, 30, what=f"{count} canary run(s) judged {result}")


def gauge(exporter: ExporterProcess, name: str) -> float:
    return exporter.samples(name)[(("workflow_name", WORKFLOW),)]


def canary_calls(sim: Simulator) -> list[dict[str, Any]]:
    return [call for call in sim.calls() if str(call.get("callReferenceID", "")).startswith("bem-exporter-canary-")]


def created(exporter: ExporterProcess) -> None:
    """The canary's call was created and its creation committed (logged after the commit)."""
    wait_until(lambda: canary_log(exporter, "canary: call created"), 30, what="the canary call created")


def canary_log(exporter: ExporterProcess, message: str) -> list[dict[str, Any]]:
    return [record for record in log_records(exporter) if record.get("msg") == message]


def cycles(exporter: ExporterProcess) -> int:
    return len(canary_log(exporter, "poll cycle"))


def a_few_more_cycles(exporter: ExporterProcess, count: int = 3) -> None:
    start = cycles(exporter)
    wait_until(lambda: cycles(exporter) >= start + count, 30, what=f"{count} more poll cycles")


def assert_no_document(*texts: bytes) -> None:
    encoded = base64.b64encode(DOCUMENT)
    for text in texts:
        assert MARKER not in text and encoded not in text


@pytest.mark.parametrize(("outcome", "result", "status"), [("normal", "success", 1.0), ("fail", "failure", 0.0)])
def test_a_canary_call_is_judged_once_and_its_document_never_leaves(
    tmp_path: Path, outcome: str, result: str, status: float
) -> None:
    clock = Clock()
    with simulator(clock, canary_outcome=outcome) as (sim, url), HttpReceiver() as receiver:
        env = {**canary_env(tmp_path), **otlp_env(receiver), "OTEL_EXPORTER_OTLP_TIMEOUT": "2000"}
        with ExporterProcess(url, tmp_path / "state.sqlite", env=env) as exporter:
            created(exporter)
            assert runs(exporter) == dict.fromkeys(RESULTS, 0.0)
            clock.advance(900)  # the call runs its course
            judged(exporter, result)
            (call,) = canary_calls(sim)
            assert call["status"] == ("completed" if result == "success" else "failed")
            a_few_more_cycles(exporter)
            assert runs(exporter) == {**dict.fromkeys(RESULTS, 0.0), result: 1.0}
            assert gauge(exporter, "bem_canary_success") == status
            assert gauge(exporter, "bem_canary_duration_seconds_count") == 1
            assert gauge(exporter, "bem_canary_duration_seconds_sum") > 0
            if result == "success":
                finished = exporter.samples("bem_canary_last_success_timestamp_seconds")
                assert list(finished.values()) == [pytest.approx(clock.now, abs=900)]
            # the canary call is an ordinary call too, and its spans say it is synthetic
            tid = trace_id_for(call["callID"])
            wait_until(lambda: any(s["trace_id"] == tid for s in receiver.spans()), 30, what="the canary's spans")
            spans = [span for span in receiver.spans() if span["trace_id"] == tid]
            assert spans and all(span["attributes"].get("bem.synthetic") is True for span in spans)
            assert sim.requests[CREATE] == 1
            status_page = httpx.get(f"{exporter.url}/status", timeout=5)
            status_json = httpx.get(f"{exporter.url}/status.json", timeout=5).json()
            assert status_json["canary"]["last_result"] == result and status_json["canary"]["in_flight"] is False
            metrics = exporter.metrics().encode() + exporter.metrics(openmetrics=True).encode()
            assert_no_document(
                exporter.log().encode(),
                metrics,
                receiver.raw_bytes(),
                status_page.content,
                json.dumps(status_json).encode(),
            )


def test_a_call_that_never_finishes_times_out_exactly_once(tmp_path: Path) -> None:
    clock = Clock()
    env = canary_env(tmp_path, timeout="2s")
    with (
        simulator(clock, canary_outcome="hang") as (sim, url),
        ExporterProcess(url, tmp_path / "s.db", env=env) as exporter,
    ):
        judged(exporter, "timeout")
        clock.advance(3600)  # a hanging call never finishes, however long bem runs
        a_few_more_cycles(exporter)
        assert runs(exporter) == {**dict.fromkeys(RESULTS, 0.0), "timeout": 1.0}
        assert sim.requests[CREATE] == 1 and [c["status"] for c in canary_calls(sim)] == ["running"]
        assert not exporter.samples("bem_canary_success")  # no canary call finished
        assert gauge(exporter, "bem_canary_duration_seconds_count") == 0


def test_a_refused_create_request_is_a_submit_error_and_the_loop_goes_on(tmp_path: Path) -> None:
    clock = Clock()
    refusals = [Reply(500), Reply(429, headers={"retry-after": "1"}), Reply(401)]
    answered: list[int] = []

    def answer(method: str, target: str) -> Reply | None:
        if method != "POST" or not refusals:
            return None
        reply = refusals.pop(0)
        answered.append(reply.status)
        return reply.but(body=b'{"message": "refused by the test"}')

    with simulator(clock) as (sim, upstream), HostileApi(upstream, answer=answer) as url:
        env = canary_env(tmp_path, interval="2s", timeout="5s")
        with ExporterProcess(url, tmp_path / "state.sqlite", env=env) as exporter:
            judged(exporter, "submit_error")
            assert answered == [500, 429, 401]
            (failure,) = [r for r in log_records(exporter) if str(r.get("msg")).startswith("canary: the call could")]
            assert failure["level"] == "warning" and failure["workflow"] == WORKFLOW
            assert failure["msg"] == (
                "canary: the call could not be created: "
                f"{CREATE}: HTTP 401: the API key was rejected (check BEM_API_KEY)"
            )
            # the loop keeps running: the next interval's canary call is created and succeeds
            created(exporter)
            clock.advance(900)
            judged(exporter, "success")
            assert exporter.is_ready()
            assert runs(exporter)["submit_error"] == 1
            assert sim.requests[CREATE] >= 1 and len(canary_calls(sim)) == sim.requests[CREATE]


def test_after_kill_9_the_call_in_flight_is_judged_once_and_no_call_is_added(tmp_path: Path) -> None:
    clock = Clock()
    with simulator(clock) as (sim, url):
        env = canary_env(tmp_path)
        exporter = ExporterProcess(url, tmp_path / "state.sqlite", env=env).start()
        try:
            created(exporter)
            assert exporter.stop(signal.SIGKILL) == -signal.SIGKILL
            (call,) = canary_calls(sim)
            assert call["status"] in ("pending", "running")
            clock.advance(900)  # it finishes while the exporter is down
            exporter.start()
            judged(exporter, "success")
            a_few_more_cycles(exporter)
            assert runs(exporter) == {**dict.fromkeys(RESULTS, 0.0), "success": 1.0}
            assert sim.requests[CREATE] == 1 and len(canary_calls(sim)) == 1
        finally:
            if exporter.process is not None and exporter.process.poll() is None:
                exporter.kill()

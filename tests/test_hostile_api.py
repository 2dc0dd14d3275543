"""A hostile bem API against the real CLI over real HTTP on loopback (issue 14): poisoned
records, a trickling body, truncated bodies, a gzip bomb, `Retry-After` extremes, and an API URL
that carries a password. The simulator behind the hostile proxy is the truth: counting must go
on for every well-formed call, and each fault must be reported as what it is."""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fault_helpers import log_records, peak_rss_kib
from hostile_api import Fault, HostileApi, Reply
from processes import ExporterProcess, run_command, wait_until

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

UNREACHABLE = "bem API unreachable; retrying every poll interval"
TOO_LARGE = "bem API response too large"
LONG_THROTTLE = "bem API throttles requests with a long Retry-After"
DEFAULT_MAX_RESPONSE_BYTES = 64 << 20


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    """Calls that have all finished (arrivals off), served over loopback."""
    sim = Simulator(SimulatorConfig(seed=23, prefill=120, history=900.0, arrival_rate=0.0, speed=50.0))
    wait_until(lambda: set(sim.status_counts()) <= {"completed", "failed"}, 30, what="every call finished")
    with SimulatorServer(sim) as url:
        yield sim, url


def _rejected(exporter: ExporterProcess, record: str) -> float:
    series = exporter.samples("bem_exporter_rejected_records_total")
    return sum(value for labels, value in series.items() if dict(labels)["record"] == record)


def _messages(exporter: ExporterProcess) -> list[str]:
    return [str(record.get("msg")) for record in log_records(exporter)]


def _ready(exporter: ExporterProcess) -> int:
    return httpx.get(f"{exporter.url}/readyz", timeout=5).status_code


def _poison(victim: str, hurt_trace_of: str) -> Fault:
    """Every record gets a lone surrogate in a field the exporter ignores; the victim call gets
    one in its `workflowName`, and one step of `hurt_trace_of`'s trace one in its name."""

    def fault(target: str, reply: Reply) -> Reply:
        if reply.status != 200:
            return reply
        body = json.loads(reply.body)
        records = body.get("calls") or (body.get("trace") or {}).get("functionCalls") or []
        for record in records:
            record["memo"] = "cut emoji \ud83d"
            if record.get("callID") == victim:
                record["workflowName"] = "\ud83d"
        if f"/{hurt_trace_of}/" in target and records:
            records[0]["functionName"] = "\udc00"
        return reply.but(body=json.dumps(body).encode())  # writes the lone surrogates as \ud83d

    return fault


def test_lone_surrogates_cost_their_record_alone(tmp_path: Path, simulator: tuple[Simulator, str]) -> None:
    sim, upstream = simulator
    finished = [c for c in sim.summaries() if c["status"] in ("completed", "failed")]
    victim, hurt = finished[5], finished[9]
    truth = Counter(sim.finished_counts())
    truth[(victim["workflowName"] or "(none)", victim["status"])] -= 1
    expected = {key: count for key, count in truth.items() if count}
    fault = _poison(victim["callID"], hurt["callID"])
    with HostileApi(upstream, fault) as url, ExporterProcess(url, tmp_path / "state.sqlite") as exporter:
        wait_until(lambda: exporter.calls_total() == expected, 60, what="every well-formed call counted")
        assert exporter.samples("bem_exporter_up")[()] == 1
        assert _ready(exporter) == 200
        assert _rejected(exporter, "call") >= 1  # the victim, each time it is read
        assert _rejected(exporter, "trace_record") >= 1
        assert _rejected(exporter, "response") == 0  # no page was lost
        assert UNREACHABLE not in _messages(exporter)
        assert "\\ud83d" not in exporter.log() and "\ud83d" not in exporter.log()


def test_check_bounds_a_trickling_request_by_the_timeout(tmp_path: Path) -> None:
    """One byte every 0.2 s never trips a per-read timeout of 1 s; the body would take 2 hours."""
    trickle = Reply(body=b" " * 40_000 + b'{"calls": []}', trickle=0.2)
    with HostileApi(fault=lambda _target, _reply: trickle) as url:
        done = run_command("check", url, tmp_path / "state.sqlite", BEM_API_TIMEOUT="1s")
    assert done.returncode == 1
    assert f"api: FAILED ({url}): /v3/calls: timed out (after 2 attempts)" in done.stdout


def test_check_retries_a_truncated_200_and_names_a_malformed_one(
    tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    _, upstream = simulator
    cut: list[str] = []

    def cut_first(target: str, reply: Reply) -> Reply:
        cut.append(target)
        return reply.but(cut_at=len(reply.body) // 2) if len(cut) == 1 else reply

    with HostileApi(upstream, cut_first) as url:
        done = run_command("check", url, tmp_path / "state.sqlite")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"api: ok ({url}, v3)" in done.stdout and len(cut) == 2

    with HostileApi(upstream, lambda _target, reply: reply.but(cut_at=len(reply.body) // 2)) as url:
        done = run_command("check", url, tmp_path / "state.sqlite")
    assert done.returncode == 1
    assert "/v3/calls: list calls: response body is not the expected JSON (after 2 attempts)" in done.stdout
    assert "request rejected" not in done.stdout


def test_the_api_password_is_never_shown(tmp_path: Path, simulator: tuple[Simulator, str]) -> None:
    _, upstream = simulator
    port = upstream.rsplit(":", 1)[1]
    with_password = f"http://scott:tiger-secret@127.0.0.1:{port}"
    done = run_command("check", with_password, tmp_path / "state.sqlite")
    assert f"api: ok (http://127.0.0.1:{port}, v3)" in done.stdout
    failing = run_command("check", with_password + "/nowhere", tmp_path / "state.sqlite")
    assert f"api: FAILED (http://127.0.0.1:{port}/nowhere)" in failing.stdout
    with ExporterProcess(with_password, tmp_path / "state.sqlite") as exporter:
        wait_until(lambda: "bem-exporter running" in _messages(exporter), 30, what="start-up line")
        started = next(r for r in log_records(exporter) if r.get("msg") == "bem-exporter running")
        assert started["api"] == f"http://127.0.0.1:{port}"
        log = exporter.log()
    assert all("tiger-secret" not in text for text in (done.stdout, done.stderr, failing.stdout, log))


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """Under 1 MB that inflates to 384 MiB of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    return b"".join([*(compressor.compress(block) for _ in range(384)), compressor.flush()])


def test_a_gzip_bomb_is_refused_at_the_limit_and_memory_stays_bounded(
    tmp_path: Path, simulator: tuple[Simulator, str], gzip_bomb: bytes
) -> None:
    sim, upstream = simulator
    truth = dict(Counter(sim.finished_counts()))
    bombing = True

    def fault(target: str, reply: Reply) -> Reply:
        if bombing and target.startswith("/v3/calls?"):
            return reply.but(body=gzip_bomb, headers={"content-type": "application/json", "content-encoding": "gzip"})
        return reply

    with HostileApi(upstream, fault) as url:
        exporter = ExporterProcess(url, tmp_path / "state.sqlite").start(ready=False)
        try:
            _bombed(exporter, truth)
            bombing = False
            wait_until(lambda: exporter.calls_total() == truth, 60, what="every call counted once the bomb stops")
            assert exporter.samples("bem_exporter_up")[()] == 1
        finally:
            exporter.kill()


def _bombed(exporter: ExporterProcess, truth: dict[tuple[str, str], int]) -> None:
    wait_until(lambda: _messages(exporter).count(TOO_LARGE) >= 3, 60, what="the bomb refused thrice")
    assert exporter.samples("bem_exporter_up")[()] == 0
    assert _ready(exporter) == 503
    assert exporter.process is not None
    assert peak_rss_kib(exporter.process.pid) < 300 * 1024  # 384 MiB inflated, never held
    records = [r for r in log_records(exporter) if r.get("msg") == TOO_LARGE]
    assert records[0]["endpoint"] == "/v3/calls" and records[0]["limit_bytes"] == DEFAULT_MAX_RESPONSE_BYTES
    assert exporter.calls_total() != truth


def test_a_day_long_retry_after_is_capped_and_reported(tmp_path: Path, simulator: tuple[Simulator, str]) -> None:
    sim, upstream = simulator
    truth = dict(Counter(sim.finished_counts()))
    throttling = False

    def fault(_target: str, reply: Reply) -> Reply:
        return Reply(429, headers={"retry-after": "86400"}) if throttling else reply

    with HostileApi(upstream, fault) as url, ExporterProcess(url, tmp_path / "state.sqlite") as exporter:
        wait_until(lambda: exporter.calls_total() == truth, 60, what="every call counted")
        throttling = True
        wait_until(lambda: LONG_THROTTLE in _messages(exporter), 30, what="the long throttle logged")
        line = next(r for r in log_records(exporter) if r.get("msg") == LONG_THROTTLE)
        assert line["retry_after"] == 86400 and line["waiting"] == 120
        wait_until(lambda: _ready(exporter) == 503, 30, what="not ready while throttled past 3 poll intervals")
        assert exporter.calls_total() == truth

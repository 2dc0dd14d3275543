"""Replicas of `bem-exporter run` sharing one PostgreSQL state, and the simulator's truth
for every call series they serve.

    replicas = Replicas(api_url, postgres_url, tmp_path, env={...})
    first = replicas.add()                    # a process, started (not waited for)
    leader = replicas.wait_leader(30)         # the one whose /metrics says bem_exporter_leader 1

Each replica is an `ExporterProcess` without `BEM_STATE_PATH` (PostgreSQL and SQLite together
exit 2), with `BEM_STATE_URL` (password in it) and a short `BEM_LEADER_LEASE`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import httpx
from processes import ExporterProcess, free_port

from exporter.simulator import Simulator

Series = dict[tuple[str, ...], int]
"""Label values (in the order of `SERIES`' label names) -> count."""

SERIES: dict[str, tuple[str, ...]] = {
    "bem_calls_total": ("workflow_name", "status"),
    "bem_call_duration_seconds_count": ("workflow_name", "status"),
    "bem_function_calls_total": ("workflow_name", "function_name", "function_type", "status"),
    "bem_function_call_duration_seconds_count": ("workflow_name", "function_name", "function_type", "status"),
}
"""The call series compared with the truth: counters and histogram counts."""


class Replicas:
    """`run` processes on one PostgreSQL database; `live` are the ones not killed."""

    def __init__(self, api_url: str, state_url: str, workdir: Path, env: Mapping[str, str]) -> None:
        self.api_url = api_url
        self.state_url = state_url
        self.workdir = workdir
        self.env = dict(env)
        self.live: list[ExporterProcess] = []
        self.started = 0

    def add(self, env: Mapping[str, str] | None = None) -> ExporterProcess:
        """Start one more replica (not waited for: a standby may not be ready), with `env` on
        top of the replicas' common environment (its own webhook port, say)."""
        self.started += 1
        base = self.workdir / f"replica-{self.started}"
        common = {"BEM_STATE_URL": self.state_url, **self.env, **(env or {})}
        replica = ExporterProcess(self.api_url, base, env=common)
        del replica.env["BEM_STATE_PATH"]
        replica.start(ready=False)
        self.live.append(replica)
        return replica

    def kill(self, replica: ExporterProcess) -> float:
        """kill -9; returns the instant (time.monotonic) it was sent."""
        self.live.remove(replica)
        sent = time.monotonic()
        replica.kill()
        return sent

    def leaders(self) -> list[ExporterProcess]:
        return [replica for replica in self.live if is_leader(replica)]

    def wait_leader(self, timeout: float, among: list[ExporterProcess] | None = None) -> ExporterProcess:
        """The first replica (of `among`, default all live ones) seen reporting itself leader."""
        candidates = self.live if among is None else among
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for replica in candidates:
                assert_alive(replica)
                if is_leader(replica):
                    return replica
            time.sleep(0.05)
        logs = "\n".join(replica.log()[-3000:] for replica in candidates)
        raise AssertionError(f"no leader among {len(candidates)} replicas within {timeout}s\n{logs}")

    def stop_all(self) -> None:
        for replica in self.live:
            if replica.process is not None and replica.process.poll() is None:
                replica.stop()
        self.live.clear()


def listening_pair(replicas: Replicas) -> tuple[ExporterProcess, ExporterProcess, dict[ExporterProcess, str]]:
    """Two replicas added, each with a webhook listener: the leader, the standby, and each
    one's webhook URL."""
    hooks: dict[ExporterProcess, str] = {}
    for port in (free_port(), free_port()):
        replica = replicas.add({"BEM_WEBHOOK_LISTEN": f"127.0.0.1:{port}"})
        hooks[replica] = f"http://127.0.0.1:{port}/webhook"
    leader = replicas.wait_leader(60)
    standby = next(replica for replica in replicas.live if replica is not leader)
    return leader, standby, hooks


def assert_alive(replica: ExporterProcess) -> None:
    assert replica.process is not None
    code = replica.process.poll()
    assert code is None, f"replica exited with {code}:\n{replica.log()[-3000:]}"


def gauge(replica: ExporterProcess, name: str) -> float | None:
    """The unlabelled sample `name` on the replica's /metrics; None while it does not answer."""
    try:
        samples = replica.samples(name)
    except (httpx.HTTPError, OSError):
        return None
    return samples.get((), None)


def is_leader(replica: ExporterProcess) -> bool:
    return gauge(replica, "bem_exporter_leader") == 1


def served(replica: ExporterProcess) -> dict[str, Series]:
    """The call series of `SERIES` on the replica's /metrics, zeros left out."""
    out: dict[str, Series] = {}
    for name, label_names in SERIES.items():
        series: Series = {}
        for labels, value in replica.samples(name).items():
            label = dict(labels)
            if value:
                series[tuple(label[key] for key in label_names)] = int(value)
        out[name] = series
    return out


def truth(simulator: Simulator) -> dict[str, Series]:
    """What `served` must show once every finished call is counted once: calls by workflow and
    status, and every function call of a finished call (each id once) by its labels."""
    calls = dict(simulator.finished_counts())
    functions: Counter[tuple[str, ...]] = Counter()
    for summary in simulator.summaries():
        if summary["status"] not in ("completed", "failed"):
            continue
        workflow = summary["workflowName"] or "(none)"
        seen: set[str] = set()
        for fc in simulator.trace(summary["callID"])["functionCalls"]:
            if fc["functionCallID"] in seen:
                continue
            seen.add(fc["functionCallID"])
            functions[(workflow, fc["functionName"], fc["type"], fc["status"])] += 1
    return {
        "bem_calls_total": calls,
        "bem_call_duration_seconds_count": calls,
        "bem_function_calls_total": dict(functions),
        "bem_function_call_duration_seconds_count": dict(functions),
    }


def differences(got: dict[str, Series], want: dict[str, Series]) -> dict[str, dict[tuple[str, ...], tuple[int, int]]]:
    """Per series name, the label values whose count differs: (served, truth)."""
    out: dict[str, dict[tuple[str, ...], tuple[int, int]]] = {}
    for name, expected in want.items():
        actual = got.get(name, {})
        wrong = {
            key: (actual.get(key, 0), expected.get(key, 0))
            for key in expected.keys() | actual.keys()
            if actual.get(key, 0) != expected.get(key, 0)
        }
        if wrong:
            out[name] = wrong
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

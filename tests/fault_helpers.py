"""Shared by the reliability tests (faults, crashes, soak, security): reading the exporter's
JSON log, the simulator's truth about finished calls, and the memory of a process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from otlp_receiver import HttpReceiver
from processes import ExporterProcess

from exporter.ids import trace_id_for
from exporter.simulator import Simulator


def log_records(exporter: ExporterProcess) -> list[dict[str, Any]]:
    """The exporter's JSON log lines as dicts (lines that are not JSON are skipped)."""
    records = []
    for line in exporter.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def log_lines(exporter: ExporterProcess, message: str) -> int:
    """How many log lines carry exactly `message`."""
    return sum(1 for record in log_records(exporter) if record.get("msg") == message)


def warnings(exporter: ExporterProcess) -> list[str]:
    return [str(r.get("msg")) for r in log_records(exporter) if r.get("level") in ("warning", "error", "critical")]


def finished_ids(simulator: Simulator) -> set[str]:
    return {c["callID"] for c in simulator.summaries() if c["status"] in ("completed", "failed")}


def missing_traces(simulator: Simulator, receiver: HttpReceiver) -> set[str]:
    """Finished calls whose call span has not reached the receiver."""
    received = {span["trace_id"] for span in receiver.spans() if span["parent"] is None}
    return {call_id for call_id in finished_ids(simulator) if trace_id_for(call_id) not in received}


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS of /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size of a process over its life (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def otlp_env(receiver: HttpReceiver, timeout_ms: int = 2000) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": receiver.protocol,
        "OTEL_EXPORTER_OTLP_TIMEOUT": str(timeout_ms),
    }

"""No free text unredacted, through the real CLI: a proxy in front of the simulator puts a
presigned URL, a credential assignment, a random key, a bearer token, a JWT or 5,000
characters into every name, type, status, kind and shown id bem sends (workflow and function
names and ids, types, statuses, node and destination names, reference ids, event types, error
kinds). `bem-exporter run` counts every call exactly, and none of those secrets, nor any value
longer than the bound, comes out in `/metrics` (both formats), `/status`, `/status.json`, the
spans the OTLP receiver got, the log (at debug level) or the state file; their redacted forms
do."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import httpx
from fault_helpers import finished_ids, otlp_env
from hostile_api import HostileApi, Reply
from otlp_receiver import HttpReceiver
from processes import ExporterProcess, wait_until
from prometheus_client.parser import text_string_to_metric_families

from exporter.redact import MAX_NAME_LENGTH
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

SIGNATURE = "SIGMARK7Qv2"
TOKEN = "TOKMARK9Zx3"
RANDOM_KEY = "q7ZkP2mXv9LbR4tW8yNc3JdH6sGf1AeU5oKi0QxTj"
BEARER = "BEARMARK5Yy8q"
JWT_CLAIMS = "eyJzdWIiOiJKV1RNQVJLIn0"
JWT = f"eyJhbGciOiJIUzI1NiJ9.{JWT_CLAIMS}.c2lnbmF0dXJlMQ"
LONG = "L" * 5000
SECRETS = (SIGNATURE, TOKEN, RANDOM_KEY, BEARER, JWT_CLAIMS, "L" * (MAX_NAME_LENGTH + 1))
PRESIGNED = f"https://files.example/in.pdf?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKIA"


def hostile(tag: str, seed: str) -> str:
    """One of six kinds of free text, picked by `seed` so that a record always gets the same."""
    variants = (
        f"{tag} {PRESIGNED}",
        f"{tag} api_key={TOKEN}",
        f"{tag} {RANDOM_KEY}",
        f"{tag} Authorization: Bearer {BEARER}",
        f"{tag} {JWT}",
        f"{tag}-{LONG}",
    )
    return variants[zlib.crc32(seed.encode()) % len(variants)]


def _call(call: dict[str, Any]) -> None:
    seed = call["callID"]
    for field in ("workflowName", "workflowID", "callReferenceID", "callType", "functionName", "functionType"):
        call[field] = hostile(field, seed + field)
    if call.get("status") in ("pending", "running"):
        call["status"] = hostile("status", seed)  # an in-progress call's status: the gauges' label


def _function_call(function_call: dict[str, Any]) -> None:
    seed = function_call["functionCallID"]
    for field in ("functionName", "type", "status", "workflowNodeName", "incomingDestinationName", "functionID"):
        function_call[field] = hostile(field, seed + field)


def _event(event: dict[str, Any]) -> None:
    seed = event["eventID"]
    for field in ("functionName", "functionID"):
        event[field] = hostile(field, seed + field)
    if event.get("eventType") == "error":
        event["kind"] = hostile("kind", seed)
    else:
        event["eventType"] = hostile("eventType", seed)


def _rewrite(target: str, reply: Reply) -> Reply:
    if reply.status != 200:
        return reply
    doc: dict[str, Any] = json.loads(reply.body)
    for call in doc.get("calls") or []:
        _call(call)
    trace = doc.get("trace") or {}
    for function_call in trace.get("functionCalls") or []:
        _function_call(function_call)
    for event in trace.get("events") or []:
        _event(event)
    return reply.but(body=json.dumps(doc).encode())


TAGS = {
    "workflow_name": "workflowName",
    "function_name": "functionName",
    "function_type": "type",
    "status": "status",
    "event_type": "eventType",
    "error_kind": "kind",
}
"""Each label and the field whose (hostile) value it shows."""


def _labels(metrics_text: str) -> dict[str, set[str]]:
    """Every value of every label in a scrape."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            for label, value in sample.labels.items():
                found.setdefault(label, set()).add(value)
    return found


def test_no_name_from_the_api_leaves_unredacted(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=80, history=600.0, arrival_rate=3.0, speed=20.0, seed=29))
    produced: dict[str, bytes] = {}
    state = tmp_path / "state.sqlite"
    with SimulatorServer(simulator) as upstream, HttpReceiver() as receiver:
        env = {**otlp_env(receiver), "BEM_LOG_LEVEL": "debug"}
        with HostileApi(upstream, _rewrite) as url, ExporterProcess(url, state, env=env) as exporter:
            # Arrivals for a while, so that calls are seen pending and running (the gauges).
            wait_until(lambda: _in_progress(exporter) > 0, 60, what="calls in progress")
            produced["/metrics while calls run"] = exporter.metrics().encode()
            simulator.config.arrival_rate = 0.0
            # An arrival drawn before the rate fell to 0 may still come: the truth is re-read.
            wait_until(lambda: _all_counted(simulator, exporter), 150, what="every call finished and counted")
            truth = finished_ids(simulator)
            wait_until(lambda: len({s["trace_id"] for s in receiver.spans()}) >= len(truth), 90, what="every trace")
            produced["/metrics"] = exporter.metrics().encode()
            produced["/metrics (OpenMetrics)"] = exporter.metrics(openmetrics=True).encode()
            produced["/status"] = httpx.get(f"{exporter.url}/status", timeout=10).content
            produced["/status.json"] = httpx.get(f"{exporter.url}/status.json", timeout=10).content
            counted = sum(exporter.calls_total().values())
        produced["exporter log"] = exporter.log().encode()
        produced["OTLP requests"] = receiver.raw_bytes()
        spans = receiver.spans()
        produced["spans"] = json.dumps(spans).encode()
        produced["state file"] = b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite*") if p.is_file())

    assert counted == len(truth)
    leaks = [
        f"{secret[:20]!r} in {name}" for name, data in produced.items() for secret in SECRETS if secret.encode() in data
    ]
    assert not leaks, leaks
    # The fields did flow through, redacted: each label shows its field's text in a safe form.
    labels = _labels(produced["/metrics"].decode())
    for label, values in _labels(produced["/metrics while calls run"].decode()).items():
        labels.setdefault(label, set()).update(values)
    values = set().union(*labels.values())
    assert max(len(value) for value in values) <= MAX_NAME_LENGTH
    for label, tag in TAGS.items():
        assert any(value.startswith(tag) for value in labels[label]), label
    for shown in ("https://files.example/in.pdf", "api_key=***", "Bearer ***", "L" * 100):
        assert any(shown in value for value in values), shown
    for span in spans:
        assert len(span["name"]) <= MAX_NAME_LENGTH + len("RUN ")
    attributes = [span["attributes"] for span in spans]
    shown_keys = (
        "bem.workflow.name",
        "bem.workflow.id",
        "bem.call.reference_id",
        "bem.call.type",
        "bem.function.name",
        "bem.function.type",
        "bem.function.id",
        "bem.function_call.status",
        "bem.workflow.node_name",
        "bem.incoming_destination_name",
        "error.type",
    )
    for key in shown_keys:
        shown_values = [a[key] for a in attributes if key in a]
        assert shown_values, key
        assert all(len(value) <= MAX_NAME_LENGTH for value in shown_values), key
    status = json.loads(produced["/status.json"])
    assert status["calls"] and all(len(line["workflow"]) <= MAX_NAME_LENGTH for line in status["calls"])


def _all_counted(simulator: Simulator, exporter: ExporterProcess) -> bool:
    if not set(simulator.status_counts()) <= {"completed", "failed"}:
        return False
    return sum(exporter.calls_total().values()) == len(finished_ids(simulator))


def _in_progress(exporter: ExporterProcess) -> float:
    return sum(exporter.samples("bem_calls_in_progress").values())

"""The bem API simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import bem
import httpx
import pytest

from exporter.simulator import (
    CONTENT_MARKER,
    URL_MARKER,
    Faults,
    Simulator,
    SimulatorConfig,
    SimulatorServer,
)

KEY = {"x-api-key": "sim-key"}
FINISHED = ("completed", "failed")


class ManualClock:
    def __init__(self, t: float = 1_760_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="module")
def frozen() -> Iterator[tuple[Simulator, httpx.Client]]:
    """600 calls at a clock that does not move: listings can be compared with the ground truth."""
    sim = Simulator(SimulatorConfig(seed=11, prefill=600, history=900, arrival_rate=0), clock=ManualClock())
    with SimulatorServer(sim) as url, httpx.Client(base_url=url, headers=KEY) as client:
        yield sim, client


def finished(**config: Any) -> Simulator:
    """A simulator without arrivals whose prefilled calls have all finished."""
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(arrival_rate=0, **config), clock=clock)
    clock.advance(1000)
    return sim


@contextmanager
def served(**config: Any) -> Iterator[tuple[Simulator, SimulatorServer, httpx.Client]]:
    """A simulator of its own, served, with a client that sends the API key."""
    clock = config.pop("clock", None)
    sim = Simulator(SimulatorConfig(**config), clock=clock) if clock else Simulator(SimulatorConfig(**config))
    server = SimulatorServer(sim)
    try:
        with httpx.Client(base_url=server.start(), headers=KEY) as client:
            yield sim, server, client
    finally:
        server.stop()


def base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")


def listing(
    client: httpx.Client, params: dict[str, Any], limit: int = 100, path: str = "/v3/calls"
) -> tuple[list[str], int]:
    """Every callID of a listing, paging with startingAfter, and its totalCount."""
    ids: list[str] = []
    totals: set[int] = set()
    cursor: str | None = None
    while True:
        query = dict(params, limit=limit)
        if cursor:
            query["startingAfter"] = cursor
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        totals.add(body["totalCount"])
        ids += [call["callID"] for call in body["calls"]]
        if len(body["calls"]) < limit:
            break
        cursor = body["calls"][-1]["callID"]
    assert len(totals) == 1
    return ids, totals.pop()


# -- authentication and parameters -------------------------------------------------------------


def test_api_key_is_required(frozen: tuple[Simulator, httpx.Client]) -> None:
    _, client = frozen
    for headers in ({}, {"x-api-key": "wrong"}):
        response = httpx.get(f"{base(client)}/v3/calls", headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert body["message"] and body["code"]
    assert client.get("/v3/calls").status_code == 200


def test_auth_can_be_disabled() -> None:
    with served(api_key=None, prefill=3, arrival_rate=0) as (_sim, server, _client):
        assert httpx.get(f"{server.url}/v3/calls").status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"sortOrder": "newest"},
        {"statuses": "pending,bogus"},
        {"callTypes": "workflow,job"},
        {"startingAfter": "cl_x", "endingBefore": "cl_y"},
        {"startingAfter": "cl_doesnotexist"},
    ],
)
def test_bad_parameters_are_400(frozen: tuple[Simulator, httpx.Client], params: dict[str, str]) -> None:
    _, client = frozen
    response = client.get("/v3/calls", params=params)
    assert response.status_code == 400
    assert response.json()["message"]


def test_limit_bounds(frozen: tuple[Simulator, httpx.Client]) -> None:
    _, client = frozen
    assert len(client.get("/v3/calls", params={"limit": 1}).json()["calls"]) == 1
    assert len(client.get("/v3/calls", params={"limit": 100}).json()["calls"]) == 100
    assert len(client.get("/v3/calls").json()["calls"]) == 50


def test_unknown_call_is_404(frozen: tuple[Simulator, httpx.Client]) -> None:
    _, client = frozen
    for path in ("/v3/calls/cl_nope", "/v3/calls/cl_nope/trace", "/v2/calls/cl_nope"):
        response = client.get(path)
        assert response.status_code == 404
        assert "message" in response.json()


# -- listing -----------------------------------------------------------------------------------


def test_paging_forward_returns_every_call_once_in_creation_order(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    truth = sim.call_ids()
    ids, total = listing(client, {}, limit=37)
    assert ids == truth
    assert total == len(truth) == 600
    descending, _ = listing(client, {"sortOrder": "desc"}, limit=41)
    assert descending == truth[::-1]


def test_call_ids_do_not_sort_by_creation_time(frozen: tuple[Simulator, httpx.Client]) -> None:
    _sim, client = frozen
    calls = client.get("/v3/calls", params={"limit": 100}).json()["calls"]
    created = [call["createdAt"] for call in calls]
    assert created == sorted(created)
    ids = [call["callID"] for call in calls]
    assert ids != sorted(ids)
    assert all(i.startswith("cl_") and len(i) == 23 for i in ids)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_ending_before_pages_backwards(frozen: tuple[Simulator, httpx.Client], order: str) -> None:
    sim, client = frozen
    truth = sim.call_ids() if order == "asc" else sim.call_ids()[::-1]
    # the page before the last 25 of the listing, in listing order
    page = client.get("/v3/calls", params={"sortOrder": order, "limit": 30, "endingBefore": truth[-25]}).json()
    assert [c["callID"] for c in page["calls"]] == truth[-55:-25]
    collected: list[str] = []
    cursor = truth[-1]
    while True:
        calls = client.get("/v3/calls", params={"sortOrder": order, "limit": 64, "endingBefore": cursor}).json()[
            "calls"
        ]
        collected = [c["callID"] for c in calls] + collected
        if len(calls) < 64:
            break
        cursor = calls[0]["callID"]
    assert collected == truth[:-1]


def test_starting_after_the_last_call_is_empty(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    body = client.get("/v3/calls", params={"startingAfter": sim.call_ids()[-1]}).json()
    assert body["calls"] == []
    assert body["totalCount"] == 600


def _filter_cases(calls: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]]:
    workflow_ids = sorted({c["workflowID"] for c in calls if "workflowID" in c})
    function_ids = sorted({c["functionID"] for c in calls if "functionID" in c})
    refs = [c["callReferenceID"] for c in calls if c.get("callReferenceID")][5:8]
    picked = [calls[i]["callID"] for i in (400, 3, 250, 77, 599, 12, 180)]
    return [
        ({"callIDs": ",".join([*picked, "cl_unknown"])}, lambda c: c["callID"] in picked),
        ({"referenceIDs": ",".join(refs)}, lambda c: c.get("callReferenceID") in refs),
        ({"workflowIDs": workflow_ids[0]}, lambda c: c.get("workflowID") == workflow_ids[0]),
        (
            {"workflowNames": "invoice-intake,email-router"},
            lambda c: c.get("workflowName") in ("invoice-intake", "email-router"),
        ),
        (
            {"workflowNames": ["claims-triage", "receipt-extract"]},
            lambda c: c.get("workflowName") in ("claims-triage", "receipt-extract"),
        ),
        ({"statuses": "completed"}, lambda c: c["status"] == "completed"),
        ({"statuses": "failed,pending"}, lambda c: c["status"] in ("failed", "pending")),
        ({"statuses": "pending,running"}, lambda c: c["status"] in ("pending", "running")),
        ({"statuses": "running"}, lambda c: c["status"] == "running"),
        ({"callTypes": "direct_function,adhoc_function"}, lambda c: c["callType"] != "workflow"),
        ({"callTypes": "workflow"}, lambda c: c["callType"] == "workflow"),
        ({"functionIDs": function_ids[0]}, lambda c: c.get("functionID") == function_ids[0]),
        ({"functionNames": "extract-receipt"}, lambda c: c.get("functionName") == "extract-receipt"),
        ({"referenceIDSubstring": "inv-2024-0"}, lambda c: "INV-2024-0" in (c.get("callReferenceID") or "")),
        (
            {"workflowNames": "claims-triage", "statuses": "failed"},
            lambda c: c.get("workflowName") == "claims-triage" and c["status"] == "failed",
        ),
        (
            {"callTypes": "workflow", "referenceIDSubstring": "CLM"},
            lambda c: c["callType"] == "workflow" and "CLM" in (c.get("callReferenceID") or ""),
        ),
    ]


def test_filters_match_the_ground_truth(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    calls = sim.calls()
    statuses = Counter(c["status"] for c in calls)
    assert statuses["pending"] and statuses["running"] and statuses["completed"] and statuses["failed"]
    for params, predicate in _filter_cases(calls):
        expected = [c["callID"] for c in calls if predicate(c)]
        assert expected, params
        ids, total = listing(client, params, limit=23)
        assert ids == expected, params
        assert total == len(expected), params
        descending, _ = listing(client, {**params, "sortOrder": "desc"}, limit=23)
        assert descending == expected[::-1], params


def test_repeated_and_comma_separated_arrays_combine(frozen: tuple[Simulator, httpx.Client]) -> None:
    _, client = frozen
    a, _ = listing(client, {"statuses": ["completed", "failed,running"]})
    b, _ = listing(client, {"statuses": "completed,failed,running"})
    assert a == b and a


def test_cursor_of_a_call_outside_the_filter(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    calls = sim.calls()
    cursor = next(c for c in calls[100:] if c["status"] != "failed")
    position = calls.index(cursor)
    expected = [c["callID"] for c in calls[position + 1 :] if c["status"] == "failed"][:10]
    page = client.get("/v3/calls", params={"statuses": "failed", "startingAfter": cursor["callID"], "limit": 10})
    assert [c["callID"] for c in page.json()["calls"]] == expected


def test_finished_counts_match_the_listing(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    counts = sim.finished_counts()
    calls = sim.calls()
    expected = Counter((c.get("workflowName") or "(none)", c["status"]) for c in calls if c["status"] in FINISHED)
    assert counts == dict(expected)
    _, total = listing(client, {"statuses": "completed,failed"})
    assert total == sum(counts.values())


# -- the time model ----------------------------------------------------------------------------


def test_a_call_goes_pending_running_finished_and_its_trace_grows() -> None:
    clock = ManualClock()
    with served(clock=clock, arrival_rate=0, speed=10, seed=5) as (sim, _server, client):
        call = sim.create_call("invoice-intake", "INV-TEST-1")
        call_id = call["callID"]
        assert call["status"] == "pending" and "finishedAt" not in call
        seen: list[str] = []
        sizes: list[tuple[int, int]] = []
        for _ in range(400):
            body = client.get(f"/v3/calls/{call_id}").json()["call"]
            trace = client.get(f"/v3/calls/{call_id}/trace").json()["trace"]
            status = body["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            sizes.append((len(trace["functionCalls"]), len(trace["events"])))
            if status == "pending":
                assert trace == {"functionCalls": [], "events": []}
            if status == "running":
                assert "finishedAt" not in body and body["outputs"] == [] and body["errors"] == []
                for fc in trace["functionCalls"]:
                    assert (fc["status"] == "running") == ("finishedAt" not in fc)
            if status in FINISHED:
                assert body["finishedAt"] >= max(fc["finishedAt"] for fc in trace["functionCalls"])
                assert all(fc["status"] in FINISHED for fc in trace["functionCalls"])
                break
            clock.advance(0.25)
        assert seen[0] == "pending" and seen[1] == "running" and seen[2] in FINISHED and len(seen) == 3
        assert sizes == sorted(sizes)  # only grows
        assert len({s for s in sizes}) > 3
        assert sim.trace(call_id) == trace


def test_arrivals_follow_the_rate_and_the_clock() -> None:
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(seed=2, arrival_rate=2.0), clock=clock)
    assert len(sim) == 0
    clock.advance(100)
    sim.tick()
    calls = sim.summaries()
    assert 140 < len(calls) < 260
    created = [c["createdAt"] for c in calls]
    assert created == sorted(created)
    assert all(c["status"] == "pending" for c in calls[-1:])
    clock.advance(1000)
    assert set(sim.status_counts()) <= {"completed", "failed", "pending", "running"}
    assert sum(sim.finished_counts().values()) >= len(calls)


def test_the_workload_is_deterministic_per_seed() -> None:
    def make(seed: int) -> Simulator:
        return Simulator(SimulatorConfig(seed=seed, prefill=50, arrival_rate=0), clock=ManualClock())

    a, b, c = make(3), make(3), make(4)
    assert a.call_ids() == b.call_ids() != c.call_ids()
    some = a.call_ids()[10]
    assert a.trace(some) == b.trace(some)
    assert a.calls() == b.calls()


def test_speed_scales_durations() -> None:
    def durations(speed: float) -> list[float]:
        sim = finished(seed=8, prefill=100, history=86400, speed=speed)
        return [_seconds(c["finishedAt"]) - _seconds(c["createdAt"]) for c in sim.calls() if c["status"] in FINISHED]

    slow, fast = durations(1.0), durations(4.0)
    assert 3.0 < sum(slow) / sum(fast) < 5.0
    assert max(slow) < 400 and min(slow) > 0.5


# -- traces ------------------------------------------------------------------------------------


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def check_trace(call: dict[str, Any], trace: dict[str, Any], max_function_calls: int) -> None:
    fcs, events = trace["functionCalls"], trace["events"]
    assert 1 <= len(fcs) <= max_function_calls
    position = {fc["functionCallID"]: i for i, fc in enumerate(fcs)}
    by_id = {e["eventID"]: e for e in events}
    assert len(by_id) == len(events) and len(position) == len(fcs)
    roots = [fc for fc in fcs if "sourceEventID" not in fc]
    assert len(roots) == 1 and "sourceFunctionCallID" not in roots[0] and roots[0] is fcs[0]
    assert roots[0]["startedAt"] >= call["createdAt"]
    for i, fc in enumerate(fcs):
        assert fc["workflowCallID"] == call["callID"]
        assert fc["startedAt"] <= fc["finishedAt"] <= call["finishedAt"]
        assert ("workflowNodeName" in fc) == (call["callType"] == "workflow")
        if fc is roots[0]:
            continue
        source = by_id[fc["sourceEventID"]]
        assert source["functionCallID"] == fc["sourceFunctionCallID"]
        assert position[source["functionCallID"]] < i
        assert source["createdAt"] <= fc["startedAt"]
        assert source["eventType"] not in ("error", "split_collection")
    starts = {fc["functionCallID"]: fc for fc in fcs}
    for event in events:
        assert event["callID"] == call["callID"]
        owner = starts[event["functionCallID"]]
        assert owner["startedAt"] <= event["createdAt"] <= owner["finishedAt"]
        assert event["functionCallTryNumber"] >= 1
        assert event["metadata"]["durationFunctionToEventSeconds"] >= 0
        if event["eventType"] == "error":
            assert event["message"]
    failed_fcs = [fc for fc in fcs if fc["status"] == "failed"]
    assert (call["status"] == "failed") == bool(failed_fcs)
    terminal_errors = {e["eventID"] for e in call["errors"]}
    assert terminal_errors <= set(by_id)
    assert {e["eventID"] for e in call["outputs"]} <= set(by_id)
    assert all(e["eventType"] != "error" for e in call["outputs"])


def test_traces_are_well_formed_dags() -> None:
    sim = finished(seed=21, prefill=400, history=86400, max_function_calls=10)
    kinds: Counter[str] = Counter()
    shapes: Counter[str] = Counter()
    both = retried = 0
    for call in sim.calls():
        trace = sim.trace(call["callID"])
        check_trace(call, trace, 10)
        events = trace["events"]
        types = Counter(e["eventType"] for e in events)
        if types["split_item"]:
            shapes["split"] += 1
            assert types["split_collection"] == 1
        if types["join"]:
            shapes["join"] += 1
            join = next(e for e in events if e["eventType"] == "join")
            assert len(join["items"]) == types["split_item"]
        if any("incomingDestinationName" in fc for fc in trace["functionCalls"]):
            shapes["outlets"] += 1
        if call["callType"] != "workflow":
            shapes["function"] += 1
            assert "functionName" in call and "workflowName" not in call
        if call["status"] == "failed":
            assert call["errors"]
            kinds.update(e.get("kind", "(absent)") for e in call["errors"])
        else:
            assert call["errors"] == [] and call["outputs"]
        both += bool(call["outputs"] and call["errors"])
        for fc in trace["functionCalls"]:
            tries = [e for e in events if e["functionCallID"] == fc["functionCallID"]]
            if fc["status"] == "completed" and tries and tries[0]["eventType"] == "error":
                assert tries[0]["functionCallTryNumber"] == 1 and tries[-1]["functionCallTryNumber"] == 2
                retried += 1
        for event in events:
            if event["eventType"] in ("extract", "transform", "join"):
                assert 0 <= event["avgConfidence"] <= 1
    assert shapes["split"] and shapes["join"] and shapes["outlets"] and shapes["function"]
    assert both and retried
    assert sum(n for kind, n in kinds.items() if kind != "(absent)") > kinds["(absent)"] > 0


def test_max_function_calls_bounds_the_dag() -> None:
    sim = finished(seed=1, prefill=200, history=86400, max_function_calls=3)
    for call in sim.calls():
        check_trace(call, sim.trace(call["callID"]), 3)
    one = finished(seed=1, prefill=50, history=86400, max_function_calls=1)
    assert all(len(one.trace(c["callID"])["functionCalls"]) == 1 for c in one.calls())


def test_http_trace_matches_the_ground_truth(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    for call_id in sim.call_ids()[:600:60]:
        assert client.get(f"/v3/calls/{call_id}/trace").json() == {"trace": sim.trace(call_id)}
        assert client.get(f"/v3/calls/{call_id}").json() == {"call": sim.call(call_id)}


def test_documents_carry_content_and_presigned_urls(frozen: tuple[Simulator, httpx.Client]) -> None:
    _, client = frozen
    text = client.get("/v3/calls", params={"limit": 100, "statuses": "completed"}).text
    assert f"{CONTENT_MARKER}-" in text and f"X-Amz-Signature={URL_MARKER}" in text
    assert "transformedContent" in text and "inputContent" in text
    emails, _ = listing(client, {"workflowNames": "email-router", "statuses": "completed"})
    email = client.get(f"/v3/calls/{emails[0]}").json()["call"]
    assert CONTENT_MARKER in email["outputs"][0]["inboundEmail"]["subject"]


# -- v2 and creation ---------------------------------------------------------------------------


def test_v2_endpoints(frozen: tuple[Simulator, httpx.Client]) -> None:
    sim, client = frozen
    ids, total = listing(client, {}, limit=90, path="/v2/calls")
    assert ids == sim.call_ids() and total == 600
    page = client.get("/v2/calls", params={"limit": 5, "statuses": "completed"}).json()
    assert all("functionCalls" in c and "outputs" not in c for c in page["calls"])
    call_id = page["calls"][0]["callID"]
    call = client.get(f"/v2/calls/{call_id}").json()["call"]
    assert call["trace"] == sim.trace(call_id)
    assert call["functionCalls"] == call["trace"]["functionCalls"]
    v3 = sim.call(call_id)
    assert call["outputs"] == v3["outputs"] + v3["errors"]
    assert client.get("/v2/calls", params={"limit": 500}).status_code == 400


def test_post_v2_calls_creates_pending_calls() -> None:
    clock = ManualClock()
    with served(clock=clock, prefill=5, arrival_rate=0) as (sim, _server, client):
        workflow_id = sim.call(sim.call_ids()[0]).get("workflowID") or sim.calls()[1]["workflowID"]
        body = {
            "calls": [
                {
                    "workflowName": "claims-triage",
                    "callReferenceID": "CLM-NEW-1",
                    "input": {"singleFile": {"inputContent": "aGk=", "inputType": "pdf"}},
                },
                {"workflowID": workflow_id},
                {
                    "functionName": "transform-generic",
                    "callReferenceID": "DOC-NEW-2",
                    "input": {"batchFiles": {"inputs": [{"inputContent": "aGk=", "inputType": "png"}] * 2}},
                },
            ]
        }
        response = client.post("/v2/calls", json=body)
        assert response.status_code == 200, response.text
        created = response.json()["calls"]
        assert [c["status"] for c in created] == ["pending"] * 3
        assert created[0]["workflowName"] == "claims-triage" and created[0]["callReferenceID"] == "CLM-NEW-1"
        assert created[1]["workflowID"] == workflow_id
        assert created[2]["callType"] == "direct_function" and created[2]["functionName"] == "transform-generic"
        assert len(created[2]["input"]["batchFiles"]["inputs"]) == 2
        assert sim.call_ids()[-3:] == [c["callID"] for c in created]
        assert client.post("/v2/calls", json={"calls": [{"workflowName": "nope"}]}).status_code == 404
        assert client.post("/v2/calls", json={"calls": [{"callReferenceID": "x"}]}).status_code == 400
        assert client.post("/v2/calls", content=b"{not json").status_code == 400
        assert len(sim) == 8  # failed requests created nothing


def test_post_v3_workflow_call() -> None:
    with served(prefill=0, arrival_rate=0, speed=2000) as (_sim, _server, client):
        body = {"input": {"singleFile": {"inputContent": "aGk=", "inputType": "pdf"}}, "callReferenceID": "R-1"}
        response = client.post("/v3/workflows/contract-review/call", json=body)
        assert response.status_code == 202
        call = response.json()["call"]
        assert call["status"] == "pending" and call["callType"] == "workflow" and call["callReferenceID"] == "R-1"
        assert call["workflowName"] == "contract-review" and call["url"].endswith(call["callID"])
        body = {**body, "callReferenceID": "R-2"}
        waited = client.post("/v3/workflows/receipt-extract/call", params={"wait": "true"}, json=body, timeout=10)
        assert waited.status_code in (200, 500)
        finished = waited.json()
        assert finished["call"]["status"] == ("completed" if waited.status_code == 200 else "failed")
        assert (waited.status_code == 500) == ("error" in finished)
        assert client.post("/v3/workflows/nope/call", json=body).status_code == 404
        assert client.post("/v3/workflows/contract-review/call", json={}).status_code == 400
        bad = {"input": {"singleFile": {"inputContent": "aGk=", "inputType": "exe"}}}
        assert client.post("/v3/workflows/contract-review/call", json=bad).status_code == 400


# -- creating calls: bodies, validation, references, canary faults -----------------------------

DOCUMENT = b"%PDF-1.7 canary document SECRET-DOCUMENT-BYTES"
DOCUMENT_B64 = base64.b64encode(DOCUMENT).decode()
CANARY_REF = "bem-exporter-canary-0001"


def single(content: str = DOCUMENT_B64, kind: str = "pdf", **extra: Any) -> dict[str, Any]:
    return {"input": {"singleFile": {"inputContent": content, "inputType": kind}}, **extra}


def test_sdk_workflows_call_creates_a_call_that_runs_like_any_other() -> None:
    clock = ManualClock()
    with served(clock=clock, arrival_rate=0) as (sim, server, client):
        sdk = bem.Bem(api_key="sim-key", base_url=server.url, max_retries=0)
        created = sdk.workflows.call(
            "invoice-intake",
            input={"single_file": {"input_content": DOCUMENT_B64, "input_type": "jfif"}},
            call_reference_id=CANARY_REF,
            metadata={"probe": True},
        )
        call = created.call
        assert call is not None and call.status == "pending" and call.call_type == "workflow"
        assert call.call_reference_id == CANARY_REF and call.workflow_name == "invoice-intake"
        assert call.input is not None and call.input.single_file is not None
        assert call.input.single_file.input_type == "jpeg"
        batch = sdk.workflows.call(
            "claims-triage",
            input={"batch_files": {"inputs": [{"input_content": DOCUMENT_B64, "input_type": "pdf"}] * 3}},
        ).call
        assert batch is not None and batch.input is not None and batch.input.batch_files is not None
        assert len(batch.input.batch_files.inputs or []) == 3
        clock.advance(3600)
        listed = client.get("/v3/calls", params={"referenceIDs": CANARY_REF}).json()["calls"]
        assert [c["callID"] for c in listed] == [call.call_id]
        assert listed[0]["status"] in FINISHED and "finishedAt" in listed[0]
        trace = client.get(f"/v3/calls/{call.call_id}/trace").json()["trace"]
        assert trace["functionCalls"] and trace["events"]
        assert sim.requests["POST /v3/workflows/{workflowName}/call"] == 2


def test_sdk_call_without_a_valid_key_is_401() -> None:
    with served(arrival_rate=0) as (sim, server, _client):
        sdk = bem.Bem(api_key="wrong", base_url=server.url, max_retries=0)
        with pytest.raises(bem.AuthenticationError) as refused:
            sdk.workflows.call("invoice-intake", input={"single_file": {"input_content": "aGk=", "input_type": "pdf"}})
        assert refused.value.status_code == 401
        assert refused.value.body == {"message": refused.value.body["message"], "code": "unauthorized"}
        with httpx.Client(base_url=server.url) as anonymous:
            assert anonymous.post("/v2/calls", json={"calls": [{"workflowName": "invoice-intake"}]}).status_code == 401
        assert len(sim) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": {}}, "input"),
        ({"input": {"singleFile": {"inputType": "pdf"}}}, "input.singleFile.inputContent"),
        (single(content="not base64!"), "input.singleFile.inputContent"),
        (single(content=""), "input.singleFile.inputContent"),
        (single(kind="exe"), "input.singleFile.inputType"),
        ({"input": {"singleFile": {"inputContent": "aGk="}}}, "input.singleFile.inputType"),
        ({"input": {"batchFiles": {"inputs": []}}}, "input.batchFiles.inputs"),
        ({"input": {"batchFiles": {"inputs": [{"inputContent": "aGk=", "inputType": "nope"}]}}}, None),
        (single(callReferenceID=7), "callReferenceID"),
        (single(metadata=[1]), "metadata"),
        (single(metadata={"pad": "x" * 5000}), "metadata"),
    ],
)
def test_workflow_call_validation_errors(body: dict[str, Any], field: str | None) -> None:
    with served(arrival_rate=0) as (sim, _server, client):
        response = client.post("/v3/workflows/invoice-intake/call", json=body)
        assert response.status_code == 400, response.text
        error = response.json()
        assert error["code"] == "invalid_request" and error["message"]
        if field is not None:
            assert error["details"] == {"field": field}
        assert len(sim) == 0


def test_multipart_workflow_call() -> None:
    with served(arrival_rate=0) as (sim, _server, client):
        path = "/v3/workflows/receipt-extract/call"
        response = client.post(path, files={"file": ("scan.PNG", DOCUMENT)}, data={"callReferenceID": "MP-1"})
        assert response.status_code == 202, response.text
        call = response.json()["call"]
        assert call["callReferenceID"] == "MP-1" and call["input"]["singleFile"]["inputType"] == "png"
        several = [("files", ("a.bin", DOCUMENT)), ("files", ("b.bin", DOCUMENT))]
        response = client.post(path, files=several, data={"inputType": "pdf"})
        assert response.status_code == 202, response.text
        assert [f["inputType"] for f in response.json()["call"]["input"]["batchFiles"]["inputs"]] == ["pdf", "pdf"]
        assert client.post(path, files={"file": ("a.pdf", b"")}).json()["details"] == {"field": "file"}
        assert client.post(path, files={"other": ("a.pdf", DOCUMENT)}).status_code == 400
        assert client.post(path, files={"file": ("noextension", DOCUMENT)}).status_code == 400
        bad_metadata = client.post(path, files={"file": ("a.pdf", DOCUMENT)}, data={"metadata": "{oops"})
        assert bad_metadata.json()["details"] == {"field": "metadata"}
        assert len(sim) == 2


def test_a_reference_seen_before_returns_the_existing_call() -> None:
    with served(arrival_rate=0) as (sim, _server, client):
        first = client.post("/v3/workflows/invoice-intake/call", json=single(callReferenceID="REF-1"))
        again = client.post("/v3/workflows/invoice-intake/call", json=single(callReferenceID="REF-1"))
        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json()["call"]["callID"] == first.json()["call"]["callID"]
        v2 = client.post("/v2/calls", json={"calls": [{"workflowName": "invoice-intake", "callReferenceID": "REF-1"}]})
        assert v2.json()["calls"][0]["callID"] == first.json()["call"]["callID"]
        assert len(sim) == 1


def test_documents_are_never_echoed() -> None:
    with served(arrival_rate=0) as (_sim, _server, client):
        response = client.post("/v3/workflows/invoice-intake/call", json=single(callReferenceID=CANARY_REF))
        listed = client.get("/v3/calls").text
        for text in (response.text, listed):
            assert DOCUMENT_B64 not in text and "SECRET-DOCUMENT-BYTES" not in text


@pytest.mark.parametrize("outcome", ["fail", "hang"])
def test_canary_calls_can_be_made_to_fail_or_hang(outcome: str) -> None:
    clock = ManualClock()
    with served(clock=clock, arrival_rate=0, failure_rate=0.0) as (sim, _server, client):
        sim.config.faults.canary_outcome = outcome  # type: ignore[assignment]
        canary = client.post("/v3/workflows/invoice-intake/call", json=single(callReferenceID=CANARY_REF))
        v2 = client.post(
            "/v2/calls", json={"calls": [{"workflowName": "invoice-intake", "callReferenceID": CANARY_REF + "-v2"}]}
        )
        other = client.post("/v3/workflows/invoice-intake/call", json=single(callReferenceID="INV-ORDINARY"))
        clock.advance(24 * 3600)
        expected = "failed" if outcome == "fail" else "running"
        assert sim.status(canary.json()["call"]["callID"]) == expected
        assert sim.status(v2.json()["calls"][0]["callID"]) == expected
        assert sim.status(other.json()["call"]["callID"]) == "completed"


@pytest.mark.parametrize("status", [500, 429, 401, 400])
def test_canary_creation_can_be_refused(status: int) -> None:
    with served(arrival_rate=0) as (sim, _server, client):
        sim.config.faults.canary_reject = status
        refused = client.post("/v3/workflows/invoice-intake/call", json=single(callReferenceID=CANARY_REF))
        assert refused.status_code == status
        assert set(refused.json()) >= {"message", "code"}
        v2 = client.post(
            "/v2/calls", json={"calls": [{"workflowName": "invoice-intake", "callReferenceID": CANARY_REF}]}
        )
        assert v2.status_code == status
        assert client.post("/v3/workflows/invoice-intake/call", json=single()).status_code == 202
        assert len(sim) == 1  # only the ordinary call


def test_canary_faults_over_http() -> None:
    clock = ManualClock()
    with served(clock=clock, arrival_rate=0) as (sim, _server, client):
        set_faults = client.post("/_simulator/canary", json={"outcome": "hang", "reject": 503})
        assert set_faults.json() == {"outcome": "hang", "reject": 503}
        assert (sim.config.faults.canary_outcome, sim.config.faults.canary_reject) == ("hang", 503)
        assert client.post("/_simulator/canary", json={"outcome": "explode"}).status_code == 400
        assert client.post("/_simulator/canary", json={"reject": 200}).status_code == 400
        assert client.post("/_simulator/canary", json={"reject": None}).json() == {"outcome": "hang", "reject": None}
        with httpx.Client(base_url=str(client.base_url)) as anonymous:
            assert anonymous.post("/_simulator/canary", json={"outcome": "normal"}).status_code == 401
        assert sim.config.faults.canary_outcome == "hang"


def test_simulate_command_takes_the_canary_faults() -> None:
    command = [sys.executable, "-m", "exporter", "simulate", "--listen", "127.0.0.1:0", "--rate", "0"]
    process = subprocess.Popen(
        [*command, "--canary-outcome", "hang", "--canary-reject", "429"], stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        url = ""
        while not url:
            line = process.stderr.readline()
            assert line, "the simulator exited before listening"
            found = re.search(r"listening on (http://\S+)", line)
            url = found.group(1) if found else ""
        with httpx.Client(base_url=url, headers=KEY) as client:
            path = "/v3/workflows/invoice-intake/call"
            assert client.post(path, json=single(callReferenceID=CANARY_REF)).status_code == 429
            assert client.post("/_simulator/canary", json={"reject": None}).json() == {
                "outcome": "hang",
                "reject": None,
            }
            assert client.post(path, json=single(callReferenceID=CANARY_REF)).status_code == 202
    finally:
        process.terminate()
        process.wait(10)
    refused = subprocess.run([*command, "--canary-reject", "302"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("bem-exporter: error: simulate: canary_reject")


def test_canary_fault_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="canary_reject"):
        Faults(canary_reject=302).validate()
    with pytest.raises(ValueError, match="canary_outcome"):
        Faults(canary_outcome="late").validate()  # type: ignore[arg-type]


# -- faults ------------------------------------------------------------------------------------


def test_429_with_and_without_retry_after() -> None:
    with served(prefill=3, arrival_rate=0, faults=Faults(rate_429=1.0)) as (sim, _server, client):
        response = client.get("/v3/calls")
        assert response.status_code == 429 and "retry-after" not in response.headers
        assert response.json()["message"]
        sim.config.faults.retry_after = 2
        assert client.get("/v3/calls").headers["retry-after"] == "2"
        sim.config.faults.retry_after = 0.25
        assert client.get("/v3/calls/x").headers["retry-after"] == "0.25"
        sim.config.faults.rate_429 = 0.0
        assert client.get("/v3/calls").status_code == 200
        assert sim.responses[("GET /v3/calls", 429)] == 2


def test_5xx_faults() -> None:
    with served(prefill=3, arrival_rate=0, faults=Faults(rate_5xx=1.0, retry_after=1)) as (sim, _server, client):
        statuses: Counter[int] = Counter()
        for _ in range(30):
            response = client.get("/v3/calls")
            statuses[response.status_code] += 1
            assert response.json()["message"]
            assert ("retry-after" in response.headers) == (response.status_code == 503)
        assert set(statuses) == {500, 502, 503}
        sim.config.faults.rate_5xx = 0.3
        codes = [client.get("/v3/calls").status_code for _ in range(60)]
        assert 5 < codes.count(200) < 55


def test_malformed_records_leave_the_rest_of_the_page_valid() -> None:
    faults = Faults(malformed_rate=0.3)
    with served(prefill=200, history=86400, arrival_rate=0, faults=faults) as (sim, _server, client):
        calls = client.get("/v3/calls", params={"limit": 100}).json()["calls"]

        def broken(call: dict[str, Any]) -> bool:
            return "callID" not in call or not isinstance(call["createdAt"], str) or not isinstance(call["status"], str)

        bad = [c for c in calls if broken(c)]
        assert 10 < len(bad) < 60
        sim.config.faults.malformed_rate = 1.0
        assert all(broken(c) for c in client.get("/v3/calls", params={"limit": 20}).json()["calls"])
        call_id = sim.call_ids()[0]
        assert broken(client.get(f"/v3/calls/{call_id}").json()["call"])
        sim.config.faults.malformed_rate = 0.0
        assert not broken(client.get(f"/v3/calls/{call_id}").json()["call"])


def test_truncated_bodies() -> None:
    with served(prefill=20, arrival_rate=0, faults=Faults(truncated_rate=1.0)) as (sim, _server, client):
        for path in ("/v3/calls", f"/v3/calls/{sim.call_ids()[0]}/trace"):
            response = client.get(path)
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == len(response.content)
            with pytest.raises(json.JSONDecodeError):
                json.loads(response.content)


def test_down_then_up_and_restart_on_the_same_port() -> None:
    with served(prefill=5, arrival_rate=0) as (sim, server, client):
        url = server.url
        sim.config.faults.down = True
        with pytest.raises(httpx.TransportError):
            client.get("/v3/calls")
        sim.config.faults.down = False
        assert client.get("/v3/calls").status_code == 200
        server.stop()
        with pytest.raises(httpx.ConnectError):
            client.get("/v3/calls")
        assert server.start() == url
        assert client.get("/v3/calls").status_code == 200
        assert sim.responses[("GET /v3/calls", 0)] == 1


def test_faults_do_not_change_the_workload() -> None:
    clock = ManualClock()
    quiet = Simulator(SimulatorConfig(seed=9, prefill=60, arrival_rate=0.5), clock=clock)
    noisy = Simulator(SimulatorConfig(seed=9, prefill=60, arrival_rate=0.5, faults=Faults(rate_5xx=0.5)), clock=clock)
    with SimulatorServer(noisy) as url, httpx.Client(base_url=url, headers=KEY) as client:
        for _ in range(20):
            client.get("/v3/calls")
            clock.advance(3)
    assert quiet.calls() == noisy.calls()


def test_latency_is_served_concurrently() -> None:
    """Ten requests at once, each held 1 s by the latency: all ten are in the simulator before
    the first answer comes back (served one at a time, the first would come back alone)."""

    async def burst(url: str, sim: Simulator) -> tuple[list[int], int]:
        async with httpx.AsyncClient(base_url=url, headers=KEY) as aclient:
            requests = [asyncio.ensure_future(aclient.get("/v3/calls")) for _ in range(10)]
            await next(asyncio.as_completed(requests))
            started = sim.requests["GET /v3/calls"]
            responses = await asyncio.gather(*requests)
        return [r.status_code for r in responses], started

    with served(prefill=5, arrival_rate=0, latency=1.0) as (sim, server, _):
        statuses, started_before_the_first_answer = asyncio.run(burst(server.url, sim))
    assert statuses == [200] * 10
    assert started_before_the_first_answer == 10


def test_path_prefix_and_request_counters() -> None:
    sim = Simulator(SimulatorConfig(prefill=5, arrival_rate=0))
    with SimulatorServer(sim, prefix="/bem/") as url:
        assert url.endswith("/bem")
        assert httpx.get(f"{url}/v3/calls", headers=KEY).status_code == 200
        assert httpx.get(url.removesuffix("/bem") + "/v3/calls", headers=KEY).status_code == 404
        httpx.get(f"{url}/v3/calls/{sim.call_ids()[0]}/trace", headers=KEY)
    assert sim.requests["GET /v3/calls"] == 1
    assert sim.requests["GET /v3/calls/{callID}/trace"] == 1
    assert sim.responses[("GET /v3/calls", 200)] == 1


def test_prefill_is_cheap() -> None:
    # CPU time of this thread (~0.3 s here), which other jobs on the machine do not stretch
    began = time.thread_time()
    sim = Simulator(SimulatorConfig(seed=3, prefill=20_000, arrival_rate=0))
    assert time.thread_time() - began < 3.0
    counts = sim.status_counts()
    assert counts["completed"] + counts["failed"] > 19_000


# -- the official SDK's models -----------------------------------------------------------------


def test_responses_validate_against_the_sdk_models(frozen: tuple[Simulator, httpx.Client]) -> None:
    bem = pytest.importorskip("bem")
    from bem.types import Call
    from bem.types.call_get_response import CallGetResponse
    from bem.types.call_retrieve_trace_response import CallRetrieveTraceResponse
    from bem.types.event import Event
    from pydantic import TypeAdapter

    events: TypeAdapter[Any] = TypeAdapter(Event)
    sim, client = frozen
    seen: Counter[str] = Counter()
    for call in client.get("/v3/calls", params={"limit": 100, "startingAfter": sim.call_ids()[499]}).json()["calls"]:
        Call.model_validate(call)
        CallGetResponse.model_validate(client.get(f"/v3/calls/{call['callID']}").json())
        trace = CallRetrieveTraceResponse.model_validate(client.get(f"/v3/calls/{call['callID']}/trace").json())
        assert trace.trace is not None
        for event in trace.trace.events:
            seen[type(events.validate_python(event)).__name__] += 1
        seen[call["status"]] += 1
    assert {"pending", "running", "completed", "failed"} <= set(seen)
    assert {"SplitCollectionEvent", "SplitItemEvent", "JoinEvent", "ErrorEvent", "ExtractEvent"} <= set(seen)

    sdk = bem.Bem(api_key="sim-key", base_url=base(client), max_retries=0)
    assert [c.call_id for c in sdk.calls.list(limit=100)] == sim.call_ids()
    page = sdk.calls.list(limit=10, statuses=["failed"], workflow_names=["invoice-intake", "claims-triage"])
    assert all(c.status == "failed" and c.errors for c in page.calls)
    with pytest.raises(bem.AuthenticationError):
        bem.Bem(api_key="wrong", base_url=base(client), max_retries=0).calls.list()

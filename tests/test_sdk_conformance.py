"""Conformance with bem's official Python SDK (`bem-sdk`, generated from bem's OpenAPI spec).

The SDK is the independent oracle for the API's shapes. Its clients (`bem.Bem`, `bem.AsyncBem`)
walk the whole v3 Calls surface of the simulator over real HTTP (every list filter, both sort
orders, auto-pagination, retrieve, retrieve_trace), every response is validated strictly
against the SDK's models (events by their `eventType`), and the exporter's own records decode
the same bodies to the same values. The last tests pin what the SDK does where the exporter
needs more (unknown enum values, unreadable records, truncated bodies, Retry-After): the
figures and the decision built on them are in docs/sdk-decision.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args, get_type_hints
from urllib.parse import parse_qsl

import httpx
import msgspec
import pytest

bem = pytest.importorskip("bem")

from bem.pagination import SyncCallsPage  # noqa: E402
from bem.types import Call as SdkCall  # noqa: E402
from bem.types.call_get_response import CallGetResponse  # noqa: E402
from bem.types.call_retrieve_trace_response import CallRetrieveTraceResponse, TraceFunctionCall  # noqa: E402
from bem.types.error_event import ErrorEvent  # noqa: E402
from bem.types.error_event import Metadata as ErrorEventMetadata  # noqa: E402
from bem.types.event import Event as SdkEvent  # noqa: E402
from bem.types.event import TransformEvent  # noqa: E402
from bem.types.function_type import FunctionType  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from exporter.bem import models  # noqa: E402
from exporter.bem.decode import decode_call_page, decode_trace  # noqa: E402
from exporter.simulator import WORKFLOWS, Faults, Simulator, SimulatorConfig, SimulatorServer  # noqa: E402
from exporter.simulator.catalog import DIRECT_FUNCTIONS  # noqa: E402

KEY = "sim-key"
JSON = dict[str, Any]

EVENT_CLASSES: dict[str, type[BaseModel]] = {
    get_args(get_args(cls.model_fields["event_type"].annotation)[0])[0]: cls for cls in get_args(get_args(SdkEvent)[0])
}
"""eventType -> the SDK's model of that event, from the `event_type` literal of each member of its Event union."""
FUNCTION_TYPES = frozenset(get_args(FunctionType))
CALL_TYPES = frozenset(get_args(SdkCall.model_fields["call_type"].annotation))
STATUSES = frozenset(get_args(get_args(SdkCall.model_fields["status"].annotation)[0]))


class FrozenClock:
    def __init__(self, t: float = 1_760_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Served:
    sim: Simulator
    url: str
    truth: list[JSON]
    """Every call, as the simulator's ground truth, in creation order."""
    sent: list[httpx.Request]
    """Every request the SDK client `sdk` sent."""
    sdk: Any
    """`bem.Bem` at the simulator, validating every response against its models."""


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """700 calls at a clock that stands still (some pending or running), served over loopback."""
    sim = Simulator(SimulatorConfig(seed=23, prefill=700, history=900, arrival_rate=0), clock=FrozenClock())
    sent: list[httpx.Request] = []
    with (
        SimulatorServer(sim) as url,
        httpx.Client(event_hooks={"request": [sent.append]}) as http,
        bem.Bem(base_url=url, api_key=KEY, http_client=http, max_retries=0, _strict_response_validation=True) as sdk,
    ):
        yield Served(sim, url, sim.calls(), sent, sdk)


@dataclass
class Bodies:
    """Raw response bodies of the whole v3 surface, fetched by the SDK (which validated each)."""

    pages: list[bytes]
    calls: dict[str, bytes]
    traces: dict[str, bytes]


@pytest.fixture(scope="module")
def bodies(served: Served) -> Bodies:
    sdk = served.sdk
    pages: list[bytes] = []
    cursor: str | None = None
    while True:
        raw = sdk.calls.with_raw_response.list(limit=100, **({"starting_after": cursor} if cursor else {}))
        page = raw.parse()  # strict: the SDK validated it against SyncCallsPage[Call]
        pages.append(raw.read())
        if not page.calls:
            break
        cursor = page.calls[-1].call_id
    calls: dict[str, bytes] = {}
    traces: dict[str, bytes] = {}
    for call in served.truth:
        call_id = call["callID"]
        raw = sdk.calls.with_raw_response.retrieve(call_id)
        assert isinstance(raw.parse(), CallGetResponse)
        calls[call_id] = raw.read()
        raw = sdk.calls.with_raw_response.retrieve_trace(call_id)
        assert isinstance(raw.parse(), CallRetrieveTraceResponse)
        traces[call_id] = raw.read()
    return Bodies(pages, calls, traces)


# -- requests: how the SDK sends parameters, and that the simulator takes them -------------------


def test_sdk_sends_array_parameters_comma_separated(served: Served) -> None:
    page = served.sdk.calls.list(statuses=["pending", "running"], call_types=["workflow", "adhoc_function"], limit=100)
    request = served.sent[-1]
    assert request.headers["x-api-key"] == KEY
    assert request.url.path == "/v3/calls"
    query = parse_qsl(request.url.query.decode())
    assert ("statuses", "pending,running") in query
    assert ("callTypes", "workflow,adhoc_function") in query
    assert [name for name, _ in query].count("statuses") == 1  # not repeated, not `statuses[]`
    expected = [
        c["callID"]
        for c in served.truth
        if c["status"] in ("pending", "running") and c["callType"] in ("workflow", "adhoc_function")
    ]
    assert expected
    assert [c.call_id for c in page.calls] == expected
    # the exporter's own client sends them the same way
    from exporter.bem.client import ListQuery

    ours = ListQuery(call_ids=("c1", "c2"), workflow_names=("invoice-intake", "claims-triage")).params()
    assert ours["callIDs"] == "c1,c2"
    assert ours["workflowNames"] == "invoice-intake,claims-triage"


Case = tuple[dict[str, Any], Callable[[JSON], bool]]


def _filter_case(name: str, truth: list[JSON]) -> Case:
    """The SDK's keyword arguments for one filter, and the ground truth's predicate for it."""
    with_reference = [c for c in truth if c.get("callReferenceID")]
    functions = [c for c in truth if c["callType"] != "workflow"]
    if name == "call_ids":
        ids = [c["callID"] for c in truth[3::97]]
        return {"call_ids": ids}, lambda c: c["callID"] in ids
    if name == "reference_ids":
        refs = [c["callReferenceID"] for c in with_reference[5::131]]
        return {"reference_ids": refs}, lambda c: c.get("callReferenceID") in refs
    if name == "reference_id_substring":  # case-insensitive: the references are `CLM-2024-...`
        sub = "clm-2024-"
        return {"reference_id_substring": sub}, lambda c: sub in (c.get("callReferenceID") or "").lower()
    if name == "workflow_ids":
        ids = [WORKFLOWS[0].id, WORKFLOWS[2].id]
        return {"workflow_ids": ids}, lambda c: c.get("workflowID") in ids
    if name == "workflow_names":
        names = ["claims-triage", "email-router"]
        return {"workflow_names": names}, lambda c: c.get("workflowName") in names
    if name == "statuses_in_progress":
        return {"statuses": ["pending", "running"]}, lambda c: c["status"] in ("pending", "running")
    if name == "statuses_failed":
        return {"statuses": ["failed"]}, lambda c: c["status"] == "failed"
    if name == "call_types":
        types = ["direct_function", "adhoc_function"]
        return {"call_types": types}, lambda c: c["callType"] in types
    if name == "function_ids":
        ids = sorted({c["functionID"] for c in functions})[:2]
        return {"function_ids": ids}, lambda c: c.get("functionID") in ids
    if name == "function_names":
        names = [DIRECT_FUNCTIONS[1][0].name, DIRECT_FUNCTIONS[2][0].name]
        return {"function_names": names}, lambda c: c.get("functionName") in names
    if name == "combined":
        kwargs = {"workflow_names": ["invoice-intake", "receipt-extract"], "statuses": ["completed"]}
        kwargs["reference_id_substring"] = "-2024-0"
        return (
            kwargs,
            lambda c: (
                c.get("workflowName") in ("invoice-intake", "receipt-extract")
                and c["status"] == "completed"
                and "-2024-0" in (c.get("callReferenceID") or "")
            ),
        )
    raise AssertionError(name)


FILTERS = (
    "call_ids",
    "reference_ids",
    "reference_id_substring",
    "workflow_ids",
    "workflow_names",
    "statuses_in_progress",
    "statuses_failed",
    "call_types",
    "function_ids",
    "function_names",
    "combined",
)


@pytest.mark.parametrize("sort_order", ["asc", "desc"])
@pytest.mark.parametrize("name", FILTERS)
def test_every_filter_and_sort_order_through_the_sdk(served: Served, name: str, sort_order: str) -> None:
    kwargs, matches = _filter_case(name, served.truth)
    expected = [c["callID"] for c in served.truth if matches(c)]
    assert 0 < len(expected) < len(served.truth), "the case must select something, not everything"
    if sort_order == "desc":
        expected.reverse()
    first = served.sdk.calls.list(limit=20, sort_order=sort_order, **kwargs)
    got = [call.call_id for call in first]  # auto-pagination across every page
    assert got == expected
    assert first.model_extra == {"totalCount": len(expected)}  # totalCount is no field of the SDK's page
    assert all(isinstance(call, SdkCall) for call in first.calls)


def test_auto_pagination_returns_every_call_exactly_once(served: Served) -> None:
    sdk, ids = served.sdk, served.sim.call_ids()
    assert [c["callID"] for c in served.truth] == ids
    before = len(served.sent)
    assert [call.call_id for call in sdk.calls.list(limit=9)] == ids
    # 700 calls = 77 full pages + a short one of 7; the SDK asks once more (an empty page): it
    # pages on until a page is empty, where the exporter stops at the first short page.
    assert len(served.sent) - before == 79
    assert [call.call_id for call in sdk.calls.list(limit=9, sort_order="desc")] == ids[::-1]
    # endingBefore pages backwards: each page in listing order, the pages walking to the start
    backwards = [call.call_id for call in sdk.calls.list(limit=9, ending_before=ids[-1])]
    assert Counter(backwards) == Counter(ids[:-1])
    assert backwards[:9] == ids[-10:-1]


def test_retrieve_and_retrieve_trace_through_the_sdk(served: Served) -> None:
    sdk, sim = served.sdk, served.sim
    for call in served.truth[::7]:
        got = sdk.calls.retrieve(call["callID"])
        assert got.call is not None
        assert got.call.to_dict(mode="json") == SdkCall.model_validate(call).to_dict(mode="json")
        trace = sdk.calls.retrieve_trace(call["callID"])
        assert trace.trace is not None
        truth = sim.trace(call["callID"])
        assert [fc.function_call_id for fc in trace.trace.function_calls] == [
            fc["functionCallID"] for fc in truth["functionCalls"]
        ]
        assert trace.trace.events == truth["events"]  # `List[object]` in the SDK: the events as sent
    with pytest.raises(bem.NotFoundError):
        sdk.calls.retrieve("cl_doesnotexist")
    with pytest.raises(bem.NotFoundError):
        sdk.calls.retrieve_trace("cl_doesnotexist")
    with pytest.raises(bem.AuthenticationError):
        bem.Bem(base_url=served.url, api_key="wrong", max_retries=0).calls.list()


def test_async_sdk_walks_the_same_surface(served: Served) -> None:
    sample = [c["callID"] for c in served.truth[::11]]

    async def walk() -> tuple[list[str], list[str], list[Any], list[Any]]:
        async with bem.AsyncBem(
            base_url=served.url, api_key=KEY, max_retries=0, _strict_response_validation=True
        ) as sdk:
            every = [call.call_id async for call in sdk.calls.list(limit=50)]
            failed = [
                call.call_id
                async for call in sdk.calls.list(
                    limit=10, sort_order="desc", statuses=["failed"], workflow_names=["invoice-intake"]
                )
            ]
            calls = await asyncio.gather(*(sdk.calls.retrieve(call_id) for call_id in sample))
            traces = await asyncio.gather(*(sdk.calls.retrieve_trace(call_id) for call_id in sample))
            return every, failed, calls, traces

    every, failed, calls, traces = asyncio.run(walk())
    assert every == served.sim.call_ids()
    assert failed == [
        c["callID"]
        for c in reversed(served.truth)
        if c["status"] == "failed" and c.get("workflowName") == "invoice-intake"
    ]
    assert [got.call.call_id for got in calls] == sample
    for call_id, trace in zip(sample, traces, strict=True):
        assert trace.trace.events == served.sim.trace(call_id)["events"]


# -- responses: strictly valid under the SDK's models --------------------------------------------


def _extras(model: object, path: str, found: Counter[str]) -> None:
    """Count the fields of a response that the SDK's models do not declare (`extra="allow"`)."""
    if isinstance(model, BaseModel):
        for key in model.model_extra or {}:
            found[f"{path}.{key}"] += 1
        for name in type(model).model_fields:
            _extras(getattr(model, name), f"{path}.{name}", found)
    elif isinstance(model, list):
        for item in model:
            _extras(item, f"{path}[]", found)


def _event(raw: bytes | JSON) -> BaseModel:
    """An event validated strictly against the SDK's model of its `eventType`."""
    data = raw if isinstance(raw, dict) else json.loads(raw)
    cls = EVENT_CLASSES[data["eventType"]]
    return cls.model_validate_json(json.dumps(data), strict=True)


def test_every_response_validates_strictly_against_the_sdk_models(served: Served, bodies: Bodies) -> None:
    """Nothing required missing, no type mismatch (strict: no coercion), enums within the
    SDK's literals, and no field the SDK does not know (except the list's `totalCount`)."""
    extras: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    listed: list[str] = []
    for body in bodies.pages:
        page = SyncCallsPage[SdkCall].model_validate_json(body, strict=True)
        listed += [call.call_id for call in page.calls]
        assert page.model_extra == {"totalCount": len(served.truth)}
        _extras(page.calls, "page.calls", extras)
    assert listed == served.sim.call_ids()
    assert not bodies.pages[-1].startswith(b'{"calls":[{')  # the walk ended on an empty page

    for call_id, body in bodies.calls.items():
        got = CallGetResponse.model_validate_json(body, strict=True)
        call = got.call
        assert call is not None and call.call_id == call_id
        _extras(got, "get", extras)
        assert call.call_type in CALL_TYPES and call.status in STATUSES
        seen[f"status:{call.status}"] += 1
        seen[f"callType:{call.call_type}"] += 1
        for event in [*call.outputs, *call.errors]:
            _extras(_event(event.to_dict(mode="json")), "get.event", extras)
        if call.call_type == "workflow":
            assert call.workflow_id and call.workflow_name and call.workflow_version_num is not None
            assert call.function_id is None and call.function_type is None
        else:
            assert call.function_id and call.function_name and call.function_type in FUNCTION_TYPES
            assert call.workflow_id is None and call.workflow_name is None
        assert (call.finished_at is not None) == (call.status in ("completed", "failed"))

    for call_id, body in bodies.traces.items():
        got = CallRetrieveTraceResponse.model_validate_json(body, strict=True)
        assert got.trace is not None and got.error is None
        _extras(got, "trace", extras)
        for fc in got.trace.function_calls:
            assert fc.type in FUNCTION_TYPES
            assert fc.workflow_call_id == call_id
            seen[f"functionType:{fc.type}"] += 1
            seen[f"functionCallStatus:{fc.status}"] += 1
        for raw in msgspec.json.decode(body, type=dict[str, dict[str, list[msgspec.Raw]]])["trace"]["events"]:
            event = _event(bytes(raw))
            _extras(event, type(event).__name__, extras)
            seen[f"eventType:{event.event_type}"] += 1  # type: ignore[attr-defined]
            assert event.call_id == call_id  # type: ignore[attr-defined]

    assert not extras, f"fields the SDK does not declare: {dict(extras)}"
    # the walk covered every status, call type and function type, and every event type but two
    assert {f"status:{s}" for s in STATUSES} <= set(seen)
    assert {f"callType:{t}" for t in CALL_TYPES} <= set(seen)
    assert {f"functionType:{t}" for t in FUNCTION_TYPES} <= set(seen)
    assert {f"functionCallStatus:{s}" for s in ("running", "completed", "failed")} <= set(seen)
    emitted = {key.split(":", 1)[1] for key in seen if key.startswith("eventType:")}
    assert set(EVENT_CLASSES) - emitted == {"evaluation", "collection_processing"}  # not part of a workflow run


# -- the exporter's records agree with the SDK's models -------------------------------------------


def _same(ours: object, theirs: object, what: str) -> None:
    if isinstance(ours, datetime) or isinstance(theirs, datetime):
        assert isinstance(ours, datetime) and isinstance(theirs, datetime), what
        assert ours.tzinfo is not None and theirs.tzinfo is not None, what
    assert ours == theirs, f"{what}: exporter {ours!r} != SDK {theirs!r}"


def _compare_call(ours: models.Call, theirs: SdkCall) -> None:
    pairs = {
        "callID": (ours.call_id, theirs.call_id),
        "status": (ours.status, theirs.status),
        "createdAt": (ours.created_at, theirs.created_at),
        "finishedAt": (ours.finished_at, theirs.finished_at),
        "callType": (ours.call_type, theirs.call_type),
        "callReferenceID": (ours.reference_id, theirs.call_reference_id),
        "workflowID": (ours.workflow_id, theirs.workflow_id),
        "workflowName": (ours.workflow_name, theirs.workflow_name),
        "workflowVersionNum": (ours.workflow_version, theirs.workflow_version_num),
        "functionID": (ours.function_id, theirs.function_id),
        "functionName": (ours.function_name, theirs.function_name),
        "functionType": (ours.function_type, theirs.function_type),
        "functionVersionNum": (ours.function_version, theirs.function_version_num),
    }
    for field, (a, b) in pairs.items():
        _same(a, b, f"call {theirs.call_id} {field}")


def _compare_function_call(ours: models.FunctionCall, theirs: TraceFunctionCall) -> None:
    pairs = {
        "functionCallID": (ours.function_call_id, theirs.function_call_id),
        "functionID": (ours.function_id, theirs.function_id),
        "functionName": (ours.function_name, theirs.function_name),
        "type": (ours.function_type, theirs.type),
        "functionVersionNum": (ours.function_version, theirs.function_version_num),
        "status": (ours.status, theirs.status),
        "startedAt": (ours.started_at, theirs.started_at),
        "finishedAt": (ours.finished_at, theirs.finished_at),
        "sourceEventID": (ours.source_event_id, theirs.source_event_id),
        "sourceFunctionCallID": (ours.source_function_call_id, theirs.source_function_call_id),
        "workflowNodeName": (ours.workflow_node_name, theirs.workflow_node_name),
        "incomingDestinationName": (ours.incoming_destination_name, theirs.incoming_destination_name),
    }
    for field, (a, b) in pairs.items():
        _same(a, b, f"function call {theirs.function_call_id} {field}")


def _compare_event(ours: models.Event, theirs: Any) -> None:
    metadata = theirs.metadata
    pairs = {
        "eventID": (ours.event_id, theirs.event_id),
        "eventType": (ours.event_type, theirs.event_type),
        "createdAt": (ours.created_at, theirs.created_at),
        "functionCallID": (ours.function_call_id, theirs.function_call_id),
        "functionCallTryNumber": (ours.try_number, theirs.function_call_try_number),
        "functionID": (ours.function_id, theirs.function_id),
        "functionName": (ours.function_name, theirs.function_name),
        "functionVersionNum": (ours.function_version, theirs.function_version_num),
        "durationFunctionToEventSeconds": (
            ours.duration_seconds,
            metadata.duration_function_to_event_seconds if metadata is not None else None,
        ),
        # only ErrorEvent has message and kind; avgConfidence only extract/transform/parse/analyze/join
        "message": (ours.message, getattr(theirs, "message", None)),
        "kind": (ours.kind, getattr(theirs, "kind", None)),
        "avgConfidence": (ours.avg_confidence, getattr(theirs, "avg_confidence", None)),
    }
    for field, (a, b) in pairs.items():
        _same(a, b, f"event {theirs.event_id} {field}")
    assert ours.is_error == isinstance(theirs, ErrorEvent)


def test_exporter_records_agree_with_the_sdk_field_by_field(served: Served, bodies: Bodies) -> None:
    compared: Counter[str] = Counter()
    for body in bodies.pages:
        ours = decode_call_page(body)
        theirs = SyncCallsPage[SdkCall].model_validate_json(body, strict=True)
        assert ours.rejected == 0
        assert ours.ids == [call.call_id for call in theirs.calls]
        for a, b in zip(ours.calls, theirs.calls, strict=True):
            _compare_call(a, b)
            compared["listed call"] += 1
    for body in bodies.calls.values():
        # the record of `GET /v3/calls/{id}` is the same record as a listed one
        record = json.dumps(json.loads(body)["call"]).encode()
        page = decode_call_page(b'{"calls": [' + record + b"]}")
        got = CallGetResponse.model_validate_json(body, strict=True)
        assert page.rejected == 0 and got.call is not None
        _compare_call(page.calls[0], got.call)
        compared["retrieved call"] += 1
    for body in bodies.traces.values():
        trace = decode_trace(body)
        sdk_trace = CallRetrieveTraceResponse.model_validate_json(body, strict=True).trace
        assert sdk_trace is not None
        assert trace.rejected == 0
        for a, b in zip(trace.function_calls, sdk_trace.function_calls, strict=True):
            _compare_function_call(a, b)
            compared["function call"] += 1
        for a, raw in zip(trace.events, sdk_trace.events, strict=True):
            _compare_event(a, _event(raw))  # type: ignore[arg-type]
            compared[f"event {a.event_type}"] += 1
    assert compared["listed call"] == compared["retrieved call"] == len(served.truth)
    assert compared["function call"] > 1000
    assert compared["event error"] > 50 and compared["event extract"] > 100


_RECORDS: list[tuple[type[msgspec.Struct], list[type[BaseModel]]]] = [
    (models.Call, [SdkCall]),
    (models.FunctionCall, [TraceFunctionCall]),
    (models.Event, list(EVENT_CLASSES.values())),
]


@pytest.mark.parametrize(("record", "sdk_models"), _RECORDS, ids=lambda v: getattr(v, "__name__", ""))
def test_the_exporter_reads_only_fields_the_sdk_declares(
    record: type[msgspec.Struct], sdk_models: list[type[BaseModel]]
) -> None:
    """Every wire name in the exporter's records is a field of the SDK's model (of at least one
    event model for events), and what the exporter requires the SDK requires too, with one
    deliberate exception: a call without `status` (optional in the SDK) is rejected, since the
    exporter cannot tell whether it finished."""
    declared = {(f.alias or name): f for cls in sdk_models for name, f in cls.model_fields.items()}
    for field in msgspec.structs.fields(record):
        if field.name == "rejected":
            continue
        assert field.encode_name in declared, f"{record.__name__}.{field.name}: SDK has no {field.encode_name!r}"
        required_here = field.required
        required_there = all(
            (field.encode_name in {(f.alias or n) for n, f in cls.model_fields.items()})
            and next(f for n, f in cls.model_fields.items() if (f.alias or n) == field.encode_name).is_required()
            for cls in sdk_models
        )
        if required_here and not required_there:
            assert (record, field.encode_name) == (models.Call, "status"), (
                f"{record.__name__}.{field.name} is required by the exporter, optional in the SDK"
            )
    metadata = {(f.alias or name) for name, f in ErrorEventMetadata.model_fields.items()}
    assert {f.encode_name for f in msgspec.structs.fields(models.EventMetadata)} <= metadata


# -- what the SDK does where the exporter needs more ---------------------------------------------


def _mock_sdk(handler: Callable[[httpx.Request], httpx.Response], *, strict: bool) -> Any:
    transport = httpx.MockTransport(handler)
    return bem.Bem(
        base_url="http://bem.invalid",
        api_key=KEY,
        http_client=httpx.Client(transport=transport),
        max_retries=0,
        _strict_response_validation=strict,
    )


def _unknown_values(served: Served) -> tuple[JSON, JSON]:
    """A finished call with outputs and its trace, given enum values the SDK 0.36 does not know."""
    call = next(c for c in served.truth if c["status"] == "completed" and c["outputs"] and c["callType"] == "workflow")
    call = json.loads(json.dumps(call))
    trace = served.sim.trace(call["callID"])
    call["callType"] = "agent"
    call["status"] = "cancelled"
    call["outputs"][0]["eventType"] = "summarize"
    trace["functionCalls"][0]["type"] = "summarize"
    trace["events"][0]["eventType"] = "summarize"
    return call, trace


def test_unknown_enum_values_sdk_versus_exporter(served: Served) -> None:
    call, trace = _unknown_values(served)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/trace"):
            return httpx.Response(200, json={"trace": trace})
        if request.url.path == "/v3/calls":
            return httpx.Response(200, json={"calls": [call], "totalCount": 1})
        return httpx.Response(200, json={"call": call})

    # validating: one unknown value and the whole response is an error, its good records lost with it
    strict = _mock_sdk(handler, strict=True)
    for fetch in (strict.calls.list, lambda: strict.calls.retrieve("x"), lambda: strict.calls.retrieve_trace("x")):
        with pytest.raises(bem.APIResponseValidationError):
            fetch()
    # default (no validation): the raw values pass, but an event of an unknown type in `outputs`
    # is built as the union's first member, a TransformEvent (missing its required fields)
    loose = _mock_sdk(handler, strict=False)
    got = loose.calls.retrieve("x").call
    assert (got.call_type, got.status) == ("agent", "cancelled")
    assert isinstance(got.outputs[0], TransformEvent) and got.outputs[0].event_type == "summarize"
    assert loose.calls.retrieve_trace("x").trace.function_calls[0].type == "summarize"

    # the exporter keeps the unknown values as they come, and every other record
    body = json.dumps({"calls": [call]}).encode()
    page = decode_call_page(body)
    assert page.rejected == 0 and (page.calls[0].call_type, page.calls[0].status) == ("agent", "cancelled")
    ours = decode_trace(json.dumps({"trace": trace}).encode())
    assert ours.rejected == 0
    assert ours.function_calls[0].function_type == "summarize" and ours.events[0].event_type == "summarize"
    assert len(ours.events) == len(trace["events"])


def test_sdk_pagination_stops_silently_at_a_record_without_its_id(served: Served) -> None:
    ids = served.sim.call_ids()[:250]
    records = {c["callID"]: c for c in served.truth}

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("startingAfter")
        start = ids.index(after) + 1 if after else 0
        page = [dict(records[call_id]) for call_id in ids[start : start + 100]]
        if start == 0:
            del page[-1]["callID"]  # one unreadable record, last of the first page
        return httpx.Response(200, json={"calls": page, "totalCount": len(ids)})

    sdk = _mock_sdk(handler, strict=False)
    assert len(list(sdk.calls.list(limit=100))) == 100  # of 250, and no error
    first = handler(httpx.Request("GET", "http://bem.invalid/v3/calls?limit=100")).content
    page = decode_call_page(first)
    assert page.rejected == 1 and page.size == 100
    assert page.last_call_id == ids[98]  # the exporter pages on from the last readable id


def _fault_server(**faults: Any) -> tuple[Simulator, SimulatorServer]:
    sim = Simulator(SimulatorConfig(seed=3, prefill=20, arrival_rate=0, faults=Faults(**faults)), clock=FrozenClock())
    return sim, SimulatorServer(sim)


def test_sdk_does_not_retry_a_truncated_body() -> None:
    sim, server = _fault_server(truncated_rate=1.0)
    with (
        server as url,
        bem.Bem(base_url=url, api_key=KEY, max_retries=2) as sdk,
        pytest.raises(ValueError),  # json.JSONDecodeError escapes the SDK as it is
    ):
        sdk.calls.list(limit=5)
    assert sim.requests["GET /v3/calls"] == 1


def test_sdk_honours_retry_after_up_to_60_seconds_only() -> None:
    sim, server = _fault_server(rate_429=1.0, retry_after=0.2)
    with server as url, bem.Bem(base_url=url, api_key=KEY, max_retries=2) as sdk:
        began = time.monotonic()
        with pytest.raises(bem.RateLimitError):
            sdk.calls.list(limit=5)
        assert time.monotonic() - began >= 0.4  # two waits of Retry-After: 0.2
        assert sim.requests["GET /v3/calls"] == 3
        sim.config.faults.retry_after = 90  # more than 60 s: ignored, the SDK backs off 0.5-1 s instead
        began = time.monotonic()
        with pytest.raises(bem.RateLimitError):
            sdk.with_options(max_retries=1).calls.list(limit=5)
        assert time.monotonic() - began < 60  # far less than the 90 s asked, whatever the load


def test_both_lists_of_subscription_types_are_the_sdks() -> None:
    """The client's and the simulator's lists are written apart on purpose (the simulator
    states bem independently of the client it tests); bem-sdk keeps both honest."""
    from bem.types.subscription_create_params import SubscriptionCreateParams

    from exporter.bem.subscriptions import SubscriptionType
    from exporter.simulator.subscriptions import SUBSCRIPTION_TYPES

    [sdk_types] = get_args(get_type_hints(SubscriptionCreateParams, include_extras=True)["type"])  # Required[...]
    assert set(get_args(sdk_types)) == set(get_args(SubscriptionType)) == set(SUBSCRIPTION_TYPES)

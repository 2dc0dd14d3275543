"""The simulator's HTTP API (aiohttp): bem's Calls API endpoints, authentication and faults."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import msgspec
from aiohttp import web

from .catalog import INPUT_TYPES
from .config import Faults
from .faults import FaultInjector, format_seconds
from .model import Simulator, UnknownTargetError
from .query import QueryError, parse_list_query

SIMULATOR = web.AppKey("simulator", Simulator)
INJECTOR = web.AppKey("fault_injector", FaultInjector)
PREFIX = web.AppKey("prefix", str)

WAIT_LIMIT_SECONDS = 30.0
"""`POST /v3/workflows/{name}/call?wait=true` blocks at most this long."""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}
_FAULT_MESSAGES = {
    429: "rate limit exceeded, slow down",
    500: "internal server error",
    502: "bad gateway: upstream connection reset",
    503: "service temporarily unavailable",
}


def _json(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")


def error_response(status: int, message: str, details: dict[str, Any] | None = None) -> web.Response:
    """A non-2xx answer with bem's error body `{message, code, details?}`."""
    doc: dict[str, Any] = {"message": message, "code": _ERROR_CODES.get(status, "error")}
    if details:
        doc["details"] = details
    return _json(status, _encode(doc))


def _fault_response(status: int, faults: Faults) -> web.Response:
    response = error_response(status, _FAULT_MESSAGES[status])
    if faults.retry_after is not None and status in (429, 503):
        response.headers["Retry-After"] = format_seconds(faults.retry_after)
    return response


def _endpoint(request: web.Request, prefix: str) -> str:
    route = request.match_info.route
    canonical = route.resource.canonical if route.resource is not None else ""
    if not canonical or request.match_info.http_exception is not None:
        return f"{request.method} (unknown)"
    return f"{route.method} {canonical[len(prefix) :]}"


def _authorized(request: web.Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    given = request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), api_key.encode())


@web.middleware
async def _pipeline(request: web.Request, handler: Any) -> web.StreamResponse:
    """Per request: count it, inject faults, authenticate, answer, maybe truncate the body."""
    app = request.app
    sim = app[SIMULATOR]
    config = sim.config
    faults = config.faults
    endpoint = _endpoint(request, app[PREFIX])
    sim.requests[endpoint] += 1
    if faults.down:
        return _drop(request, sim, endpoint)
    injector = app[INJECTOR]
    decision = injector.decide(faults)
    delay = config.latency + decision.delay
    if delay > 0:
        await asyncio.sleep(delay)
        if faults.down:
            return _drop(request, sim, endpoint)
    response: web.StreamResponse
    if decision.status is not None:
        response = _fault_response(decision.status, faults)
    elif not _authorized(request, config.api_key):
        response = error_response(401, "missing or invalid API key: send it in the x-api-key header")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # the router's 404 and 405
            response = error_response(exc.status, exc.reason)
    if decision.truncate and response.status == 200 and isinstance(response, web.Response):
        body = response.body
        if isinstance(body, bytes) and body:
            response.body = injector.truncate(body)
    sim.responses[(endpoint, response.status)] += 1
    return response


def _drop(request: web.Request, sim: Simulator, endpoint: str) -> web.Response:
    """Close the connection without an answer (the response returned is never sent)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    sim.responses[(endpoint, 0)] += 1
    return web.Response(status=503)


# -- GET --------------------------------------------------------------------------------------


def _list(request: web.Request, *, v2: bool) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        query = parse_list_query(request.query.items())
        records, total = sim.list_calls(query, v2=v2)
    except QueryError as exc:
        return _json(400, _encode(exc.body()))
    rate = sim.config.faults.malformed_rate
    if rate > 0:
        injector = request.app[INJECTOR]
        records = [injector.maybe_corrupt(record, rate) for record in records]
    return _json(200, b'{"calls":[' + b",".join(records) + b'],"totalCount":' + str(total).encode() + b"}")


async def list_calls_v3(request: web.Request) -> web.Response:
    return _list(request, v2=False)


async def list_calls_v2(request: web.Request) -> web.Response:
    return _list(request, v2=True)


def _not_found(call_id: str) -> web.Response:
    return error_response(404, f"call {call_id!r} not found")


def _one_call(request: web.Request, record: bytes | None) -> web.Response:
    call_id = request.match_info["callID"]
    if record is None:
        return _not_found(call_id)
    rate = request.app[SIMULATOR].config.faults.malformed_rate
    if rate > 0:
        record = request.app[INJECTOR].maybe_corrupt(record, rate)
    return _json(200, b'{"call":' + record + b"}")


async def get_call_v3(request: web.Request) -> web.Response:
    return _one_call(request, request.app[SIMULATOR].call_json(request.match_info["callID"]))


async def get_call_v2(request: web.Request) -> web.Response:
    return _one_call(request, request.app[SIMULATOR].v2_call_json(request.match_info["callID"], full=True))


async def get_trace_v3(request: web.Request) -> web.Response:
    call_id = request.match_info["callID"]
    trace = request.app[SIMULATOR].trace_json(call_id)
    if trace is None:
        return _not_found(call_id)
    return _json(200, b'{"trace":' + trace + b"}")


# -- POST -------------------------------------------------------------------------------------


class _BadRequestError(Exception):
    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        doc = _decode(raw)
    except msgspec.DecodeError as exc:
        raise _BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _BadRequestError("request body must be a JSON object")
    return doc


def _optional_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _BadRequestError(f"{key} must be a non-empty string", {"field": key})
    return value


def _input(doc: dict[str, Any], *, required: bool) -> tuple[str | None, int]:
    """(inputType, number of batch files; 0 for a single file) of a call's `input`."""
    value = doc.get("input")
    if value is None:
        if required:
            raise _BadRequestError(
                "input is required: provide exactly one of singleFile or batchFiles", {"field": "input"}
            )
        return None, 0
    if not isinstance(value, dict) or ("singleFile" in value) == ("batchFiles" in value):
        raise _BadRequestError("input must have exactly one of singleFile or batchFiles", {"field": "input"})
    files: Any
    if "singleFile" in value:
        files = [value["singleFile"]]
        batch = 0
    else:
        batch_files = value["batchFiles"]
        files = batch_files.get("inputs") if isinstance(batch_files, dict) else None
        if not isinstance(files, list) or not files:
            raise _BadRequestError("input.batchFiles.inputs must be a non-empty array", {"field": "input"})
        batch = len(files)
    input_type: str | None = None
    for file in files:
        if not isinstance(file, dict):
            raise _BadRequestError("each input file must be an object", {"field": "input"})
        kind = file.get("inputType")
        if kind in ("jfif", "jpg"):
            kind = "jpeg"
        if kind not in INPUT_TYPES:
            raise _BadRequestError(f"unsupported inputType {kind!r}", {"field": "inputType"})
        input_type = input_type or kind
    return input_type, batch


_TARGET_KEYS = ("workflowName", "workflowID", "functionName", "functionID")


async def create_calls_v2(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        body = await _body(request)
        items = body.get("calls", [])
        if not isinstance(items, list):
            raise _BadRequestError("calls must be an array", {"field": "calls"})
        requests: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict):
                raise _BadRequestError("each call must be an object", {"field": "calls"})
            target = {key: _optional_str(item, key) for key in _TARGET_KEYS}
            if not any(target.values()):
                raise _BadRequestError("each call needs a workflowName, workflowID, functionName or functionID")
            sim.resolve(target["workflowName"], target["workflowID"], target["functionName"], target["functionID"])
            input_type, batch = _input(item, required=False)
            requests.append(
                {
                    "workflow_name": target["workflowName"],
                    "workflow_id": target["workflowID"],
                    "function_name": target["functionName"],
                    "function_id": target["functionID"],
                    "reference_id": _optional_str(item, "callReferenceID"),
                    "input_type": input_type,
                    "batch": batch,
                }
            )
    except _BadRequestError as exc:
        return error_response(400, exc.message, exc.details)
    except UnknownTargetError as exc:
        return error_response(404, str(exc.args[0]))
    created = [sim.create_call(**kwargs, v2=True) for kwargs in requests]
    return _json(200, _encode({"calls": created}))


async def call_workflow_v3(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    name = request.match_info["workflowName"]
    try:
        body = await _body(request)
        input_type, batch = _input(body, required=True)
        reference_id = _optional_str(body, "callReferenceID")
        if "metadata" in body and not isinstance(body["metadata"], dict):
            raise _BadRequestError("metadata must be a JSON object", {"field": "metadata"})
        created = sim.create_call(name, reference_id, input_type=input_type, batch=batch)
    except _BadRequestError as exc:
        return error_response(400, exc.message, exc.details)
    except UnknownTargetError as exc:
        return error_response(404, str(exc.args[0]))
    call_id: str = created["callID"]
    if request.query.get("wait", "").lower() not in ("true", "1"):
        return _json(202, _encode({"call": created}))
    # wait=true: block until the call finishes, for at most WAIT_LIMIT_SECONDS
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT_SECONDS
    while sim.status(call_id) not in ("completed", "failed") and loop.time() < deadline:
        await asyncio.sleep(0.05)
    final = sim.status(call_id)
    status = {"completed": 200, "failed": 500}.get(final, 202)
    error = "the call failed: see its errors" if final == "failed" else None
    record = sim.call_json(call_id)
    assert record is not None
    tail = b"}" if error is None else b',"error":' + _encode(error) + b"}"
    return _json(status, b'{"call":' + record + tail)


def create_app(simulator: Simulator, *, prefix: str = "", injector: FaultInjector | None = None) -> web.Application:
    """The aiohttp application serving `simulator` under `prefix` (e.g. `/bem`, or `` for the root)."""
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    app = web.Application(middlewares=[_pipeline], client_max_size=32 * 1024 * 1024)
    app[SIMULATOR] = simulator
    app[INJECTOR] = injector or FaultInjector(simulator.config.seed)
    app[PREFIX] = prefix
    app.router.add_get(prefix + "/v3/calls", list_calls_v3, allow_head=False)
    app.router.add_get(prefix + "/v3/calls/{callID}", get_call_v3, allow_head=False)
    app.router.add_get(prefix + "/v3/calls/{callID}/trace", get_trace_v3, allow_head=False)
    app.router.add_post(prefix + "/v3/workflows/{workflowName}/call", call_workflow_v3)
    app.router.add_get(prefix + "/v2/calls", list_calls_v2, allow_head=False)
    app.router.add_post(prefix + "/v2/calls", create_calls_v2)
    app.router.add_get(prefix + "/v2/calls/{callID}", get_call_v2, allow_head=False)
    return app

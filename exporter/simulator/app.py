"""The simulator's HTTP API (aiohttp): bem's Calls API endpoints, authentication and faults."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import msgspec
from aiohttp import BodyPartReader, web

from .config import Faults
from .create import (
    BadRequestError,
    CallRequest,
    FormFile,
    decode_json,
    v2_calls,
    workflow_call_form,
    workflow_call_json,
)
from .faults import FaultInjector, format_seconds
from .functions import list_functions
from .model import Simulator, UnknownTargetError
from .quality import MALFORMED_BODY, metrics_body
from .query import QueryError, parse_list_query
from .ratelimit import RateLimitKnob, retry_after_header

SIMULATOR = web.AppKey("simulator", Simulator)
INJECTOR = web.AppKey("fault_injector", FaultInjector)
PREFIX = web.AppKey("prefix", str)
RATE_LIMIT = web.AppKey("rate_limit", RateLimitKnob)

WAIT_LIMIT_SECONDS = 30.0
"""`POST /v3/workflows/{name}/call?wait=true` blocks at most this long."""

_encode = msgspec.json.Encoder().encode

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
    sim.request_starts.append(time.monotonic())
    if faults.down:
        return _drop(request, sim, endpoint)
    limited = _rate_limited(request, faults)
    if limited is not None:
        sim.responses[(endpoint, 429)] += 1
        return limited
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


def _rate_limited(request: web.Request, faults: Faults) -> web.Response | None:
    """The 429 of a request past its key's token bucket, or None when it may go on."""
    wait = request.app[RATE_LIMIT].take(faults.rate_limit, faults.rate_limit_burst, request.headers.get("x-api-key"))
    if wait is None:
        return None
    response = error_response(429, _FAULT_MESSAGES[429])
    if faults.rate_limit_retry_after:
        response.headers["Retry-After"] = retry_after_header(wait)
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


async def list_functions_route(request: web.Request) -> web.Response:
    return _quality_answer(request, metrics=False)


async def function_metrics(request: web.Request) -> web.Response:
    return _quality_answer(request, metrics=True)


def _quality_answer(request: web.Request, *, metrics: bool) -> web.Response:
    """`GET /v3/functions` (`functions.py`) or `GET /v3/functions/metrics` (`quality.py`), with
    the quality knobs' faults."""
    sim = request.app[SIMULATOR]
    knobs = sim.config.quality
    if knobs.status is not None:
        return error_response(knobs.status, _QUALITY_REFUSALS.get(knobs.status, "request failed"))
    if knobs.malformed:
        return _json(200, MALFORMED_BODY)
    items = request.query.items()
    try:
        body = metrics_body(items, knobs, sim.now_ms() / 1000) if metrics else list_functions(items)
    except QueryError as exc:
        return _json(400, _encode(exc.body()))
    return _json(200, _encode(body))


_QUALITY_REFUSALS = {
    **_FAULT_MESSAGES,
    404: "function metrics are not enabled for this environment",
}


# -- POST -------------------------------------------------------------------------------------


def _is_multipart(request: web.Request) -> bool:
    return request.content_type.startswith("multipart/")


async def _form(request: web.Request) -> tuple[dict[str, str], list[FormFile]]:
    """The fields and the `file`/`files` parts of a multipart body (file bytes only measured)."""
    fields: dict[str, str] = {}
    files: list[FormFile] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name in ("file", "files"):
            files.append(FormFile(part.filename or "", len(await part.read())))
        else:
            fields[part.name] = await part.text()
    return fields, files


async def _workflow_request(request: web.Request) -> tuple[CallRequest, bool]:
    """The call a v3 workflow-call request asks for, and whether it asks to wait."""
    name = request.match_info["workflowName"]
    wait = request.query.get("wait", "")
    if _is_multipart(request):
        fields, files = await _form(request)
        wait = fields.get("wait", wait)
        return workflow_call_form(name, fields, files), wait.lower() in ("true", "1")
    return workflow_call_json(name, decode_json(await request.read())), wait.lower() in ("true", "1")


def _canary_refusal(faults: Faults, requests: list[CallRequest]) -> web.Response | None:
    """The answer `Faults.canary_reject` asks for, when a request creates a canary call."""
    status = faults.canary_reject
    if status is None or not any(_is_canary(faults, r) for r in requests):
        return None
    if status == 401:
        return error_response(401, "missing or invalid API key: send it in the x-api-key header")
    if status in _FAULT_MESSAGES:
        return _fault_response(status, faults)
    return error_response(status, "the call could not be created")


def _is_canary(faults: Faults, call: CallRequest) -> bool:
    return call.reference_id is not None and call.reference_id.startswith(faults.canary_prefix)


def _submit(sim: Simulator, call: CallRequest, *, v2: bool) -> tuple[dict[str, Any], bool]:
    faults = sim.config.faults
    return sim.submit(
        call.workflow_name,
        call.reference_id,
        v2=v2,
        workflow_id=call.workflow_id,
        function_name=call.function_name,
        function_id=call.function_id,
        input_type=call.input_type,
        batch=call.batch,
        outcome=faults.canary_outcome if _is_canary(faults, call) else "normal",
    )


async def create_calls_v2(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        calls = v2_calls(decode_json(await request.read()))
        for call in calls:
            sim.resolve(call.workflow_name, call.workflow_id, call.function_name, call.function_id)
    except BadRequestError as exc:
        return error_response(400, exc.message, exc.details)
    except UnknownTargetError as exc:
        return error_response(404, str(exc.args[0]))
    refusal = _canary_refusal(sim.config.faults, calls)
    if refusal is not None:
        return refusal
    created = [_submit(sim, call, v2=True)[0] for call in calls]
    return _json(200, _encode({"calls": created}))


async def call_workflow_v3(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        call, wait = await _workflow_request(request)
        sim.resolve(call.workflow_name)
    except BadRequestError as exc:
        return error_response(400, exc.message, exc.details)
    except UnknownTargetError as exc:
        return error_response(404, str(exc.args[0]))
    refusal = _canary_refusal(sim.config.faults, [call])
    if refusal is not None:
        return refusal
    doc, created = _submit(sim, call, v2=False)
    if not wait:
        return _json(202 if created else 200, _encode({"call": doc}))
    return await _waited(sim, doc["callID"])


async def _waited(sim: Simulator, call_id: str) -> web.Response:
    """`wait=true`: the call once it finished (200, or 500 when it failed), or still running
    (202) after WAIT_LIMIT_SECONDS."""
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


async def set_canary_faults(request: web.Request) -> web.Response:
    """`POST /_simulator/canary` `{"outcome": "normal"|"fail"|"hang", "reject": <status>|null}`:
    the canary faults of a simulator running in another process (demo, compose). Not a bem
    endpoint; answers the faults now in force."""
    faults = request.app[SIMULATOR].config.faults
    try:
        doc = decode_json(await request.read())
        changed = Faults(
            canary_outcome=doc.get("outcome", faults.canary_outcome),
            canary_reject=doc.get("reject", faults.canary_reject),
            canary_prefix=faults.canary_prefix,
        )
        changed.validate()
    except (BadRequestError, ValueError, TypeError):
        return error_response(400, 'expected {"outcome": "normal"|"fail"|"hang", "reject": <HTTP error status>|null}')
    faults.canary_outcome, faults.canary_reject = changed.canary_outcome, changed.canary_reject
    return _json(200, _encode({"outcome": faults.canary_outcome, "reject": faults.canary_reject}))


def create_app(simulator: Simulator, *, prefix: str = "", injector: FaultInjector | None = None) -> web.Application:
    """The aiohttp application serving `simulator` under `prefix` (e.g. `/bem`, or `` for the root)."""
    prefix = prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    app = web.Application(middlewares=[_pipeline], client_max_size=32 * 1024 * 1024)
    app[SIMULATOR] = simulator
    app[INJECTOR] = injector or FaultInjector(simulator.config.seed)
    app[PREFIX] = prefix
    app[RATE_LIMIT] = RateLimitKnob()
    app.router.add_get(prefix + "/v3/calls", list_calls_v3, allow_head=False)
    app.router.add_get(prefix + "/v3/calls/{callID}", get_call_v3, allow_head=False)
    app.router.add_get(prefix + "/v3/calls/{callID}/trace", get_trace_v3, allow_head=False)
    app.router.add_post(prefix + "/v3/workflows/{workflowName}/call", call_workflow_v3)
    # The function listing of `functions.py`, with the quality knobs' faults.
    app.router.add_get(prefix + "/v3/functions", list_functions_route, allow_head=False)
    app.router.add_get(prefix + "/v3/functions/metrics", function_metrics, allow_head=False)
    app.router.add_get(prefix + "/v2/calls", list_calls_v2, allow_head=False)
    app.router.add_post(prefix + "/v2/calls", create_calls_v2)
    app.router.add_get(prefix + "/v2/calls/{callID}", get_call_v2, allow_head=False)
    app.router.add_post(prefix + "/_simulator/canary", set_canary_faults)
    # Imported here: the account endpoints answer with this module's error bodies.
    from .account_api import add_account_routes

    add_account_routes(app, prefix, simulator)
    return app

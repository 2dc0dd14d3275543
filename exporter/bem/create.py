"""Creating one bem call: the request the canary sends, with retries and clear errors.

v3: `POST /v3/workflows/{workflowName}/call` with the JSON body bem-sdk's `workflows.call`
sends (`input.singleFile.inputContent` base64, `inputType`, `callReferenceID`), answered 202
with `{call}`. v2: `POST /v2/calls` with `{calls: [...]}` of the same item shape, answered 200
with `{calls}`.

Retrying a create is safe because of the `callReferenceID`: bem returns the call it already
created for a reference it has seen, so a request whose answer was lost does not create a
second call. Transport errors, 429 and 5xx are retried with the shared backoff (a
`Retry-After` is honoured up to the backoff's cap); any other answer is final.

Errors name the endpoint and the HTTP status, never the document, the URL's query or the key.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx
import msgspec

from exporter.backoff import Backoff
from exporter.pipeline import NullObserver, Observer

ApiVersion = Literal["v3", "v2"]

V3_ENDPOINT = "POST /v3/workflows/{workflowName}/call"
V2_ENDPOINT = "POST /v2/calls"
ATTEMPTS = 4
"""Tries per create request (the first and three retries)."""


INPUT_TYPES = frozenset(
    {
        *("csv", "docx", "email", "heic", "heif", "html", "jpeg", "json", "m4a", "mov", "mp3"),
        *("mp4", "pdf", "png", "pptx", "text", "wav", "webp", "xls", "xlsx", "xml"),
    }
)
"""bem's `inputType` values."""
_EXTENSION_ALIASES = {"jpg": "jpeg", "jfif": "jpeg", "txt": "text", "htm": "html", "eml": "email"}


def input_type_of(filename: str) -> str | None:
    """The `inputType` a file's extension names (`invoice.PDF` -> `pdf`), or None."""
    _, dot, extension = filename.rpartition(".")
    kind = _EXTENSION_ALIASES.get(extension.lower(), extension.lower()) if dot else ""
    return kind if kind in INPUT_TYPES else None


def default_backoff() -> Backoff:
    return Backoff(initial=1.0, cap=30.0)


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """One call to create. `document` is the file's bytes; they go into the request body only."""

    workflow_name: str
    reference_id: str
    document: bytes
    input_type: str

    def __repr__(self) -> str:  # keeps the document out of any log or traceback
        return f"CreateRequest(workflow_name={self.workflow_name!r}, reference_id={self.reference_id!r})"


@dataclass(frozen=True, slots=True)
class CreatedCall:
    call_id: str
    reference_id: str


class CreateError(Exception):
    """The call could not be created. `status` is the last HTTP status, None when no answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Created(msgspec.Struct):
    call_id: str = msgspec.field(name="callID")
    reference_id: str | None = msgspec.field(name="callReferenceID", default=None)


class _V3Answer(msgspec.Struct):
    call: _Created


class _V2Answer(msgspec.Struct):
    calls: list[_Created]


_V3_DECODER = msgspec.json.Decoder(_V3Answer)
_V2_DECODER = msgspec.json.Decoder(_V2Answer)


def _file(request: CreateRequest) -> dict[str, str]:
    return {"inputContent": base64.b64encode(request.document).decode("ascii"), "inputType": request.input_type}


def request_body(request: CreateRequest, version: ApiVersion) -> tuple[str, bytes]:
    """(path relative to the API base URL, JSON body) of the create request."""
    call = {"callReferenceID": request.reference_id, "input": {"singleFile": _file(request)}}
    if version == "v2":
        return "v2/calls", msgspec.json.encode({"calls": [{"workflowName": request.workflow_name, **call}]})
    return f"v3/workflows/{quote(request.workflow_name, safe='')}/call", msgspec.json.encode(call)


def _created(body: bytes, version: ApiVersion, status: int) -> CreatedCall:
    try:
        calls = [_V3_DECODER.decode(body).call] if version == "v3" else _V2_DECODER.decode(body).calls
    except msgspec.DecodeError:
        raise CreateError(f"HTTP {status} with a body that is not a created call", status) from None
    if len(calls) != 1:
        raise CreateError(f"HTTP {status} with {len(calls)} calls instead of one", status)
    return CreatedCall(calls[0].call_id, calls[0].reference_id or "")


def _retry_after(response: httpx.Response, cap: float) -> float | None:
    try:
        return min(max(float(response.headers.get("retry-after", "")), 0.0), cap)
    except ValueError:
        return None


def _final_error(status: int) -> str:
    if status == 401:
        return "HTTP 401: the API key was rejected (check BEM_API_KEY)"
    if status == 404:
        return "HTTP 404: no such workflow (check BEM_CANARY_WORKFLOW, BEM_API_URL and BEM_API_VERSION)"
    return f"HTTP {status}: the create request was refused"


def _transport_reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    if isinstance(error, httpx.ConnectError):
        return "cannot connect"
    return f"transport error ({type(error).__name__})"


async def create_call(
    http: httpx.AsyncClient,
    request: CreateRequest,
    version: ApiVersion = "v3",
    *,
    observer: Observer | None = None,
    attempts: int = ATTEMPTS,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> CreatedCall:
    """Create the call over `http` (whose base URL and `x-api-key` header are bem's). Raises
    CreateError once the request was refused, or failed `attempts` times."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    path, body = request_body(request, version)
    endpoint = V2_ENDPOINT if version == "v2" else V3_ENDPOINT
    watcher = observer or NullObserver()
    waits = backoff or default_backoff()
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        try:
            response = await http.post(path, content=body, headers={"content-type": "application/json"})
        except httpx.TransportError as error:
            watcher.api_request(endpoint, "error", time.monotonic() - started)
            failure = CreateError(f"{endpoint}: {_transport_reason(error)} (after {attempt} attempts)")
            wait = waits.next()
        else:
            status = response.status_code
            watcher.api_request(endpoint, str(status), time.monotonic() - started)
            if 200 <= status < 300:
                return _created(response.content, version, status)
            if status != 429 and status < 500:
                raise CreateError(f"{endpoint}: {_final_error(status)}", status)
            failure = CreateError(f"{endpoint}: HTTP {status} (after {attempt} attempts)", status)
            drawn = waits.next()
            wait = _retry_after(response, waits.cap) or drawn
        if attempt < attempts:
            await sleep(wait)
    raise failure

"""Creating one bem call: the request the canary sends and the answer it reads.

v3: `POST /v3/workflows/{workflowName}/call` with the JSON body bem-sdk's `workflows.call`
sends (`input.singleFile.inputContent` base64, `inputType`, `callReferenceID`), answered 202
with `{call}`. v2: `POST /v2/calls` with `{calls: [...]}` of the same item shape, answered 200
with `{calls}`.

The HTTP exchange (limits, retries, Retry-After, hooks) is the API client's
(`BemClient.create_call`); this module only knows the shapes. Retrying a create is safe because
of the `callReferenceID`: bem returns the call it already created for a reference it has seen.
Errors name the endpoint and the HTTP status, never the document, the URL's query or the key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import msgspec

from exporter.bem.decode import DecodeError

ApiVersion = Literal["v3", "v2"]

V3_ENDPOINT = "POST /v3/workflows/{workflowName}/call"
V2_ENDPOINT = "POST /v2/calls"

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


def decode_created(body: bytes, version: ApiVersion) -> CreatedCall:
    """The call bem created, from a 2xx answer; DecodeError for a body that is not one."""
    try:
        calls = [_V3_DECODER.decode(body).call] if version == "v3" else _V2_DECODER.decode(body).calls
    except msgspec.DecodeError:
        raise DecodeError("a body that is not a created call") from None
    if len(calls) != 1:
        raise DecodeError(f"{len(calls)} calls instead of one")
    return CreatedCall(calls[0].call_id, calls[0].reference_id or "")


def refusal(status: int) -> str:
    """What a final 4xx answer to a create request means."""
    if status == 401:
        return "HTTP 401: the API key was rejected (check BEM_API_KEY)"
    if status == 404:
        return "HTTP 404: no such workflow (check BEM_CANARY_WORKFLOW, BEM_API_URL and BEM_API_VERSION)"
    return f"HTTP {status}: the create request was refused"

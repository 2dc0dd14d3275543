"""The bodies of bem's two create-call endpoints, validated as bem does; no HTTP here.

`POST /v3/workflows/{workflowName}/call` takes either JSON (`input.singleFile` or
`input.batchFiles.inputs[*]`, each `{inputContent: <base64>, inputType}`, plus
`callReferenceID`, `metadata`, `bucket`), as bem-sdk's `workflows.call` sends it, or a
multipart form (the file in `file`, or several in `files`; `inputType`, `callReferenceID`,
`metadata` and `wait` as form fields; without `inputType` the file name's extension says it).
`POST /v2/calls` takes `{calls: [...]}`, each naming a workflow or function by name or ID, with
the same `input` (optional there) and `callReferenceID`.

The document bytes are checked (valid, non-empty base64) and then dropped: the simulator keeps
only the input type and the number of files, so no response can echo a document.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from .catalog import INPUT_TYPES

METADATA_LIMIT_BYTES = 4096
"""`metadata` larger than this (encoded as JSON) is refused, as bem documents."""

_TARGET_KEYS = ("workflowName", "workflowID", "functionName", "functionID")
_ALIASES = {"jfif": "jpeg", "jpg": "jpeg", "txt": "text", "htm": "html", "yml": "text"}
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class BadRequestError(Exception):
    """A create request bem would refuse with 400; `field` names the offending part."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = {"field": field} if field else None


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One call to create: its target, reference and the shape of its input."""

    workflow_name: str | None = None
    workflow_id: str | None = None
    function_name: str | None = None
    function_id: str | None = None
    reference_id: str | None = None
    input_type: str | None = None
    batch: int = 0
    """Number of files of a batch input; 0 for a single file (or none)."""


def decode_json(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (an empty body is an empty object)."""
    if not raw:
        return {}
    try:
        doc = _decode(raw)
    except msgspec.DecodeError:
        raise BadRequestError("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequestError("request body must be a JSON object")
    return doc


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{key} must be a non-empty string", key)
    return value


def input_type(value: object, field: str) -> str:
    """A valid `inputType`, aliases normalized (`jfif` and `jpg` are `jpeg`)."""
    kind = _ALIASES.get(value, value) if isinstance(value, str) else value
    if not isinstance(kind, str) or kind not in INPUT_TYPES:
        raise BadRequestError(f"unsupported inputType {value!r}", field)
    return kind


def _check_content(value: object, field: str) -> None:
    if not isinstance(value, str) or not value:
        raise BadRequestError("inputContent is required: the file's content, base64-encoded", field)
    try:
        decoded = binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise BadRequestError("inputContent is not valid base64", field) from None
    if not decoded:
        raise BadRequestError("inputContent is empty", field)


def _file(value: object, field: str) -> str:
    """The input type of one `{inputContent, inputType, itemReferenceID?}` file object."""
    if not isinstance(value, dict):
        raise BadRequestError("each input file must be an object", field)
    _check_content(value.get("inputContent"), f"{field}.inputContent")
    if "itemReferenceID" in value:
        _optional_str(value, "itemReferenceID")
    return input_type(value.get("inputType"), f"{field}.inputType")


def parse_input(doc: Mapping[str, Any], *, required: bool) -> tuple[str | None, int]:
    """(inputType, number of batch files; 0 for a single file) of a call's `input`."""
    value = doc.get("input")
    if value is None:
        if required:
            raise BadRequestError("input is required: provide exactly one of singleFile or batchFiles", "input")
        return None, 0
    if not isinstance(value, dict) or ("singleFile" in value) == ("batchFiles" in value):
        raise BadRequestError("input must have exactly one of singleFile or batchFiles", "input")
    if "singleFile" in value:
        return _file(value["singleFile"], "input.singleFile"), 0
    batch = value["batchFiles"]
    files = batch.get("inputs") if isinstance(batch, dict) else None
    if not isinstance(files, list) or not files:
        raise BadRequestError("input.batchFiles.inputs must be a non-empty array", "input.batchFiles.inputs")
    types = [_file(file, f"input.batchFiles.inputs[{k}]") for k, file in enumerate(files)]
    return types[0], len(files)


def _check_metadata(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise BadRequestError("metadata must be a JSON object", "metadata")
    if len(_encode(value)) > METADATA_LIMIT_BYTES:
        raise BadRequestError(f"metadata must be at most {METADATA_LIMIT_BYTES} bytes", "metadata")


def workflow_call_json(workflow_name: str, doc: Mapping[str, Any]) -> CallRequest:
    """The JSON body of `POST /v3/workflows/{workflowName}/call`."""
    kind, batch = parse_input(doc, required=True)
    _check_metadata(doc.get("metadata"))
    _optional_str(doc, "bucket")
    return CallRequest(
        workflow_name=workflow_name,
        reference_id=_optional_str(doc, "callReferenceID"),
        input_type=kind,
        batch=batch,
    )


@dataclass(frozen=True, slots=True)
class FormFile:
    """One file part of a multipart request: its name and size (the bytes are not kept)."""

    filename: str
    size: int


def _type_of_file(file: FormFile, declared: str | None) -> str:
    if declared is not None:
        return input_type(declared, "inputType")
    _, dot, extension = file.filename.rpartition(".")
    if not dot:
        raise BadRequestError("inputType is required when the file name has no extension", "inputType")
    return input_type(extension.lower(), "inputType")


def workflow_call_form(workflow_name: str, fields: Mapping[str, str], files: list[FormFile]) -> CallRequest:
    """The multipart form of `POST /v3/workflows/{workflowName}/call` (`file` or `files` parts)."""
    if not files:
        raise BadRequestError("attach the document in a `file` (or `files`) part", "file")
    if any(file.size == 0 for file in files):
        raise BadRequestError("an attached file is empty", "file")
    if "metadata" in fields:
        try:
            _check_metadata(_decode(fields["metadata"]))
        except msgspec.DecodeError:
            raise BadRequestError("metadata must be a JSON object", "metadata") from None
    kinds = [_type_of_file(file, fields.get("inputType")) for file in files]
    return CallRequest(
        workflow_name=workflow_name,
        reference_id=_optional_str(fields, "callReferenceID"),
        input_type=kinds[0],
        batch=len(files) if len(files) > 1 else 0,
    )


def _v2_item(item: object) -> CallRequest:
    if not isinstance(item, dict):
        raise BadRequestError("each call must be an object", "calls")
    target = {key: _optional_str(item, key) for key in _TARGET_KEYS}
    if not any(target.values()):
        raise BadRequestError("each call needs a workflowName, workflowID, functionName or functionID", "calls")
    kind, batch = parse_input(item, required=False)
    return CallRequest(
        workflow_name=target["workflowName"],
        workflow_id=target["workflowID"],
        function_name=target["functionName"],
        function_id=target["functionID"],
        reference_id=_optional_str(item, "callReferenceID"),
        input_type=kind,
        batch=batch,
    )


def v2_calls(doc: Mapping[str, Any]) -> list[CallRequest]:
    """The body of `POST /v2/calls`: one request per item of `calls`."""
    items = doc.get("calls", [])
    if not isinstance(items, list):
        raise BadRequestError("calls must be an array", "calls")
    return [_v2_item(item) for item in items]

"""Parameters of `GET /v3/calls` and `GET /v2/calls`, parsed and validated (HTTP-agnostic)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .catalog import CALL_TYPES, STATUSES

MAX_LIMIT = 100
DEFAULT_LIMIT = 50

ARRAY_PARAMS = (
    "callIDs",
    "referenceIDs",
    "workflowIDs",
    "workflowNames",
    "statuses",
    "callTypes",
    "functionIDs",
    "functionNames",
)


class QueryError(ValueError):
    """A bad request parameter: answered 400 with `{message, code, details}`."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "code": "invalid_parameter", "details": {"parameter": self.parameter}}


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int = DEFAULT_LIMIT
    descending: bool = False
    starting_after: str | None = None
    ending_before: str | None = None
    call_ids: frozenset[str] | None = None
    reference_ids: frozenset[str] | None = None
    workflow_ids: frozenset[str] | None = None
    workflow_names: frozenset[str] | None = None
    statuses: frozenset[str] | None = None
    call_types: frozenset[str] | None = None
    function_ids: frozenset[str] | None = None
    function_names: frozenset[str] | None = None
    reference_substring: str | None = None
    """Lower-cased `referenceIDSubstring`."""


_FIELDS = {
    "callIDs": "call_ids",
    "referenceIDs": "reference_ids",
    "workflowIDs": "workflow_ids",
    "workflowNames": "workflow_names",
    "statuses": "statuses",
    "callTypes": "call_types",
    "functionIDs": "function_ids",
    "functionNames": "function_names",
}


def parse_limit(raw: str | None) -> int:
    """The `limit` parameter of a listing: 1..100, DEFAULT_LIMIT when absent."""
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise QueryError("limit must be an integer between 1 and 100", "limit")
    return int(raw)


def parse_list_query(items: Iterable[tuple[str, str]]) -> ListQuery:
    """Parse query parameters; arrays may be comma-separated and/or repeated (`statuses=a,b&statuses=c`)."""
    arrays: dict[str, set[str]] = {}
    scalars: dict[str, str] = {}
    for key, value in items:
        name = key[:-2] if key.endswith("[]") else key
        if name in _FIELDS:
            arrays.setdefault(name, set()).update(v.strip() for v in value.split(",") if v.strip())
        else:
            scalars[name] = value

    limit = DEFAULT_LIMIT
    if "limit" in scalars:
        try:
            limit = int(scalars["limit"])
        except ValueError:
            raise QueryError("limit must be an integer between 1 and 100", "limit") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise QueryError("limit must be an integer between 1 and 100", "limit")

    order = scalars.get("sortOrder", "asc") or "asc"
    if order not in ("asc", "desc"):
        raise QueryError("sortOrder must be 'asc' or 'desc'", "sortOrder")

    starting_after = scalars.get("startingAfter") or None
    ending_before = scalars.get("endingBefore") or None
    if starting_after and ending_before:
        raise QueryError("startingAfter and endingBefore cannot be used together", "startingAfter")

    for status in arrays.get("statuses", ()):
        if status not in STATUSES:
            raise QueryError(f"unknown status {status!r}: expected one of {', '.join(STATUSES)}", "statuses")
    for call_type in arrays.get("callTypes", ()):
        if call_type not in CALL_TYPES:
            raise QueryError(f"unknown callType {call_type!r}: expected one of {', '.join(CALL_TYPES)}", "callTypes")

    substring = scalars.get("referenceIDSubstring") or None
    filters: dict[str, Any] = {_FIELDS[name]: frozenset(values) for name, values in arrays.items() if values}
    return ListQuery(
        limit=limit,
        descending=order == "desc",
        starting_after=starting_after,
        ending_before=ending_before,
        reference_substring=substring.lower() if substring else None,
        **filters,
    )

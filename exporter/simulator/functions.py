"""The account's functions as `GET /v3/functions` shows them (bem-sdk's `Function` union); no HTTP.

Each function's document carries the fields bem-sdk requires of its type, with placeholder
settings (no schema, prompt or document of the simulated account says anything), and
`usedInWorkflows`. A function of bem's legacy type `route` shows classify's fields (bem-sdk's
union has no route member). The listing filters on `functionIDs`, `functionNames`, `workflowIDs`,
`workflowNames` and `types`, in functionID order with `startingAfter`/`endingBefore` cursors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .catalog import FUNCTIONS_BY_NAME, WORKFLOWS, Function, Node, Workflow
from .query import QueryError, parse_limit

_SCHEMA = {"type": "object", "properties": {"total": {"type": "number"}, "vendor": {"type": "string"}}}
_ARRAYS = {
    "functionIDs": "ids",
    "functionNames": "names",
    "workflowIDs": "workflow_ids",
    "workflowNames": "workflow_names",
    "types": "types",
}


def _nodes(node: Node) -> Iterator[Node]:
    yield node
    for child in (*node.next, *(outlet.node for outlet in node.outlets), node.per_item, node.join):
        if child is not None:
            yield from _nodes(child)


def _functions_of(workflow: Workflow) -> set[str]:
    return {node.function.name for node in _nodes(workflow.root)}


USED_IN: dict[str, list[Workflow]] = {
    name: [w for w in WORKFLOWS if name in _functions_of(w)] for name in FUNCTIONS_BY_NAME
}
"""Function name -> the workflows whose DAG calls it."""

_SCHEMA_FIELDS = {"outputSchema": _SCHEMA, "outputSchemaName": "Document"}
_BY_TYPE: dict[str, dict[str, Any]] = {
    "transform": {"emailAddress": "", "tabularChunkingEnabled": False, **_SCHEMA_FIELDS},
    "extract": {"enableBoundingBoxes": False, "preCount": False, **_SCHEMA_FIELDS},
    "analyze": {"enableBoundingBoxes": False, "preCount": False, **_SCHEMA_FIELDS},
    "classify": {"classifications": [{"name": "other"}], "description": "", "emailAddress": ""},
    "route": {"classifications": [{"name": "other"}], "description": "", "emailAddress": ""},
    "send": {"destinationType": "webhook"},
    "split": {"splitType": "print_page"},
    "join": {"description": "", "joinType": "standard", **_SCHEMA_FIELDS},
    "payload_shaping": {"shapingSchema": "{}"},
    "enrich": {"config": {"steps": [{"sourceField": "/reference", "targetField": "/policy"}]}},
}


def function_doc(function: Function) -> dict[str, Any]:
    """One function as bem-sdk's `Function` of its type."""
    doc: dict[str, Any] = {
        "functionID": function.id,
        "functionName": function.name,
        "type": function.type,
        "versionNum": function.version,
        "displayName": function.display,
        **_BY_TYPE.get(function.type, {}),
    }
    if "emailAddress" in doc:
        doc["emailAddress"] = f"{function.name}@bem-sim.example"
    doc["usedInWorkflows"] = [
        {
            "workflowID": w.id,
            "workflowName": w.name,
            "currentVersionNum": w.versions[-1],
            "usedInWorkflowVersionNums": list(w.versions),
        }
        for w in USED_IN[function.name]
    ]
    return doc


def list_functions(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The body of `GET /v3/functions` for these query parameters; QueryError for a bad one."""
    arrays, scalars = _split(items)
    limit = parse_limit(scalars.get("limit"))
    chosen = sorted((f for f in FUNCTIONS_BY_NAME.values() if _matches(f, arrays)), key=lambda f: f.id)
    if scalars.get("sortOrder", "asc") == "desc":
        chosen.reverse()
    total = len(chosen)
    page = _after(chosen, scalars.get("startingAfter"), scalars.get("endingBefore"), limit)
    return {"functions": [function_doc(f) for f in page], "totalCount": total}


def _split(items: Iterable[tuple[str, str]]) -> tuple[dict[str, set[str]], dict[str, str]]:
    arrays: dict[str, set[str]] = {}
    scalars: dict[str, str] = {}
    for key, value in items:
        name = key.removesuffix("[]")
        if name in _ARRAYS:
            arrays.setdefault(_ARRAYS[name], set()).update(v.strip() for v in value.split(",") if v.strip())
        else:
            scalars[name] = value
    return arrays, scalars


def _matches(function: Function, arrays: dict[str, set[str]]) -> bool:
    workflows = USED_IN[function.name]
    tests = {
        "ids": lambda wanted: function.id in wanted,
        "names": lambda wanted: function.name in wanted,
        "types": lambda wanted: function.type in wanted,
        "workflow_ids": lambda wanted: any(w.id in wanted for w in workflows),
        "workflow_names": lambda wanted: any(w.name in wanted for w in workflows),
    }
    return all(tests[name](wanted) for name, wanted in arrays.items())


def _after(chosen: list[Function], starting_after: str | None, ending_before: str | None, limit: int) -> list[Function]:
    ids = [f.id for f in chosen]
    for cursor, parameter in ((starting_after, "startingAfter"), (ending_before, "endingBefore")):
        if cursor and cursor not in ids:
            raise QueryError(f"{parameter}: no function with ID {cursor!r}", parameter)
    if starting_after:
        return chosen[ids.index(starting_after) + 1 :][:limit]
    if ending_before:
        return chosen[: ids.index(ending_before)][-limit:]
    return chosen[:limit]

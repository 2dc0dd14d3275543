"""bem's function quality metrics, simulated: `GET /v3/functions` and `GET /v3/functions/metrics`.

Every function of the catalogue has a quality profile drawn from its name (so every run and
every process agree on it) and counts that grow with the clock: results, labeled results, and a
confusion matrix (tp, fp, tn, fn) whose accuracy is the profile's, less any drift a test or the
demo started (`QualityKnobs.start_drift`). The four ratios are computed from the counts, as bem
computes them, and are null where their denominator is 0: every function of a type bem does not
evaluate (split, route, send, ...) and `UNLABELED` (results, but nobody labels them).

Both endpoints page like bem's other v3 listings: `limit` (1..100, default 50), a `functionID`
as cursor (`startingAfter`, `endingBefore`), `sortOrder`; filters `functionIDs`,
`functionNames`, `types`, `workflowNames`. The metrics items carry no `functionID` (as in
bem-sdk's `FunctionGetMetricsResponse`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import FUNCTIONS_BY_NAME, WORKFLOWS, Function, Node
from .query import DEFAULT_LIMIT, MAX_LIMIT, QueryError

EVALUATED_TYPES = frozenset({"extract", "transform", "analyze", "join", "classify"})
"""Function types whose results can be labeled; the others report no labeled result."""
UNLABELED = "extract-health-claim"
"""An evaluated function whose results nobody labels: results, but null ratios."""
_ARRAYS = {"functionIDs", "functionNames", "types", "workflowNames"}


@dataclass
class QualityKnobs:
    """What tests and the demo change while the simulator runs (mutable, like `Faults`)."""

    drift_per_hour: dict[str, float] = field(default_factory=dict)
    """Function name -> accuracy lost per hour (0.06: six points an hour), from `drift_since`."""
    drift_since: dict[str, float] = field(default_factory=dict)
    labeling_stopped: dict[str, float] = field(default_factory=dict)
    """Function name -> when its labeling stopped: its labeled count stays, results grow."""
    hidden: set[str] = field(default_factory=set)
    """Functions left out of both endpoints, as if deleted."""
    garbled: set[str] = field(default_factory=set)
    """Functions whose metrics item comes out undecodable (`metrics` is not an object)."""
    status: int | None = None
    """When set, both endpoints answer this HTTP status with an error body (404: an account
    without the feature; 429; 500)."""
    malformed: bool = False
    """When True, both endpoints answer 200 with a body that is not JSON."""
    started: float | None = None
    """When the counts started growing: the first answer of the metrics endpoint."""

    def start_drift(self, function_name: str, per_hour: float, now: float) -> None:
        """From `now` on, `function_name` loses `per_hour` of accuracy each hour (down to 0)."""
        self.drift_per_hour[function_name] = per_hour
        self.drift_since[function_name] = now

    def stop_labeling(self, function_name: str, now: float) -> None:
        self.labeling_stopped[function_name] = now


@dataclass(frozen=True, slots=True)
class Profile:
    """A function's steady quality, drawn from its name."""

    accuracy: float
    positive_share: float
    """Share of the correct labels that are true positives."""
    false_positive_share: float
    """Share of the errors that are false positives."""
    results: int
    """Results at the simulator's start."""
    per_hour: float
    """New results per hour."""
    labeled_share: float


def profile(function: Function) -> Profile:
    """The quality profile of `function` (the same in every process)."""
    draws = [b / 255 for b in hashlib.sha256(f"quality:{function.name}".encode()).digest()[:6]]
    evaluated = function.type in EVALUATED_TYPES and function.name != UNLABELED
    return Profile(
        accuracy=0.88 + 0.09 * draws[0],
        positive_share=0.55 + 0.3 * draws[1],
        false_positive_share=0.3 + 0.4 * draws[2],
        results=int(2000 + 8000 * draws[3]),
        per_hour=600 + 2400 * draws[4],
        labeled_share=(0.05 + 0.1 * draws[5]) if evaluated else 0.0,
    )


@dataclass(frozen=True, slots=True)
class Counts:
    results: int
    labeled: int
    tp: int
    fp: int
    tn: int
    fn: int


def counts(function: Function, knobs: QualityKnobs, elapsed: float, now: float) -> Counts:
    """The function's counts `elapsed` seconds after the simulator started, at epoch `now`."""
    shape = profile(function)
    results = shape.results + int(shape.per_hour * elapsed / 3600)
    labeled_results = results
    stopped = knobs.labeling_stopped.get(function.name)
    if stopped is not None:
        labeled_results = shape.results + int(shape.per_hour * max(0.0, elapsed - (now - stopped)) / 3600)
    labeled = int(labeled_results * shape.labeled_share)
    correct = round(labeled * _accuracy(function.name, shape, knobs, now))
    errors = labeled - correct
    tp = round(correct * shape.positive_share)
    fp = round(errors * shape.false_positive_share)
    return Counts(results, labeled, tp, fp, correct - tp, errors - fp)


def _accuracy(name: str, shape: Profile, knobs: QualityKnobs, now: float) -> float:
    per_hour = knobs.drift_per_hour.get(name, 0.0)
    since = knobs.drift_since.get(name, now)
    return max(0.0, shape.accuracy - per_hour * max(0.0, now - since) / 3600)


def ratios(c: Counts) -> dict[str, float | None]:
    """Accuracy, precision, recall and F1 of the counts, null where undefined (0/0)."""
    return {
        "accuracy": _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
        "precision": _ratio(c.tp, c.tp + c.fp),
        "recall": _ratio(c.tp, c.tp + c.fn),
        "f1Score": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
    }


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def metrics_item(function: Function, c: Counts) -> dict[str, Any]:
    """One item of `GET /v3/functions/metrics`, as bem-sdk's `Function` model has it."""
    metrics: dict[str, Any] = {**ratios(c), "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn}
    return {
        "functionName": function.name,
        "metrics": metrics,
        "totalResults": c.results,
        "totalLabeledResults": c.labeled,
    }


def function_item(function: Function) -> dict[str, Any]:
    """One item of `GET /v3/functions`: the fields every function type has (no configuration)."""
    used = sorted(name for name, functions in WORKFLOW_FUNCTIONS.items() if function.name in functions)
    return {
        "functionID": function.id,
        "functionName": function.name,
        "type": function.type,
        "versionNum": function.version,
        "displayName": function.display,
        "usedInWorkflows": [{"workflowName": name} for name in used],
    }


# --- the listing: filters and cursor paging ---------------------------------------------------


def _node_functions(node: Node) -> set[str]:
    found = {node.function.name}
    children = [*node.next, *(outlet.node for outlet in node.outlets)]
    children += [child for child in (node.per_item, node.join) if child is not None]
    for child in children:
        found |= _node_functions(child)
    return found


WORKFLOW_FUNCTIONS: dict[str, frozenset[str]] = {w.name: frozenset(_node_functions(w.root)) for w in WORKFLOWS}
"""Workflow name -> the names of the functions it references (the `workflowNames` filter)."""
ORDERED: tuple[Function, ...] = tuple(sorted(FUNCTIONS_BY_NAME.values(), key=lambda f: f.id))
"""The listing order: by functionID."""


@dataclass(frozen=True, slots=True)
class FunctionQuery:
    limit: int = DEFAULT_LIMIT
    descending: bool = False
    starting_after: str | None = None
    ending_before: str | None = None
    filters: Mapping[str, frozenset[str]] = field(default_factory=dict)


def parse_function_query(items: Iterable[tuple[str, str]]) -> FunctionQuery:
    """The parameters of either endpoint; arrays comma-separated and/or repeated."""
    arrays: dict[str, set[str]] = {}
    scalars: dict[str, str] = {}
    for key, value in items:
        name = key.removesuffix("[]")
        if name in _ARRAYS:
            arrays.setdefault(name, set()).update(v.strip() for v in value.split(",") if v.strip())
        else:
            scalars[name] = value
    order = scalars.get("sortOrder") or "asc"
    if order not in ("asc", "desc"):
        raise QueryError("sortOrder must be 'asc' or 'desc'", "sortOrder")
    after, before = scalars.get("startingAfter") or None, scalars.get("endingBefore") or None
    if after and before:
        raise QueryError("startingAfter and endingBefore cannot be used together", "startingAfter")
    filters = {name: frozenset(values) for name, values in arrays.items() if values}
    return FunctionQuery(_limit(scalars.get("limit")), order == "desc", after, before, filters)


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        raise QueryError("limit must be an integer between 1 and 100", "limit") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit must be an integer between 1 and 100", "limit")
    return limit


def select(query: FunctionQuery, knobs: QualityKnobs) -> tuple[list[Function], int]:
    """One page of the functions the query matches, and how many match in all."""
    matching = [f for f in ORDERED if f.name not in knobs.hidden and _matches(f, query.filters)]
    ordered = matching[::-1] if query.descending else matching
    start, end = 0, len(ordered)
    if query.starting_after is not None:
        start = _place(ordered, query.starting_after, "startingAfter", query.descending, after=True)
    if query.ending_before is not None:
        end = _place(ordered, query.ending_before, "endingBefore", query.descending, after=False)
    page = ordered[start:end]
    page = page[-query.limit :] if query.ending_before is not None else page[: query.limit]
    return page, len(matching)


def _matches(function: Function, filters: Mapping[str, frozenset[str]]) -> bool:
    checks = {
        "functionIDs": function.id,
        "functionNames": function.name,
        "types": function.type,
    }
    for name, wanted in filters.items():
        if name == "workflowNames":
            if not any(function.name in WORKFLOW_FUNCTIONS.get(w, ()) for w in wanted):
                return False
        elif checks[name] not in wanted:
            return False
    return True


def _place(ordered: list[Function], function_id: str, parameter: str, descending: bool, *, after: bool) -> int:
    """Where a page bounded by the cursor `function_id` starts (`after`) or ends in `ordered`.
    A cursor the filters exclude still names a place in the order, as a Stripe-style cursor does."""
    ids = [f.id for f in ordered]
    if function_id in ids:
        return ids.index(function_id) + (1 if after else 0)
    if function_id not in {f.id for f in ORDERED}:
        raise QueryError(f"{parameter}: no function with ID {function_id!r}", parameter)
    return sum((other > function_id) if descending else (other < function_id) for other in ids)


# --- the answers --------------------------------------------------------------------------------

MALFORMED_BODY = b'{"functions": [{"functionName": "extract-inv'
"""What `QualityKnobs.malformed` answers: a body cut short."""


def list_body(query: FunctionQuery, knobs: QualityKnobs) -> dict[str, Any]:
    """The body of `GET /v3/functions`."""
    page, _ = select(query, knobs)
    return {"functions": [function_item(f) for f in page]}


def metrics_body(query: FunctionQuery, knobs: QualityKnobs, now: float) -> dict[str, Any]:
    """The body of `GET /v3/functions/metrics` at epoch `now` (the first answer starts the clock
    of the counts)."""
    if knobs.started is None:
        knobs.started = now
    page, total = select(query, knobs)
    items = [_item(f, knobs, now - knobs.started, now) for f in page]
    return {"functions": items, "totalCount": total}


def _item(function: Function, knobs: QualityKnobs, elapsed: float, now: float) -> dict[str, Any]:
    item = metrics_item(function, counts(function, knobs, elapsed, now))
    if function.name in knobs.garbled:
        item["metrics"] = "unavailable"
    return item


def truth(knobs: QualityKnobs, now: float) -> dict[str, dict[str, Any]]:
    """Function name -> its metrics item as the next answer at `now` will give it (for tests)."""
    started = knobs.started if knobs.started is not None else now
    return {
        f.name: metrics_item(f, counts(f, knobs, now - started, now)) for f in ORDERED if f.name not in knobs.hidden
    }

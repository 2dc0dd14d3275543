"""bem's function quality metrics, simulated: `GET /v3/functions` and `GET /v3/functions/metrics`.

Every function of the catalogue has a quality profile drawn from its name (so every run and
every process agree on it) and counts that grow with the clock: results, labeled results, and a
confusion matrix (tp, fp, tn, fn) whose accuracy is the profile's, less any drift a test or the
demo started (`QualityKnobs.start_drift`). The four ratios are computed from the counts, as bem
computes them, and are null where their denominator is 0: every function of a type bem does not
evaluate (split, route, send, ...) and `UNLABELED` (results, but nobody labels them).

The metrics endpoint pages and filters exactly as the function listing does
(`exporter.simulator.functions`: `limit`, a `functionID` as cursor, `sortOrder`,
`functionIDs`, `functionNames`, `types`, `workflowIDs`, `workflowNames`), and its items carry
no `functionID` (as in bem-sdk's `FunctionGetMetricsResponse`). The knobs' faults (`status`,
`malformed`) apply to both endpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .catalog import FUNCTIONS_BY_NAME, Function
from .functions import USED_IN, list_functions
from .query import MAX_LIMIT

EVALUATED_TYPES = frozenset({"extract", "transform", "analyze", "join", "classify"})
"""Function types whose results can be labeled; the others report no labeled result."""
UNLABELED = "extract-health-claim"
"""An evaluated function whose results nobody labels: results, but null ratios."""


@dataclass
class QualityKnobs:
    """What tests and the demo change while the simulator runs (mutable, like `Faults`)."""

    drift_per_hour: dict[str, float] = field(default_factory=dict)
    """Function name -> accuracy lost per hour (0.06: six points an hour), from `drift_since`."""
    drift_since: dict[str, float] = field(default_factory=dict)
    labeling_stopped: dict[str, float] = field(default_factory=dict)
    """Function name -> when its labeling stopped: its labeled count stays, results grow."""
    hidden: set[str] = field(default_factory=set)
    """Functions left out of the metrics answer (still listed: bem gives no metrics for them)."""
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


# --- the answers --------------------------------------------------------------------------------

MALFORMED_BODY = b'{"functions": [{"functionName": "extract-inv'
"""What `QualityKnobs.malformed` answers: a body cut short."""


_PAGING = frozenset({"limit", "startingAfter", "endingBefore", "sortOrder"})


def metrics_body(items: Iterable[tuple[str, str]], knobs: QualityKnobs, now: float) -> dict[str, Any]:
    """The body of `GET /v3/functions/metrics` for these query parameters at epoch `now`: the
    listing's page, less the hidden functions, as metrics items (the first answer starts the
    clock of the counts). QueryError for a bad parameter."""
    if knobs.started is None:
        knobs.started = now
    items = list(items)
    page = [FUNCTIONS_BY_NAME[doc["functionName"]] for doc in list_functions(items)["functions"]]
    shown = [f for f in page if f.name not in knobs.hidden]
    return {"functions": [_item(f, knobs, now - knobs.started, now) for f in shown], "totalCount": _total(items, knobs)}


def _total(items: list[tuple[str, str]], knobs: QualityKnobs) -> int:
    """How many functions the filters match, hidden ones left out (the catalogue is one page)."""
    filters = [(key, value) for key, value in items if key.removesuffix("[]") not in _PAGING]
    matched = list_functions([*filters, ("limit", str(MAX_LIMIT))])["functions"]
    return sum(doc["functionName"] not in knobs.hidden for doc in matched)


def _item(function: Function, knobs: QualityKnobs, elapsed: float, now: float) -> dict[str, Any]:
    item = metrics_item(function, counts(function, knobs, elapsed, now))
    if function.name in knobs.garbled:
        item["metrics"] = "unavailable"
    return item


def truth(knobs: QualityKnobs, now: float) -> dict[str, dict[str, Any]]:
    """Function name -> its metrics item as the next answer at `now` will give it (for tests)."""
    started = knobs.started if knobs.started is not None else now
    return {
        name: metrics_item(f, counts(f, knobs, now - started, now))
        for name, f in FUNCTIONS_BY_NAME.items()
        if name not in knobs.hidden
    }


def functions_of(workflow: str) -> set[str]:
    """The names of the functions a workflow references (what `workflowNames` selects)."""
    return {name for name, workflows in USED_IN.items() if any(w.name == workflow for w in workflows)}

"""Typed records of bem's function quality metrics (`GET /v3/functions/metrics`) and of the
function listing that pages them (`GET /v3/functions`).

Declared fields only, as bem-sdk's `FunctionGetMetricsResponse` and `Function` models have them:
names, counts and ratios. A ratio is a number from 0 to 1, or null where bem has nothing to
compute it from; a count is a whole number of at least 0. Anything else makes the record
unreadable (it is counted and skipped by the decoder, never exported).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

Ratio = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]

RatioName = Literal["accuracy", "precision", "recall", "f1"]
RATIOS: tuple[RatioName, ...] = ("accuracy", "precision", "recall", "f1")
Outcome = Literal["tp", "fp", "tn", "fn"]
OUTCOMES: tuple[Outcome, ...] = ("tp", "fp", "tn", "fn")
QualityResult = Literal["success", "unavailable", "rejected", "unreachable", "malformed", "too_large"]
"""How a read ended: `unavailable` is bem's 404 on an account without quality metrics; the others
are the API client's error kinds (`ApiError.kind`)."""
QUALITY_RESULTS: tuple[QualityResult, ...] = (
    "success",
    "unavailable",
    "rejected",
    "unreachable",
    "malformed",
    "too_large",
)


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    accuracy: Ratio | None = None
    precision: Ratio | None = None
    recall: Ratio | None = None
    f1: Ratio | None = msgspec.field(name="f1Score", default=None)
    tp: Count
    fp: Count
    tn: Count
    fn: Count

    def ratio(self, name: RatioName) -> float | None:
        value: float | None = getattr(self, name)
        return value

    def outcome(self, name: Outcome) -> int:
        value: int = getattr(self, name)
        return value


class FunctionQuality(msgspec.Struct, frozen=True, kw_only=True):
    """One item of `GET /v3/functions/metrics`: a function's quality as bem measures it."""

    function_name: str = msgspec.field(name="functionName")
    metrics: Metrics
    results: Count = msgspec.field(name="totalResults")
    labeled_results: Count = msgspec.field(name="totalLabeledResults")


class FunctionId(msgspec.Struct, frozen=True):
    """What the exporter reads of an item of `GET /v3/functions`: its id, the listing's cursor."""

    function_id: str = msgspec.field(name="functionID")


@dataclass(frozen=True, slots=True)
class Reading:
    """One complete read of every page."""

    functions: dict[str, FunctionQuality]
    """By function name (made safe for labels: `exporter.redact.safe_name`)."""
    rejected: int
    """Items skipped as unreadable, over every page."""
    pages: int

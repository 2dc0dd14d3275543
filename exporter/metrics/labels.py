"""Cardinality control: which label values a series may carry.

Label values are names, types, statuses and kinds, never ids (the recorder never passes an
id here). Each label has a `LabelFolder`:

- an optional allow-list (workflow and function names): any other value becomes `other`;
- a cap on distinct values: once `max_label_values` values have been admitted, new ones
  become `other` and are counted in `bem_exporter_label_overflow_total{label}`;
- missing or empty values become `unknown`. Values arrive safe and bounded (the decoder
  passed them through `exporter.redact.safe_name`); the allow-lists pass through it too, so
  that an allowed name matches what the decoder makes of it.

Lookups are on the hot path (several per function call), so admitted values are cached in a
dict whose `get` the recorder calls directly; only misses reach `fold`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Final

from exporter.bem.models import NO_WORKFLOW
from exporter.redact import safe_name

OTHER: Final = "other"
UNKNOWN: Final = "unknown"
MAX_VALUE_LENGTH: Final = 128
_CACHE_LIMIT_FACTOR: Final = 4
"""Values folded by the allow-list are cached too, but only up to a bound: an unbounded
stream of distinct names must not grow memory."""

LABEL_NAMES: Final = (
    "workflow_name",
    "function_name",
    "function_type",
    "status",
    "event_type",
    "error_kind",
)


class LabelFolder:
    """Maps the raw values of one label to exposed values."""

    __slots__ = ("_cache_limit", "admitted", "allowed", "cache", "cap", "name", "on_overflow")

    def __init__(
        self,
        name: str,
        cap: int,
        allowed: Collection[str] = (),
        always: Collection[str] = (),
    ) -> None:
        self.name = name
        self.cap = cap
        # An allow-list also admits the values every deployment has (`(none)`, `other`).
        listed = frozenset(map(safe_name, allowed))
        self.allowed: frozenset[str] | None = listed | frozenset(always) | {OTHER} if allowed else None
        self.admitted: set[str] = set()
        self.cache: dict[str | None, str] = {}
        """raw value -> exposed value, for values admitted or folded by the allow-list."""
        self.on_overflow: Callable[[str, int], None] = _ignore
        """Told of each value folded by the cap (the label-overflow self-metric)."""
        self._cache_limit = cap * _CACHE_LIMIT_FACTOR + 1024

    def __call__(self, raw: str | None) -> str:
        value = self.cache.get(raw)
        return value if value is not None else self.fold(raw)

    def fold(self, raw: str | None) -> str:
        """The slow path: normalise, apply the allow-list, then the cap."""
        value = _normalise(raw)
        if self.allowed is not None and value not in self.allowed:
            self._remember(raw, OTHER)
            return OTHER
        if value in self.admitted or value == OTHER:
            self._remember(raw, value)
            return value
        if len(self.admitted) >= self.cap:
            # Not cached: each fold is counted, and the cap holds however many values arrive.
            self.on_overflow(self.name, 1)
            return OTHER
        self.admitted.add(value)
        self._remember(raw, value)
        return value

    def _remember(self, raw: str | None, value: str) -> None:
        if len(self.cache) < self._cache_limit:
            self.cache[raw] = value

    def permits(self, value: str) -> bool:
        """Whether a series with this value may exist under the current allow-list."""
        return self.allowed is None or value in self.allowed

    def seed(self, values: Iterable[str]) -> None:
        """Admit values found in a restored snapshot, beyond the cap if need be: their series
        exist already, and admitting them again later would exceed the cap."""
        for value in values:
            if value != OTHER:
                self.admitted.add(value)


def _ignore(label: str, count: int) -> None:
    pass


def _normalise(raw: str | None) -> str:
    if not raw:
        return UNKNOWN
    value = raw.strip()
    if not value:
        return UNKNOWN
    return value[:MAX_VALUE_LENGTH]


class LabelPolicy:
    """The folders of every label, shared by the recorder and the in-progress gauges."""

    def __init__(
        self,
        max_label_values: int,
        allow_workflows: Collection[str] = (),
        allow_functions: Collection[str] = (),
    ) -> None:
        cap = max_label_values
        self.workflow = LabelFolder("workflow_name", cap, allow_workflows, always=(NO_WORKFLOW,))
        self.function = LabelFolder("function_name", cap, allow_functions)
        self.function_type = LabelFolder("function_type", cap)
        self.status = LabelFolder("status", cap)
        self.event_type = LabelFolder("event_type", cap)
        self.error_kind = LabelFolder("error_kind", cap)
        self.folders: dict[str, LabelFolder] = {
            folder.name: folder
            for folder in (
                self.workflow,
                self.function,
                self.function_type,
                self.status,
                self.event_type,
                self.error_kind,
            )
        }

    def permits(self, label_names: tuple[str, ...], values: tuple[str, ...]) -> bool:
        """Whether a restored series still fits the allow-lists (others are dropped on restore:
        merging them into `other` would show as a spurious increase)."""
        for name, value in zip(label_names, values, strict=True):
            folder = self.folders.get(name)
            if folder is not None and not folder.permits(value):
                return False
        return True

    def seed(self, label_names: tuple[str, ...], values: tuple[str, ...]) -> None:
        for name, value in zip(label_names, values, strict=True):
            folder = self.folders.get(name)
            if folder is not None:
                folder.seed((value,))

    def report_overflows_to(self, callback: Callable[[str, int], None]) -> None:
        for folder in self.folders.values():
            folder.on_overflow = callback

"""The call metrics' exposition, rendered from the store's tables, series by series.

prometheus_client renders a custom collector's families sample by sample through `Sample`
tuples and label dicts: about 55 µs per sample, seconds for 50,000 samples, holding the
interpreter lock while scrapes are served. This renderer writes the same bytes (the text
format 0.0.4 and OpenMetrics, exemplars included, with prometheus_client's escaping and
number formatting) straight from the store's rows, and keeps each series' rendered lines:
a published row is never mutated (a stage copies a row on its first write), so a series
whose row (and exemplar slots) is the very object rendered last time is rendered already,
and a commit costs the series it touched plus one join. `tests/test_render.py` holds the
output to prometheus_client's own render of the same data.

Only the escaping schemes that leave this exporter's names unchanged (`underscores`, the
default, and `allow-utf-8`) are rendered here; `render` returns None for the others, which
a client must ask for explicitly, and the caller falls back to prometheus_client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from prometheus_client.utils import floatToGoString

from exporter.metrics.store import (
    CounterSpec,
    ExemplarLabels,
    ExemplarRecord,
    HistogramSpec,
    Key,
    Row,
    SeriesStore,
    le_labels,
)

OPENMETRICS: Final = "application/openmetrics-text"
TEXT: Final = "text/plain"
SAME_NAMES_ESCAPING: Final = ("underscores", "allow-utf-8")
"""Escaping schemes under which valid legacy metric and label names are written unchanged."""

Slots = list[ExemplarRecord | None]
_SeriesLabels = tuple[str, str, str, str]
"""A histogram series' line starts: bucket up to the `le` value, after it, count, sum."""


def go_float(value: float) -> str:
    """`floatToGoString(value)`, without its checks for the usual case: a finite number
    short enough that Go and Python write it alike (counts are mostly such ints)."""
    if type(value) is int and value < 1_000_000:
        return f"{value}.0"
    text = repr(float(value))
    if len(text) > 8 or text[-1] in "fn":  # long (maybe an exponent in Go), inf or nan
        return str(floatToGoString(value))  # type: ignore[no-untyped-call]
    return text


def escape_value(value: str) -> str:
    """A label value as prometheus_client writes it, in either format."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def openmetrics_wanted(content_type: str) -> bool | None:
    """For a Content-Type `choose_encoder` picked: True for OpenMetrics, False for the text
    format, None when its escaping would change the names (not rendered here)."""
    _, _, escaping = content_type.partition("escaping=")
    if escaping and escaping.split(";")[0].strip() not in SAME_NAMES_ESCAPING:
        return None
    if content_type.startswith(OPENMETRICS):
        return True
    return False if content_type.startswith(TEXT) else None


def _help_line(name: str, text: str, openmetrics: bool) -> str:
    escaped = text.replace("\\", r"\\").replace("\n", r"\n")
    if openmetrics:
        escaped = escaped.replace('"', r"\"")
    return f"# HELP {name} {escaped}\n"


def _pairs(label_names: Sequence[str], key: Key) -> list[tuple[str, str]]:
    """(label name, `name="value"`) pairs, sorted by name as prometheus_client sorts them."""
    return sorted((name, f'{name}="{escape_value(value)}"') for name, value in zip(label_names, key, strict=True))


def _braced(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(pair for _, pair in pairs) + "}" if pairs else ""


class CounterFamily:
    """One counter family in one format; each series' line kept with the value it shows."""

    __slots__ = ("_header", "_label_names", "_lines", "_sample")

    def __init__(self, spec: CounterSpec, openmetrics: bool) -> None:
        family = spec.name.removesuffix("_total")
        shown = family if openmetrics else spec.name
        self._header = (_help_line(shown, spec.help, openmetrics) + f"# TYPE {shown} counter\n").encode()
        self._sample = spec.name
        self._label_names = spec.labels
        self._lines: dict[Key, tuple[float, bytes, str]] = {}
        """key -> (value, its line, the line up to the value)."""

    def render(self, series: dict[Key, int], out: list[bytes]) -> int:
        """Append the family to `out`; return how many series were rendered anew."""
        out.append(self._header)
        old = self._lines
        lines: dict[Key, tuple[float, bytes, str]] = {}
        fresh = 0
        for key, value in series.items():
            kept = old.get(key)
            if kept is None or kept[0] != value:
                start = kept[2] if kept is not None else f"{self._sample}{_braced(_pairs(self._label_names, key))} "
                kept = (value, f"{start}{go_float(value)}\n".encode(), start)
                fresh += 1
            lines[key] = kept
            out.append(kept[1])
        self._lines = lines
        return fresh


class HistogramFamily:
    """One histogram family in one format; each series' lines kept with the row (and
    exemplar slots) they show. Rows are compared by identity: published rows never change."""

    __slots__ = ("_exemplar_labels", "_header", "_label_names", "_les", "_lines", "_name", "_openmetrics")

    def __init__(self, spec: HistogramSpec, openmetrics: bool, exemplar_labels: ExemplarLabels) -> None:
        header = _help_line(spec.name, spec.help, openmetrics) + f"# TYPE {spec.name} histogram\n"
        if openmetrics and spec.unit:
            header += f"# UNIT {spec.name} {spec.unit}\n"
        self._header = header.encode()
        self._name = spec.name
        self._label_names = spec.labels
        self._les = le_labels(spec.bounds)
        self._openmetrics = openmetrics
        self._exemplar_labels = exemplar_labels
        self._lines: dict[Key, tuple[Row, Slots | None, bytes, _SeriesLabels]] = {}
        """key -> (row, exemplar slots, their lines, the series' labels as written)."""

    def render(self, rows: dict[Key, Row], exemplars: dict[Key, Slots] | None, out: list[bytes]) -> int:
        """Append the family to `out`; return how many series were rendered anew."""
        out.append(self._header)
        if not self._openmetrics:
            exemplars = None  # the text format has none
        old = self._lines
        lines: dict[Key, tuple[Row, Slots | None, bytes, _SeriesLabels]] = {}
        fresh = 0
        for key, row in rows.items():
            slots = exemplars.get(key) if exemplars is not None else None
            kept = old.get(key)
            if kept is None or kept[0] is not row or kept[1] is not slots:
                labels = kept[3] if kept is not None else self._labels(key)
                kept = (row, slots, self._chunk(labels, row, slots), labels)
                fresh += 1
            lines[key] = kept
            out.append(kept[2])
        self._lines = lines
        return fresh

    def _labels(self, key: Key) -> _SeriesLabels:
        pairs = _pairs(self._label_names, key)
        name = self._name
        head = f"{name}_bucket{{" + "".join(pair + "," for label, pair in pairs if label < "le") + 'le="'
        tail = '"' + "".join("," + pair for label, pair in pairs if label > "le") + "} "
        braced = _braced(pairs)
        return head, tail, f"{name}_count{braced} ", f"{name}_sum{braced} "

    def _chunk(self, labels: _SeriesLabels, row: Row, slots: Slots | None) -> bytes:
        head, tail, count, sum_ = labels
        lines: list[str] = []
        total: float = 0
        for index, le in enumerate(self._les):
            total += row[index]
            record = slots[index] if slots is not None else None
            example = self._exemplar(record) if record is not None else ""
            lines.append(f"{head}{le}{tail}{go_float(total)}{example}\n")
        lines.append(f"{count}{go_float(total)}\n{sum_}{go_float(row[-1])}\n")
        return "".join(lines).encode()

    def _exemplar(self, record: ExemplarRecord) -> str:
        labels = self._exemplar_labels(record[0], record[1])
        pairs = ",".join(f'{k}="{escape_value(v)}"' for k, v in sorted(labels.items()))
        return f" # {{{pairs}}} {go_float(record[2])}"


class FormatRenderer:
    """Every family of the store in one format, in the order prometheus_client collects them."""

    def __init__(self, store: SeriesStore, openmetrics: bool, exemplar_labels: ExemplarLabels) -> None:
        self._store = store
        self._counters = {name: CounterFamily(spec, openmetrics) for name, spec in store.counter_specs.items()}
        self._histograms = {
            name: HistogramFamily(spec, openmetrics, exemplar_labels) for name, spec in store.histogram_specs.items()
        }
        self.rendered_anew = 0
        """Series whose lines the last render wrote (the others were kept from the one before)."""

    def render(self) -> bytes:
        tables = self._store.published  # read once: every family from the same version
        out: list[bytes] = []
        fresh = 0
        for name, counter in self._counters.items():
            fresh += counter.render(tables.counters[name], out)
        for name, histogram in self._histograms.items():
            fresh += histogram.render(tables.histograms[name], tables.exemplars.get(name), out)
        self.rendered_anew = fresh
        return b"".join(out)


class StoreRenderer:
    """The call metrics' exposition in both formats (OpenMetrics without its `# EOF`)."""

    def __init__(self, store: SeriesStore, exemplar_labels: ExemplarLabels) -> None:
        self.formats = {
            openmetrics: FormatRenderer(store, openmetrics, exemplar_labels) for openmetrics in (False, True)
        }
        """The text format (False) and OpenMetrics (True)."""

    def render(self, content_type: str) -> bytes | None:
        """The body for a Content-Type `choose_encoder` picked; None if not rendered here.
        Not thread-safe: callers serialise renders (the exposition cache holds a lock)."""
        openmetrics = openmetrics_wanted(content_type)
        return None if openmetrics is None else self.formats[openmetrics].render()

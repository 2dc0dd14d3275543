"""Series storage for the counted metrics: plain dicts, staged copy-on-write, snapshots.

Why not prometheus_client's Counter and Histogram: their values cannot be set back from a
snapshot, and they make every increment visible at once, while exactly-once counting needs
the increments of a batch to stay invisible until the batch's snapshot is persisted (see
`exporter.pipeline`).

The layout: a `Tables` holds every series of every family. The published `Tables` is never
mutated; `begin()` returns a `Stage`, a writable copy in which counters are copied shallowly
(their values are immutable ints) and histogram rows are copied on their first write in the
stage. `publish()` swaps the stage's tables in with one assignment, so a scrape running in
another thread sees either the old or the new tables, never half a batch, without a lock.

A histogram row is `[count in bucket 0, ..., count in bucket n-1, count above the last bound,
sum]`: per-bucket (not cumulative) counts, so an observation touches two cells.

Two bounds keep a scrape small whatever names the API sends, both by folding series into
their family's `other` series (every label `other` but `status`), so that no count is lost:

- a cap on series per family (`Stage.fit`): a new series beyond it is folded as it comes;
- a bound on the samples of one scrape (`Stage.bound`: a counter series is one sample, a
  histogram series its buckets, `+Inf`, `_sum` and `_count`). When a stage would exceed it,
  the family with the most samples gives way first: its newest series (with their siblings
  of other statuses) are merged into `other` until the total fits, and its cap drops to the
  series it keeps, so new series of that family fold as they come. The lowered caps are part
  of the snapshot: a restart restores the same fold.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from exporter.metrics.labels import OTHER

log = logging.getLogger(__name__)

Key = tuple[str, ...]
"""The label values of one series, in the order of its family's label names."""

Row = list[float]
"""A histogram series: per-bucket counts (the last one above the highest bound), then the sum."""

ExemplarRecord = tuple[str, str | None, float, float]
"""(call id, function call id or None, observed value, the call's finishedAt as unix time):
the trace ids are derived from the ids only when a scrape renders the exemplar, which is
rarer than recording one; the time only picks the newest exemplar and is not exposed."""

ExemplarLabels = Callable[[str, str | None], dict[str, str]]

SNAPSHOT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class CounterSpec:
    name: str
    """The full sample name, ending in `_total`."""
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    name: str
    help: str
    labels: tuple[str, ...]
    bounds: tuple[float, ...]
    """Upper bounds, strictly increasing, without +Inf."""
    unit: str = ""
    exemplars: bool = False


class Tables:
    """One consistent version of every series. Once published, never mutated."""

    __slots__ = ("caps", "counters", "exemplars", "histograms")

    def __init__(
        self,
        counters: dict[str, dict[Key, int]],
        histograms: dict[str, dict[Key, Row]],
        exemplars: dict[str, dict[Key, list[ExemplarRecord | None]]],
        caps: dict[str, int],
    ) -> None:
        self.counters = counters
        self.histograms = histograms
        self.exemplars = exemplars
        self.caps = caps
        """Series per family before new ones fold into `other`: the configured cap, or lower
        for a family the samples bound has folded."""


class HistogramWriter:
    """Writes one histogram family inside a stage, copying each row on its first write."""

    __slots__ = ("bounds", "exemplars", "owned", "owned_exemplars", "rows", "width")

    def __init__(
        self,
        rows: dict[Key, Row],
        bounds: tuple[float, ...],
        exemplars: dict[Key, list[ExemplarRecord | None]] | None,
    ) -> None:
        self.rows = rows
        self.owned: dict[Key, Row] = {}
        self.bounds = bounds
        self.width = len(bounds) + 1
        self.exemplars = exemplars
        self.owned_exemplars: dict[Key, list[ExemplarRecord | None]] = {}

    def _own(self, key: Key) -> Row:
        old = self.rows.get(key)
        row: Row = list(old) if old is not None else [0] * self.width + [0.0]
        self.rows[key] = row
        self.owned[key] = row
        return row

    def ensure(self, key: Key) -> None:
        """Create the series at zero if it does not exist yet (pre-initialisation)."""
        if key not in self.rows:
            self._own(key)

    def observe(self, key: Key, value: float) -> int:
        """Count `value`; return the index of its bucket (for the exemplar)."""
        row = self.owned.get(key)
        if row is None:
            row = self._own(key)
        index = bisect_left(self.bounds, value)  # first bound >= value: Prometheus `le`
        row[index] += 1
        row[-1] += value
        return index

    def merge(self, key: Key, into: Key) -> None:
        """Fold series `key` into series `into` (counts and sum added, the newer exemplar of
        each bucket kept); `key` is gone."""
        row = self.rows.pop(key)
        self.owned.pop(key, None)
        target = self.owned.get(into)
        if target is None:
            target = self._own(into)
        for index, value in enumerate(row):
            target[index] += value
        slots = self.exemplars.pop(key, None) if self.exemplars is not None else None
        self.owned_exemplars.pop(key, None)
        for index, record in enumerate(slots or ()):
            if record is not None:
                self.exemplar(into, index, record)

    def exemplar(self, key: Key, index: int, record: ExemplarRecord) -> None:
        """Keep `record` as the bucket's exemplar unless the bucket holds one of a call that
        finished later: the exemplar shown is the most recent example of its bucket."""
        exemplars = self.exemplars
        if exemplars is None:
            return
        slots = self.owned_exemplars.get(key)
        if slots is None:
            old = exemplars.get(key)
            slots = list(old) if old is not None else [None] * self.width
            exemplars[key] = slots
            self.owned_exemplars[key] = slots
        current = slots[index]
        if current is None or current[3] <= record[3]:
            slots[index] = record


class Stage:
    """A writable copy of the published tables; invisible until `SeriesStore.publish`."""

    __slots__ = ("_label_names", "_samples_per_series", "_writers", "bound_folded", "folded", "tables")

    def __init__(
        self,
        tables: Tables,
        specs: dict[str, HistogramSpec],
        label_names: dict[str, tuple[str, ...]],
        samples_per_series: dict[str, int],
    ) -> None:
        self._label_names = label_names
        self._samples_per_series = samples_per_series
        self.folded = 0
        """Series folded into `other` in this stage because their family was full."""
        self.bound_folded: dict[str, int] = {}
        """Series folded into `other` in this stage to keep the scrape within its bound, by family."""
        self.tables = Tables(
            {name: dict(series) for name, series in tables.counters.items()},
            {name: dict(rows) for name, rows in tables.histograms.items()},
            {name: dict(slots) for name, slots in tables.exemplars.items()},
            dict(tables.caps),
        )
        self._writers = {
            name: HistogramWriter(self.tables.histograms[name], spec.bounds, self.tables.exemplars.get(name))
            for name, spec in specs.items()
        }

    def counter(self, name: str) -> dict[Key, int]:
        """The counter's series, to increment in place (ints are immutable: no copy needed)."""
        return self.tables.counters[name]

    def histogram(self, name: str) -> HistogramWriter:
        return self._writers[name]

    def _series(self, name: str) -> dict[Key, int] | dict[Key, Row]:
        counters = self.tables.counters
        return counters[name] if name in counters else self.tables.histograms[name]

    def fit(self, name: str, key: Key) -> Key:
        """`key`, or its `other` series when `key` is new and family `name` is full. Every
        label but `status` (a handful of values) folds, so the family holds at most the cap
        plus one `other` series per status, whatever the API sends."""
        series = self._series(name)
        if key in series or len(series) < self.tables.caps[name]:
            return key
        self.folded += 1
        return self.other(name, key)

    def other(self, name: str, key: Key) -> Key:
        """The `other` series `key` folds into."""
        return tuple(
            value if label == "status" else OTHER for label, value in zip(self._label_names[name], key, strict=True)
        )

    def samples(self) -> dict[str, int]:
        """Samples each family adds to a scrape."""
        return {name: len(self._series(name)) * per for name, per in self._samples_per_series.items()}

    def bound(self, max_samples: int) -> bool:
        """Fold series into `other`, the largest family first, until the scrape's samples
        are within `max_samples`; False if only `other` series are left and it still is not."""
        samples = self.samples()
        groups: dict[str, list[list[Key]]] = {}
        while sum(samples.values()) > max_samples:
            name = self._largest_foldable(samples, groups)
            if name is None:
                return False
            self._fold(name, groups[name].pop())
            samples[name] = len(self._series(name)) * self._samples_per_series[name]
        return True

    def _largest_foldable(self, samples: dict[str, int], groups: dict[str, list[list[Key]]]) -> str | None:
        """The family with the most samples that still has a series to fold (among equals the
        first declared, so that a fold is repeatable); its groups are listed on first use."""
        for name in sorted(samples, key=lambda family: -samples[family]):
            if name not in groups:
                groups[name] = self._groups(name)
            if groups[name]:
                return name
        return None

    def _groups(self, name: str) -> list[list[Key]]:
        """The family's series that may fold, by their labels but `status`, oldest first."""
        label_names = self._label_names[name]
        groups: dict[Key, list[Key]] = {}
        for key in self._series(name):
            if self.other(name, key) != key:
                group = tuple(value for label, value in zip(label_names, key, strict=True) if label != "status")
                groups.setdefault(group, []).append(key)
        return list(groups.values())

    def _fold(self, name: str, keys: list[Key]) -> None:
        if name in self.tables.counters:
            series = self.tables.counters[name]
            for key in keys:
                into = self.other(name, key)
                series[into] = series.get(into, 0) + series.pop(key)
        else:
            writer = self._writers[name]
            for key in keys:
                writer.merge(key, self.other(name, key))
        self.tables.caps[name] = len(self._series(name))
        self.bound_folded[name] = self.bound_folded.get(name, 0) + len(keys)


# --- snapshot format ---------------------------------------------------------------------------


class _CounterDump(msgspec.Struct, forbid_unknown_fields=False):
    labels: list[str]
    series: list[tuple[list[str], int | float]]
    cap: int | None = None
    """The family's series cap, when the samples bound lowered it (absent otherwise, and in
    snapshots of earlier versions)."""


class _HistogramDump(msgspec.Struct, forbid_unknown_fields=False):
    labels: list[str]
    bounds: list[float]
    series: list[tuple[list[str], list[int | float]]]
    cap: int | None = None


class _Snapshot(msgspec.Struct, forbid_unknown_fields=False):
    version: int
    counters: dict[str, _CounterDump] = {}
    histograms: dict[str, _HistogramDump] = {}
    max_samples: int | None = None
    """The samples bound the caps were lowered under."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Snapshot)


class SnapshotError(ValueError):
    """A snapshot that cannot be read (corrupt, or written by an incompatible version)."""


# --- the store -----------------------------------------------------------------------------------


class SeriesStore:
    """The counters and histograms of the counted metrics, and their exposition."""

    def __init__(
        self,
        counters: Sequence[CounterSpec],
        histograms: Sequence[HistogramSpec],
        exemplar_labels: ExemplarLabels,
        max_series_per_family: int,
        max_samples: int,
    ) -> None:
        self.max_series_per_family = max_series_per_family
        self.max_samples = max_samples
        """The bound on the samples of one scrape of these families."""
        self.counter_specs = {spec.name: spec for spec in counters}
        self.histogram_specs = {spec.name: spec for spec in histograms}
        self._exemplar_labels = exemplar_labels
        # `le` label values, rendered once: prometheus_client's formatting is not free.
        self._les = {spec.name: le_labels(spec.bounds) for spec in histograms}
        self._label_names = {spec.name: spec.labels for spec in counters} | {
            spec.name: spec.labels for spec in histograms
        }
        # A histogram series is its buckets, +Inf, sum and count.
        self.samples_per_series = {name: 1 for name in self.counter_specs} | {
            name: len(spec.bounds) + 3 for name, spec in self.histogram_specs.items()
        }
        self.published = self.empty()

    def empty(self) -> Tables:
        return Tables(
            {name: {} for name in self.counter_specs},
            {name: {} for name in self.histogram_specs},
            {name: {} for name, spec in self.histogram_specs.items() if spec.exemplars},
            dict.fromkeys(self._label_names, self.max_series_per_family),
        )

    def begin(self, tables: Tables | None = None) -> Stage:
        """A stage on top of the published tables (not on top of an earlier, unpublished stage:
        counts staged but never published must not leak into a later snapshot), or of `tables`."""
        base = self.published if tables is None else tables
        return Stage(base, self.histogram_specs, self._label_names, self.samples_per_series)

    def samples(self, tables: Tables) -> int:
        """The samples these tables make in a scrape."""
        sizes = {name: len(series) for name, series in tables.counters.items()}
        sizes.update((name, len(rows)) for name, rows in tables.histograms.items())
        return sum(size * self.samples_per_series[name] for name, size in sizes.items())

    def publish(self, stage: Stage) -> None:
        self.published = stage.tables  # one reference swap: atomic for a concurrent scrape

    # --- snapshots -------------------------------------------------------------------------------

    def snapshot(self, tables: Tables) -> bytes:
        """The counters and histograms (not the exemplars) as compact JSON."""
        counters = {
            name: {"labels": self.counter_specs[name].labels, "series": list(series.items()), **self._cap(tables, name)}
            for name, series in tables.counters.items()
        }
        histograms = {
            name: {
                "labels": self.histogram_specs[name].labels,
                "bounds": self.histogram_specs[name].bounds,
                "series": list(rows.items()),
                **self._cap(tables, name),
            }
            for name, rows in tables.histograms.items()
        }
        return _encoder.encode(
            {
                "version": SNAPSHOT_VERSION,
                "counters": counters,
                "histograms": histograms,
                "max_samples": self.max_samples,
            }
        )

    def _cap(self, tables: Tables, name: str) -> dict[str, int]:
        cap = tables.caps[name]
        return {"cap": cap} if cap < self.max_series_per_family else {}

    def load(self, data: bytes, keep: Callable[[tuple[str, ...], Key], bool]) -> Tables:
        """Tables from a snapshot. Families this version does not know, or whose label names
        changed, are dropped; histograms whose bounds changed are re-binned; series that
        `keep(label_names, key)` refuses are dropped. Raises `SnapshotError`."""
        try:
            dump = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise SnapshotError(f"metrics snapshot is unreadable: {error}") from None
        if dump.version != SNAPSHOT_VERSION:
            raise SnapshotError(f"metrics snapshot has version {dump.version}, expected {SNAPSHOT_VERSION}")
        tables = self.empty()
        for name, counter in dump.counters.items():
            spec = self.counter_specs.get(name)
            if spec is None or tuple(counter.labels) != spec.labels:
                log.warning("metrics snapshot: dropping %s (unknown, or its labels changed)", name)
                continue
            width = len(spec.labels)
            series = tables.counters[name]
            for values, value in counter.series:
                key = tuple(values)
                if len(key) == width and _valid_count(value) and keep(spec.labels, key):
                    series[key] = value  # type: ignore[assignment]  # float only if a past version wrote one
        for name, histogram in dump.histograms.items():
            hspec = self.histogram_specs.get(name)
            if hspec is None or tuple(histogram.labels) != hspec.labels:
                log.warning("metrics snapshot: dropping %s (unknown, or its labels changed)", name)
                continue
            self._load_histogram(hspec, histogram, tables.histograms[name], keep)
        if dump.max_samples is not None and dump.max_samples >= self.max_samples:
            self._load_caps(dump, tables)
        return tables

    def _load_caps(self, dump: _Snapshot, tables: Tables) -> None:
        """The caps the samples bound lowered, under a bound as tight or tighter: the same fold
        as before the restart. A raised bound starts from the configured caps again."""
        dumps: dict[str, _CounterDump | _HistogramDump] = {**dump.counters, **dump.histograms}
        for name, family in dumps.items():
            if name in tables.caps and family.cap is not None and family.cap >= 0:
                tables.caps[name] = min(family.cap, self.max_series_per_family)

    def _load_histogram(
        self,
        spec: HistogramSpec,
        dump: _HistogramDump,
        rows: dict[Key, Row],
        keep: Callable[[tuple[str, ...], Key], bool],
    ) -> None:
        old_bounds = tuple(dump.bounds)
        rebin = old_bounds != spec.bounds
        if rebin:
            log.warning("metrics snapshot: the buckets of %s changed; re-binning its counts", spec.name)
        width = len(spec.labels)
        for values, row in dump.series:
            key = tuple(values)
            if len(key) != width or len(row) != len(old_bounds) + 2 or not keep(spec.labels, key):
                continue
            if not all(_valid_count(v) for v in row[:-1]) or not math.isfinite(row[-1]):
                continue
            rows[key] = _rebin(row, old_bounds, spec.bounds) if rebin else list(row)

    # --- exposition ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        tables = self.published  # read once: every family from the same version
        for name, spec in self.counter_specs.items():
            family = CounterMetricFamily(name, spec.help, labels=spec.labels)
            for key, value in tables.counters[name].items():
                family.add_metric(key, value)
            yield family
        for name, hspec in self.histogram_specs.items():
            yield histogram_family(
                hspec,
                self._les[name],
                tables.histograms[name],
                tables.exemplars.get(name),
                self._exemplar_labels,
            )


def histogram_family(
    spec: HistogramSpec,
    les: Sequence[str],
    rows: dict[Key, Row],
    exemplars: dict[Key, list[ExemplarRecord | None]] | None = None,
    exemplar_labels: ExemplarLabels | None = None,
) -> HistogramMetricFamily:
    """A histogram family from per-bucket rows (made cumulative here)."""
    family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels, unit=spec.unit)
    for key, row in rows.items():
        slots = exemplars.get(key) if exemplars is not None else None
        buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        total: float = 0
        for index, le in enumerate(les):
            total += row[index]
            record = slots[index] if slots is not None else None
            if record is not None and exemplar_labels is not None:
                labels = exemplar_labels(record[0], record[1])
                # No timestamp: the scraper then uses the scrape's, which never goes back. With
                # finishedAt instead, an older call counted after a restart would be rejected
                # (and warned about) on every scrape as an out-of-order exemplar.
                buckets.append((le, total, Exemplar(labels, record[2])))
            else:
                buckets.append((le, total))
        family.add_metric(key, buckets, row[-1])
    return family


def le_labels(bounds: Sequence[float]) -> list[str]:
    """The `le` label values of a histogram's buckets, +Inf included, as prometheus_client
    renders them (`1.0`, `2.5`, `+Inf`)."""
    return [str(floatToGoString(b)) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]


def _valid_count(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _rebin(row: Sequence[float], old: tuple[float, ...], new: tuple[float, ...]) -> Row:
    """Move each old bucket's count into the new bucket holding the old bucket's upper bound.

    The cumulative count at a bound present in both layouts stays exact, so the `le` series
    that survive a bucket change stay monotonic; `_count` and `_sum` are kept as they were.
    """
    out: Row = [0] * (len(new) + 1) + [row[-1]]
    for index, count in enumerate(row[:-1]):
        upper = old[index] if index < len(old) else math.inf
        out[bisect_left(new, upper)] += count
    return out

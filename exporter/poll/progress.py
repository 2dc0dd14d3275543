"""How far a long read of the listing is: a first-start backfill, or a catch-up after downtime.

Each committed page reports its calls; the tracker estimates the total from the span of
creation times read so far (calls per second of history, extrapolated to the target time)
and, for a backfill, bounds it by the listing's `totalCount` (every call the filter matches,
some older than the lookback). It logs a line at most every `LOG_EVERY` seconds and hands
every snapshot to its listeners (the remaining-calls metric, /status, `once`'s progress bar).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Never

from tqdm import tqdm

from exporter.bem.models import Call

log = logging.getLogger("exporter.poll")

LOG_EVERY = 10.0
"""Seconds between progress log lines."""

Kind = Literal["backfill", "catch-up"]


@dataclass(frozen=True, slots=True)
class Progress:
    """One look at a backfill or catch-up, after a committed page."""

    kind: Kind
    target: float
    """Epoch seconds the read ends at: the lookback's start (backfill) or now (catch-up)."""
    reached: float | None
    """Creation time of the call read furthest towards the target; None before any."""
    calls: int
    """Calls read so far by this process."""
    total: int | None
    """Estimate of the calls this read takes in all; None before there is a basis."""
    rate: float
    """Calls read per second so far."""
    done: bool

    @property
    def remaining(self) -> int | None:
        if self.done:
            return 0
        return None if self.total is None else max(self.total - self.calls, 0)

    @property
    def seconds_left(self) -> float | None:
        remaining = self.remaining
        return None if remaining is None or self.rate <= 0 else remaining / self.rate


Listener = Callable[[Progress], None]


class Tracker:
    """Follows one backfill or catch-up; call `page` after each committed page."""

    def __init__(
        self, kind: Kind, target: float, listeners: Sequence[Listener], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._kind: Kind = kind
        self._target = target
        self._listeners = tuple(listeners)
        self._clock = clock
        self._began = clock()
        self._logged: float | None = None
        self._calls = 0
        self._origin: float | None = None
        self._reached: float | None = None
        self._bound: int | None = None

    def page(self, calls: Sequence[Call], total_count: int | None, done: bool) -> Progress:
        """`calls`: the page's calls that belong to the read; `total_count`: the listing's."""
        self._calls += len(calls)
        times = [call.created_at.timestamp() for call in calls]
        if times:
            furthest = min(times) if self._kind == "backfill" else max(times)
            nearest = max(times) if self._kind == "backfill" else min(times)
            self._origin = nearest if self._origin is None else self._origin
            self._reached = furthest
        if self._kind == "backfill" and total_count is not None:
            self._bound = total_count
        progress = Progress(self._kind, self._target, self._reached, self._calls, self._total(done), self._rate(), done)
        for listener in self._listeners:
            listener(progress)
        self._log(progress)
        return progress

    def _total(self, done: bool) -> int | None:
        if done:
            return self._calls
        estimates = [estimate for estimate in (self._extrapolated(), self._bound) if estimate is not None]
        return max(min(estimates), self._calls) if estimates else None

    def _extrapolated(self) -> int | None:
        """Calls per second of history read so far, times the history between origin and target."""
        if self._origin is None or self._reached is None or self._origin == self._reached:
            return None
        whole = abs(self._origin - self._target)
        covered = abs(self._origin - self._reached)
        return round(self._calls * whole / covered)

    def _rate(self) -> float:
        elapsed = self._clock() - self._began
        return self._calls / elapsed if elapsed > 0 else 0.0

    def _log(self, progress: Progress) -> None:
        now = self._clock()
        if progress.done:
            log.info(f"{self._kind} finished", extra=_fields(progress, now - self._began))
        elif self._logged is None or now - self._logged >= LOG_EVERY:
            self._logged = now
            log.info(f"{self._kind} progress", extra=_fields(progress, now - self._began))


def _fields(progress: Progress, elapsed: float) -> dict[str, object]:
    left = progress.seconds_left
    return {
        "calls_done": progress.calls,
        "calls_total_estimate": progress.total,
        "calls_remaining": progress.remaining,
        "calls_per_second": round(progress.rate, 1),
        "seconds_left": None if left is None else round(left),
        "seconds": round(elapsed, 1),
    }


class ProgressBar:
    """A terminal progress bar (tqdm, on stderr) following a backfill or catch-up; for `once`
    run by a person. `close()` when done."""

    def __init__(self) -> None:
        self._bar: tqdm[Never] | None = None

    def __call__(self, progress: Progress) -> None:
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(desc=progress.kind, unit="call", file=sys.stderr, dynamic_ncols=True)
        if progress.total is not None:
            bar.total = progress.total
        bar.update(progress.calls - bar.n)
        if progress.done:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""Telling a rate limit from a storm: when to cut the request rate, and how far.

Each answer is an overload (a 429, or an answer slow enough that bem seems to queue our
requests) or not. A cut lands just under what got through, because a limit lets the same
requests per second through at any rate above it. Each cut is then checked on the answers to
requests started after it.

Not every 429 is about our rate. An API under load, or a storm of errors, refuses a share of
requests whatever the rate. The judge tells the two apart by what a change of rate does to
what gets through:

- under a limit, what gets through per second stays put;
- in a storm, the share refused stays put.

When two cuts show a storm, or a request is refused right after waiting as long as
`Retry-After` asked, the rate goes back to where the first cut found it and is not cut by
the storm's 429s. The storm is tested again each time the rate moves threefold, and judged
afresh every STORM_RECHECK seconds. `exporter.bem.ratelimit` applies the verdicts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

CUT_MARGIN = 0.95
"""A cut aims this share below the rate the last requests got through at."""
LARGEST_CUT, SMALLEST_CUT = 0.5, 0.9
"""A cut multiplies the rate by at least the first and at most the second: one overload in a
quiet stretch still backs off clearly, a burst of them at most halves the rate per check."""
JUDGE_WINDOW = 20
"""Answers that size a cut (the last ones) and judge it (those started after it)."""
HELPED_SHARE = 0.1
"""A share of overloads below this after a cut: the cut helped, the rate is clear again."""
STORM_RECHECK = 30.0
"""Seconds a storm is believed before it is judged afresh (and after one turned out to be a
limit, seconds before another is believed)."""
STORM_DISPROOF = 0.75
"""A storm turns out a limit when what gets through moves this much of the way a limit's would
(on a log scale): more than the half that tells a cut's check, because a storm wrongly taken
for a limit costs cuts through the whole storm."""
STORM_WINDOWS = 2
STORM_RATE_CHANGE = 3.0
"""A storm is watched over this many windows of answers, and tested again once the rate moved
by this factor since it was last measured."""


class Turn(Protocol):
    """A request's turn, as far as the judge needs it (`ratelimit.Ticket`)."""

    @property
    def start(self) -> float: ...

    @property
    def resumed(self) -> bool:
        """The first start after a `Retry-After` pause ended."""
        ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the judge asks of the rate: a cut by `factor`, or a return to `restore`."""

    factor: float = 1.0
    got_through: float = 0.0
    """The share of requests that got through before the cut: the limit is about this share
    of the rate that drew the overloads."""
    restore: float | None = None
    first: bool = False
    """The first cut of a run of cuts (what a storm may undo)."""


@dataclass(slots=True)
class _Tally:
    """Answers to the requests started in a stretch of time: how many, how many overloaded, and
    when the first and the last started."""

    answers: int = 0
    overloaded: int = 0
    first: float = 0.0
    last: float = 0.0
    asked_to_wait: bool = False
    """Whether a 429 came with `Retry-After`: its pauses refill the API's bucket, so what got
    through no longer follows the rate and tells a storm from a limit no more."""

    def add(self, overloaded: bool, now: float, asked_to_wait: bool) -> None:
        self.first = self.first if self.answers else now
        self.answers += 1
        self.overloaded += overloaded
        self.last = now
        self.asked_to_wait |= asked_to_wait

    @property
    def share(self) -> float:
        return self.overloaded / self.answers if self.answers else 0.0

    def reading(self, nominal: float) -> _Reading:
        """What got through, at the rate the requests started (the allowed rate is only a ceiling
        on it: a client with little to do sends less)."""
        span = self.last - self.first
        rate = (self.answers - 1) / span if span > 0 else nominal
        return _Reading(1.0 - self.share, rate)


@dataclass(frozen=True, slots=True)
class _Reading:
    """The share of answers that got through at a rate."""

    through: float
    rate: float


def _rate_moved(before: _Reading, after: _Reading) -> bool:
    return abs(math.log(after.rate / before.rate)) >= math.log(STORM_RATE_CHANGE)


def _like_a_limit(before: _Reading, after: _Reading, *, needs: float = 0.5) -> bool:
    """Whether what got through moved against the rate as under a limit (the same requests per
    second get through at any rate above it) rather than staying put as in a storm (the same
    share refused at any rate). On a log scale, it must move `needs` of the way a limit's would."""
    if before.through <= 0.0 or after.through <= 0.0:
        return True
    moved = math.log(after.through / before.through)
    limit_would = math.log(before.rate / after.rate)
    return moved * limit_would > 0 and abs(moved) > abs(limit_would) * needs


@dataclass(slots=True)
class _Check:
    """The answers to requests started after a cut: did it lower the share of overloads?"""

    cut_at: float
    episode_rate: float
    """The rate before the first cut of this run of cuts: what a storm restores."""
    cuts: int
    before: _Reading
    """What drew the cut."""
    tally: _Tally


@dataclass(slots=True)
class _Storm:
    reference: _Reading | None
    """What got through when the storm was last measured (None until a window of answers did)."""
    tally: _Tally
    since: float


class OverloadJudge:
    """Turns each answer's overload signal into cuts, and tells a rate limit from a storm by
    what a change of rate does to what gets through. Fed in answer order, on the rate's clock."""

    def __init__(self, window: int = JUDGE_WINDOW) -> None:
        self._window = window
        self._recent: deque[tuple[float, bool]] = deque(maxlen=window)
        self._last_cut = -math.inf
        self._check: _Check | None = None
        self._storm: _Storm | None = None
        self._limit_seen = -math.inf
        """When a storm last turned out to be a limit: no storm is believed for a while after."""

    @property
    def checking(self) -> bool:
        """Whether the last cut is still being judged (the rate should not pass the limit found)."""
        return self._check is not None

    @property
    def storm(self) -> bool:
        """Whether overloads come whatever the rate, so they cut nothing."""
        return self._storm is not None

    def answer(
        self, ticket: Turn, overloaded: bool, rate: float, now: float, *, asked_to_wait: bool = False
    ) -> Verdict | None:
        """The answer to the request started at `ticket`, sent at `rate`: a verdict, if one is due.
        `asked_to_wait`: a 429 with `Retry-After`."""
        self._recent.append((ticket.start, overloaded))
        if overloaded and ticket.resumed and self._storm is None and self._may_storm(now):
            # We waited as long as bem asked and were refused again: not a limit on our rate.
            return self._declare_storm(self._check.episode_rate if self._check else rate, None, now)
        if self._check is not None:
            return self._judge(self._check, ticket.start, overloaded, rate, now, asked_to_wait)
        if self._storm is not None:
            return self._watch(self._storm, ticket.start, overloaded, rate, now, asked_to_wait)
        if overloaded and ticket.start > self._last_cut:
            # Requests started before the last cut report the overload it answered.
            return self._cut(self._lately(rate), now, rate, cuts=1)
        return None

    def _lately(self, rate: float) -> _Reading:
        tally = _Tally()
        for moment, overloaded in self._recent:
            tally.add(overloaded, moment, asked_to_wait=False)
        return tally.reading(rate)

    def _may_storm(self, now: float) -> bool:
        return now - self._limit_seen > STORM_RECHECK

    def _declare_storm(self, restore: float, reference: _Reading | None, now: float) -> Verdict:
        self._check = None
        self._storm = _Storm(reference, _Tally(), now)
        return Verdict(restore=restore)

    def _cut(
        self, reading: _Reading, now: float, episode_rate: float, cuts: int, factor: float | None = None
    ) -> Verdict:
        self._last_cut = now
        self._check = _Check(now, episode_rate, cuts, reading, _Tally())
        if factor is None:
            factor = min(max(reading.through * CUT_MARGIN, LARGEST_CUT), SMALLEST_CUT)
        return Verdict(factor=factor, got_through=reading.through, first=cuts == 1)

    def _judge(
        self, check: _Check, start: float, overloaded: bool, rate: float, now: float, asked_to_wait: bool
    ) -> Verdict | None:
        if start <= check.cut_at:
            return None
        check.tally.add(overloaded, start, asked_to_wait)
        if check.tally.answers < self._window:
            return None
        self._check, reading = None, check.tally.reading(rate)
        if check.tally.share < HELPED_SHARE:
            return None
        # The first check's "before" is the onset, often undercounted: only a second cut can
        # show a storm. Restoring the rate then tests the verdict again (see `_watch`).
        stormy = not check.tally.asked_to_wait and not _like_a_limit(check.before, reading)
        if check.cuts >= 2 and stormy and self._may_storm(now):
            return self._declare_storm(check.episode_rate, reading, now)
        return self._cut(reading, now, check.episode_rate, check.cuts + 1)

    def _watch(
        self, storm: _Storm, start: float, overloaded: bool, rate: float, now: float, asked_to_wait: bool
    ) -> Verdict | None:
        """Every two windows of answers: a storm ends when it passes, or when what gets through
        moved against a changed rate as under a limit (then the rate is cut to what got
        through). It is judged afresh every STORM_RECHECK seconds: under `Retry-After` pauses
        what gets through says little, and a limit may hide behind the storm."""
        if now - storm.since > STORM_RECHECK:
            self._storm = None
            return None
        storm.tally.add(overloaded, start, asked_to_wait)
        if storm.tally.answers < STORM_WINDOWS * self._window:
            return None
        tally, storm.tally = storm.tally, _Tally()
        reading = tally.reading(rate)
        if tally.share < HELPED_SHARE:
            self._storm = None
        elif tally.asked_to_wait:
            pass  # what gets through between pauses says little: left to STORM_RECHECK
        elif storm.reference is None:
            storm.reference = reading
        elif not _rate_moved(storm.reference, reading):
            pass  # no experiment yet: the rate has not moved enough to tell
        elif _like_a_limit(storm.reference, reading, needs=STORM_DISPROOF):
            self._storm, self._limit_seen = None, now
            # The readings measured the limit: straight to just below what got through.
            found = reading.through * reading.rate * CUT_MARGIN
            return self._cut(reading, now, rate, cuts=1, factor=min(found / rate, SMALLEST_CUT))
        else:
            storm.reference = reading
        return None

"""An adaptive request rate: as fast as bem allows, found by probing, never above a ceiling.

bem publishes no rate limits, so the rate is learnt the way TCP learns a link: start low,
grow e-fold every second while requests succeed ("slow start"). An overload signal (a 429, or
a latency far above the best seen, the sign of an API queueing our requests) cuts the rate,
by as much as the share of overloads in the last requests says the rate is over a limit; a
`Retry-After`, when sent, also pauses every request start. After a cut the rate climbs back
quickly towards where the overload came, lingers just below it, then probes past it, slowly
at first and faster the longer no 429 comes (TCP CUBIC's shape), so 429s stay rare and a
raised limit is still found. Growth happens only while the rate is what holds requests back:
an idle exporter does not talk itself into a rate it never tried.

Not every 429 is about our rate: an API under load, or a storm of errors, answers a share of
requests 429 whatever the rate. `OverloadJudge` tells the two apart by what a cut does: a rate
limit's 429s stop once the rate is below it, a storm's keep their share. When two cuts in a
row leave the share where it was, the rate goes back to what it was before them and holds
against the storm (only `Retry-After` is honoured) until the share changes.
Measured against the simulator's token bucket: docs/performance.md, "Adaptive request rate".
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

INITIAL_RATE = 5.0
"""Requests per second at start (or the ceiling, if lower)."""
MIN_RATE = 0.5
"""Requests per second the rate never falls below (nor the ceiling, if lower)."""
SLOW_START_STEP = 1.0
"""Rate added per successful request before the first cut: the rate grows e-fold (x2.7)
each second of paced requests, from 5 to 100 requests/s in about 3 s."""
AVOIDANCE_STEP = 0.01
PROBE_RAMP = 60.0
"""At or above the limit the last cut found, the rate grows by AVOIDANCE_STEP (1 %) per second
for every PROBE_RAMP seconds spent there (convex, as TCP CUBIC probes): a limit that was
raised or lifted is found within two minutes, while probing past an unchanged one stays rare
(at 5 requests/s with a one-second burst, one 429 in about a hundred requests)."""
PLATEAU_STEP = 0.001
"""The least rate added per successful request (0.1 % more per second), so the rate lingers
just below the limit it found instead of crossing it again soon."""
RECOVERY = 0.5
"""Below the last cut's rate, growth per second is this share of the gap to it: back near
the limit within a few seconds of a cut, then slowly (concave, as TCP CUBIC grows)."""
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
LATENCY_FACTOR = 4.0
"""Smoothed latency above this multiple of the best seen (and LATENCY_MARGIN seconds above it)
means requests queue at the API."""
LATENCY_MARGIN = 0.5
"""Seconds: below this excess, a slower answer is more likely this process's own busy event
loop (on a loaded machine it measured up to 0.3 s) than bem queueing."""
LATENCY_SMOOTHING = 0.2
LATENCY_WARMUP = 20
"""Answers before latency is judged: the first ones pay for new connections and are no baseline."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request's turn: when it may start, and whether the rate made it wait."""

    start: float
    paced: bool
    resumed: bool = False
    """The first start after a `Retry-After` pause ended."""


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
        self, ticket: Ticket, overloaded: bool, rate: float, now: float, *, asked_to_wait: bool = False
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
            return self._watch(self._storm, ticket, overloaded, rate, now, asked_to_wait)
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
        self, storm: _Storm, ticket: Ticket, overloaded: bool, rate: float, now: float, asked_to_wait: bool
    ) -> Verdict | None:
        """Every two windows of answers: a storm ends when it passes, or when what gets through
        moved against a changed rate as under a limit (then the rate is cut to what got
        through). It is judged afresh every STORM_RECHECK seconds: under `Retry-After` pauses
        what gets through says little, and a limit may hide behind the storm."""
        if now - storm.since > STORM_RECHECK:
            self._storm = None
            return None
        storm.tally.add(overloaded, ticket.start, asked_to_wait)
        if storm.tally.answers < STORM_WINDOWS * self._window:
            return None
        tally, storm.tally = storm.tally, _Tally()
        reading = tally.reading(rate)
        if tally.share < HELPED_SHARE:
            self._storm = None
        elif tally.asked_to_wait:
            pass  # what gets through between pauses says little: left to STORM_RECHECK
        elif storm.reference is None or abs(math.log(reading.rate / storm.reference.rate)) < math.log(
            STORM_RATE_CHANGE
        ):
            storm.reference = storm.reference or reading
        elif _like_a_limit(storm.reference, reading, needs=STORM_DISPROOF):
            self._storm, self._limit_seen = None, now
            # The readings measured the limit: straight to just below what got through.
            found = reading.through * reading.rate * CUT_MARGIN
            return self._cut(reading, now, rate, cuts=1, factor=min(found / rate, SMALLEST_CUT))
        else:
            storm.reference = reading
        return None


class AdaptiveRate:
    """Paces request starts. `acquire()` before each request returns its start ticket;
    report the outcome with `succeeded` or `throttled` and that ticket."""

    def __init__(
        self, ceiling: float, *, initial: float = INITIAL_RATE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ceiling <= 0:
            raise ValueError("ceiling must be > 0")
        self._ceiling = ceiling
        self._least = min(MIN_RATE, ceiling)
        self._rate = min(max(initial, self._least), ceiling)
        self._clock = clock
        self._judge = OverloadJudge()
        self._last_start = -math.inf
        self._paused_until = 0.0
        self._resume_pending = False
        self._slow_start = True
        self._slow_start_before = True
        self._peak = math.inf
        """The rate the last cut found the limit at."""
        self._above_since: float | None = None
        self._best_latency = math.inf
        self._latency: float | None = None
        self._answers = 0
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """Requests per second now allowed."""
        return self._rate

    @property
    def storm(self) -> bool:
        """Whether 429s (or slow answers) are coming whatever the rate, so they cut nothing."""
        return self._judge.storm

    @property
    def paused_for(self) -> float:
        """Seconds left of a `Retry-After` pause."""
        return max(self._paused_until - self._clock(), 0.0)

    async def acquire(self) -> Ticket:
        """Wait for this request's turn. Requests queue in order and only the first waits for
        the clock, its turn counted from the last start at the rate in force when it comes: a
        cut, a rise or a `Retry-After` pause applies to every request still waiting (turns
        booked ahead at an old rate would send a dozen requests at the rate that drew a cut, or
        hold a growing rate back for seconds)."""
        paced = self._lock.locked()  # others ahead: the rate holds this one back too
        async with self._lock:
            while True:
                now = self._clock()
                start = max(now, self._last_start + 1.0 / self._rate, self._paused_until)
                if start <= now:
                    break
                paced = True
                await asyncio.sleep(start - now)
            self._last_start = now
            resumed, self._resume_pending = self._resume_pending, False
        return Ticket(now, paced=paced, resumed=resumed)

    def succeeded(self, ticket: Ticket, latency: float) -> None:
        queueing = self._queueing(latency)
        self._heed(ticket, overloaded=queueing)
        if ticket.paced and not queueing:
            # While a cut is judged, the rate may recover towards the limit found, not past it.
            top = min(self._peak, self._ceiling) if self._judge.checking else self._ceiling
            self._rate = max(min(self._rate + self._step(), top), self._rate)

    def throttled(self, ticket: Ticket, retry_after: float | None) -> None:
        """A 429 for the request started at `ticket`; `retry_after` in seconds, if sent."""
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
            self._resume_pending = True
        self._heed(ticket, overloaded=True, asked_to_wait=retry_after is not None)

    def _heed(self, ticket: Ticket, overloaded: bool, asked_to_wait: bool = False) -> None:
        verdict = self._judge.answer(ticket, overloaded, self._rate, self._clock(), asked_to_wait=asked_to_wait)
        if verdict is None:
            return
        if verdict.restore is not None:
            # Back to where the storm found the rate, growing as it was (a storm during the
            # first seconds must not leave a backfill at the initial rate).
            self._rate = self._peak = min(verdict.restore, self._ceiling)
            self._slow_start = self._slow_start_before
            return
        if verdict.first:
            self._slow_start_before = self._slow_start
        self._slow_start = False
        before = self._rate
        self._rate = max(before * verdict.factor, self._least)
        self._peak = max(before * verdict.got_through, self._rate)

    def _step(self) -> float:
        """Rate added per successful request: `step` x requests per second = `step` per second."""
        if self._slow_start:
            return SLOW_START_STEP
        if self._rate >= self._peak:
            now = self._clock()
            self._above_since = now if self._above_since is None else self._above_since
            probing = AVOIDANCE_STEP * (now - self._above_since) / PROBE_RAMP
            return min(max(PLATEAU_STEP, probing), SLOW_START_STEP)
        self._above_since = None
        return max(PLATEAU_STEP, RECOVERY * (self._peak - self._rate) / self._peak)

    def _queueing(self, latency: float) -> bool:
        self._answers += 1
        self._best_latency = min(self._best_latency, latency)
        previous = latency if self._latency is None else self._latency
        self._latency = previous + LATENCY_SMOOTHING * (latency - previous)
        excess = self._latency - self._best_latency
        rising = self._latency > LATENCY_FACTOR * self._best_latency and excess > LATENCY_MARGIN
        return rising and self._answers > LATENCY_WARMUP

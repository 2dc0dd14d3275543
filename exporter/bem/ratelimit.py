"""An adaptive request rate: as fast as bem allows, found by probing, never above a ceiling.

bem publishes no rate limits, so the rate is learnt the way TCP learns a link. Its states:

- **starting**: from 5 requests/s, +1 per request that had to wait for its turn (e-fold per
  second while the rate is what holds requests back) until the first cut, which halves it;
- **checking**: a 429 cut the rate to just under what got through; the next answers tell
  whether the cut found the limit (`exporter.bem.overload` sizes and judges the cuts);
- **steady**: the cut held: the rate climbs back towards the limit found along TCP CUBIC's
  curve, quickly at first, then slower as it nears it;
- **probing**: past the limit found without a 429, slowly at first and faster the longer none
  comes, so an unchanged limit is crossed rarely and a raised one is found within minutes;
- **storm**: 429s that come whatever the rate: the rate is back where they found it, and they
  cut nothing for a while.

docs/performance.md ("The request rate") says the same for operators, with figures.

Each decision (`DECISIONS`) is logged once at info with its reason and figures, and handed to
`decided` (the self-metrics and /status). Growth is counted in time spent waiting for turns,
so an idle exporter does not talk itself into a rate it never tried. A `Retry-After`, when
sent, pauses every request start. The rate is never above `ceiling`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

from exporter.bem.overload import LARGEST_CUT, STORM_HOLD, Answer, OverloadJudge, Reading, Verdict

log = logging.getLogger(__name__)

INITIAL_RATE = 5.0
"""Requests per second at start (or the ceiling, if lower)."""
MIN_RATE = 0.5
"""Requests per second the rate never falls below (nor the ceiling, if lower)."""
SLOW_START_STEP = 1.0
"""Rate added per request that waited for its turn while starting: e-fold per second."""
PROBE_CURVE = 4e-6
"""CUBIC's constant, relative to the limit found: after a cut the rate is
`limit x (1 + PROBE_CURVE x (t - k)^3)`, t the seconds spent waiting for turns since, k when
the curve is back at the limit. After a 5 % cut: within 1 % of the limit in 12 s, back at it
in 23 s, 10 % past it 29 s later, twice it after 86 s."""

RateState = Literal["starting", "checking", "steady", "probing", "storm"]
DecisionKind = Literal["cut", "limit", "storm", "calm", "probe", "ceiling"]
DECISIONS: Final[tuple[DecisionKind, ...]] = ("cut", "limit", "storm", "calm", "probe", "ceiling")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request's turn: when it may start, and whether the rate made it wait."""

    start: float
    paced: bool
    resumed: bool = False
    """The first start after a `Retry-After` pause."""


@dataclass(frozen=True, slots=True)
class RateDecision:
    """A change the adaptive rate made, and why: what the log, the metrics and /status show."""

    kind: DecisionKind
    state: RateState
    """The state the decision left the rate in."""
    rate: float
    rate_before: float
    limit: float | None
    """Requests per second the last cut found getting through (None before the first cut)."""
    reason: str


@dataclass(frozen=True, slots=True)
class _Curve:
    """CUBIC after a cut: `limit` is what got through, `k` when the curve is back at it, `t`
    the seconds spent waiting for turns since the cut."""

    limit: float
    k: float
    t: float = 0.0

    @classmethod
    def after_cut(cls, rate: float, limit: float) -> _Curve:
        gap = (1.0 - rate / limit) / PROBE_CURVE
        return cls(limit, math.copysign(abs(gap) ** (1 / 3), gap))

    def rate(self) -> float:
        return self.limit * (1.0 + PROBE_CURVE * (self.t - self.k) ** 3)


@dataclass(frozen=True, slots=True)
class _Course:
    """What a storm verdict goes back to: the rate and its growth before the first cut."""

    rate: float
    state: RateState
    curve: _Curve | None


def _ignore(_: RateDecision) -> None:
    return None


class AdaptiveRate:
    """Paces request starts. `acquire()` before each request returns its start ticket;
    report the outcome with `succeeded` or `throttled` and that ticket."""

    def __init__(
        self,
        ceiling: float,
        *,
        initial: float = INITIAL_RATE,
        clock: Callable[[], float] = time.monotonic,
        decided: Callable[[RateDecision], None] = _ignore,
    ) -> None:
        if ceiling <= 0:
            raise ValueError("ceiling must be > 0")
        self._ceiling = ceiling
        self._least = min(MIN_RATE, ceiling)
        self._rate = min(max(initial, self._least), ceiling)
        self._clock = clock
        self._decided = decided
        self._judge = OverloadJudge()
        self._state: RateState = "starting"
        self._curve: _Curve | None = None
        """None while starting."""
        self._before_cuts: _Course | None = None
        """Set by the first cut of a run, until its verdict."""
        self._last_start = -math.inf
        self._paused_until = 0.0
        self._resume_pending = False
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """Requests per second now allowed."""
        return self._rate

    @property
    def state(self) -> RateState:
        return self._state

    @property
    def storm(self) -> bool:
        """Whether 429s are taken to come whatever the rate, so they cut nothing."""
        return self._state == "storm"

    @property
    def paused_for(self) -> float:
        """Seconds left of a `Retry-After` pause."""
        return max(self._paused_until - self._clock(), 0.0)

    async def acquire(self) -> Ticket:
        """Wait for this request's turn. Requests queue in order and only the first waits for
        the clock, its turn counted from the last start at the rate in force when it comes: a
        cut, a rise or a `Retry-After` pause applies to every request still waiting."""
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

    def succeeded(self, ticket: Ticket) -> None:
        self._heed(Answer(ticket.start, resumed=ticket.resumed))
        if ticket.paced:
            self._grow()

    def throttled(self, ticket: Ticket, retry_after: float | None) -> None:
        """A 429 for the request started at `ticket`; `retry_after` in seconds, if sent."""
        paused = retry_after is not None and retry_after > 0
        if retry_after is not None and paused:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
            self._resume_pending = True
        self._heed(Answer(ticket.start, refused=True, paused=paused, resumed=ticket.resumed))

    # --- growth -----------------------------------------------------------------------------

    def _grow(self) -> None:
        before, curve = self._rate, self._curve
        if curve is None:
            grown = before + SLOW_START_STEP
        else:
            self._curve = curve = replace(curve, t=curve.t + 1.0 / before)
            # While a cut is judged, the rate may climb back towards the limit found, not past it.
            grown = min(curve.rate(), curve.limit) if self._judge.checking else curve.rate()
        self._rate = min(max(grown, before), self._ceiling)
        if self._state == "steady" and curve is not None and self._rate >= curve.limit:
            self._decide("probe", "probing", before, f"no 429 up to the limit found ({curve.limit:.3g}/s)")
        if self._rate == self._ceiling and before < self._ceiling:
            self._decide("ceiling", self._state, before, f"the rate reached BEM_MAX_RPS ({self._ceiling:g}/s)")

    # --- verdicts -----------------------------------------------------------------------------

    def _heed(self, answer: Answer) -> None:
        verdict = self._judge.answer(answer, self._rate, self._clock())
        if verdict is None:
            return
        if verdict.kind == "cut":
            self._cut(verdict)
        elif verdict.kind == "limit":
            self._limit(verdict.reading)
        elif verdict.kind == "storm":
            self._storm(verdict.reading)
        else:
            self._calm()

    def _cut(self, verdict: Verdict) -> None:
        before, reading = self._rate, verdict.reading
        if self._before_cuts is None:
            self._before_cuts = _Course(before, self._state, self._curve)
        # The first cut halves the rate, as TCP leaves slow start: e-fold growth may have
        # overshot the limit well before a 429 told of it.
        factor = LARGEST_CUT if self._state == "starting" else verdict.factor
        self._rate = max(reading.rate * factor, self._least)
        limit = max(verdict.limit, self._rate)
        self._curve = _Curve.after_cut(self._rate, limit)
        why = "429s" if verdict.first else "the last cut did not clear the 429s"
        self._decide("cut", "checking", before, f"{why}: {_figures(reading)}; about {limit:.3g}/s get through")

    def _limit(self, reading: Reading) -> None:
        self._before_cuts = None
        found = self._curve.limit if self._curve is not None else self._rate
        state: RateState = "probing" if self._rate >= found else "steady"
        self._decide("limit", state, self._rate, f"the cut held: {_figures(reading)}; limit about {found:.3g}/s")

    def _storm(self, reading: Reading) -> None:
        before = self._rate
        course = self._before_cuts or _Course(before, self._state, self._curve)
        self._rate, self._curve, self._before_cuts = course.rate, course.curve, course
        why = f"429s whatever the rate: {_figures(reading)}; back to {course.rate:.3g}/s"
        self._decide("storm", "storm", before, f"{why}, and no 429 cuts it for {STORM_HOLD:g} s")

    def _calm(self) -> None:
        course, curve = self._before_cuts, self._curve
        self._before_cuts = None
        state: RateState = "starting" if course is None else course.state
        if curve is not None:
            state = "probing" if self._rate >= curve.limit else "steady"
        self._decide("calm", state, self._rate, f"{STORM_HOLD:g} s since the storm verdict: 429s are judged afresh")

    def _decide(self, kind: DecisionKind, state: RateState, before: float, reason: str) -> None:
        self._state = state
        limit = self._curve.limit if self._curve is not None else None
        decision = RateDecision(kind, state, self._rate, before, limit, reason)
        fields = {
            "decision": kind,
            "state": state,
            "rate": round(self._rate, 3),
            "rate_before": round(before, 3),
            "limit_found": None if limit is None else round(limit, 3),
        }
        log.info("request rate %s: %s", kind, reason, extra=fields)
        self._decided(decision)


def _figures(reading: Reading) -> str:
    return f"{reading.refused} of {reading.answers} answers refused at {reading.rate:.3g}/s"

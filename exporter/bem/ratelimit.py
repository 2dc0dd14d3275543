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

Not every 429 is about our rate: `exporter.bem.overload` decides when to cut and how far,
and tells a limit from a storm of 429s that come whatever the rate.
Measured against the simulator's token bucket: docs/performance.md, "Adaptive request rate".
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.bem.overload import OverloadJudge

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

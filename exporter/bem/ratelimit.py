"""An adaptive request rate: as fast as bem allows, found by probing, never above a ceiling.

bem publishes no rate limits, so the rate is learnt the way TCP learns a link: start low,
grow e-fold every second while requests succeed ("slow start"). A 429 cuts the rate
multiplicatively (and `Retry-After`, when sent, pauses every request start); so does a latency
that rises far above the best one seen, the sign of an API queueing our requests. After a 429
the rate climbs back quickly towards the rate that drew it, lingers just below it, then probes
past it, slowly at first and faster the longer no 429 comes (TCP CUBIC's shape), so 429s stay
rare and a raised limit is still found. Growth happens only while the rate is what holds
requests back: an idle exporter does not talk itself into a rate it never tried.
Measured against the simulator's token bucket: docs/performance.md, "Adaptive request rate".
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

INITIAL_RATE = 5.0
"""Requests per second at start (or the ceiling, if lower)."""
FLOOR_RATE = 0.5
FLOOR_SHARE = 0.1
"""The rate never falls below this share of the ceiling (nor below FLOOR_RATE): 429s that
are not about our rate (a storm, a neighbour's load) must not slow a backfill to a crawl; a
limit below it is still honoured through `Retry-After` pauses, and an account with a known
small quota sets BEM_MAX_RPS to it."""
SLOW_START_STEP = 1.0
"""Rate added per successful request before the first throttle: the rate grows e-fold (x2.7)
each second of paced requests, from 5 to 100 requests/s in about 3 s."""
AVOIDANCE_STEP = 0.01
"""Rate added per successful request at or above the rate of the last throttle, per second
spent there: 1 % more per second at first, then faster (convex, as TCP CUBIC probes), so a
limit that was raised or lifted is found within seconds, not minutes."""
PLATEAU_STEP = 0.002
"""The least rate added per successful request below the last throttle's rate: 0.2 % more per
second, so the rate lingers just below the limit it found instead of crossing it again soon."""
RECOVERY = 0.5
"""Below the last throttle's rate, growth per second is this share of the gap to it: back near
the limit within a few seconds of a cut, then slowly (concave, as TCP CUBIC grows)."""
THROTTLE_CUT = 0.85
"""The rate is multiplied by this on a 429."""
LATENCY_CUT = 0.9
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


class AdaptiveRate:
    """Paces request starts. `acquire()` before each request returns its start ticket;
    report the outcome with `succeeded` or `throttled` and that ticket."""

    def __init__(
        self, ceiling: float, *, initial: float = INITIAL_RATE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ceiling <= 0:
            raise ValueError("ceiling must be > 0")
        self._ceiling = ceiling
        self._floor = min(max(FLOOR_RATE, ceiling * FLOOR_SHARE), ceiling)
        self._rate = min(max(initial, self._floor), ceiling)
        self._clock = clock
        self._next_start = 0.0
        self._paused_until = 0.0
        self._last_cut = -math.inf
        self._slow_start = True
        self._peak = math.inf
        """The rate at the last throttle: the limit is about there."""
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
    def floor(self) -> float:
        """Requests per second the rate never falls below."""
        return self._floor

    @property
    def paused_for(self) -> float:
        """Seconds left of a `Retry-After` pause."""
        return max(self._paused_until - self._clock(), 0.0)

    async def acquire(self) -> Ticket:
        """Wait for this request's turn. A `Retry-After` pause that begins while a request waits
        for its turn moves that turn past the pause."""
        paced = False
        while True:
            async with self._lock:
                now = self._clock()
                start = max(now, self._next_start, self._paused_until)
                self._next_start = start + 1.0 / self._rate
            if start > now:
                paced = True
                await asyncio.sleep(start - now)
            if self._paused_until <= start:
                return Ticket(start, paced=paced)

    def succeeded(self, ticket: Ticket, latency: float) -> None:
        if self._queueing(latency):
            self._cut(ticket, LATENCY_CUT)
        elif ticket.paced:
            self._rate = min(self._rate + self._step(), self._ceiling)

    def _step(self) -> float:
        """Rate added per successful request: `step` x requests per second = `step` per second."""
        if self._slow_start:
            return SLOW_START_STEP
        if self._rate >= self._peak:
            now = self._clock()
            self._above_since = now if self._above_since is None else self._above_since
            return min(AVOIDANCE_STEP * (1.0 + now - self._above_since), SLOW_START_STEP)
        self._above_since = None
        return max(PLATEAU_STEP, RECOVERY * (self._peak - self._rate) / self._peak)

    def throttled(self, ticket: Ticket, retry_after: float | None) -> None:
        """A 429 for the request started at `ticket`; `retry_after` in seconds, if sent."""
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
        self._slow_start = False
        if self._cut(ticket, THROTTLE_CUT):
            self._peak = self._rate / THROTTLE_CUT

    def _cut(self, ticket: Ticket, factor: float) -> bool:
        """Cut the rate, unless the overload was already answered; True when it was cut."""
        # Requests started before the last cut report the same overload: one cut for all.
        if ticket.start <= self._last_cut:
            return False
        self._last_cut = self._clock()
        self._rate = max(self._rate * factor, self._floor)
        return True

    def _queueing(self, latency: float) -> bool:
        self._answers += 1
        self._best_latency = min(self._best_latency, latency)
        previous = latency if self._latency is None else self._latency
        self._latency = previous + LATENCY_SMOOTHING * (latency - previous)
        excess = self._latency - self._best_latency
        rising = self._latency > LATENCY_FACTOR * self._best_latency and excess > LATENCY_MARGIN
        return rising and self._answers > LATENCY_WARMUP

"""An adaptive request rate: as fast as bem allows, found by probing, never above a ceiling.

bem publishes no rate limits, so the rate is learnt the way TCP learns a link: start low,
double every second while requests succeed ("slow start"), and after the first throttle grow
by a small share per second ("congestion avoidance"). A 429 cuts the rate multiplicatively
(and `Retry-After`, when sent, pauses every request start); so does a latency that rises far
above the best one seen, the sign of an API queueing our requests. Growth happens only while
the rate is what holds requests back: an idle exporter does not talk itself into a rate it
never tried.
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
SLOW_START_STEP = math.log(2)
"""Rate added per successful request before the first throttle: doubles the rate each second."""
AVOIDANCE_STEP = 0.01
"""Rate added per successful request after it: 1 % more per second, so a limit is crossed
rarely (about once every 10 s at most) and 429s stay a small share of requests."""
THROTTLE_CUT = 0.85
"""The rate is multiplied by this on a 429."""
LATENCY_CUT = 0.9
LATENCY_FACTOR = 4.0
"""Smoothed latency above this multiple of the best seen (and LATENCY_MARGIN seconds above it)
means requests queue at the API."""
LATENCY_MARGIN = 0.25
LATENCY_SMOOTHING = 0.2


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
        self._rate = min(initial, ceiling)
        self._clock = clock
        self._next_start = 0.0
        self._paused_until = 0.0
        self._last_cut = -math.inf
        self._slow_start = True
        self._best_latency = math.inf
        self._latency: float | None = None
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """Requests per second now allowed."""
        return self._rate

    @property
    def paused_for(self) -> float:
        """Seconds left of a `Retry-After` pause."""
        return max(self._paused_until - self._clock(), 0.0)

    async def acquire(self) -> Ticket:
        """Wait for this request's turn."""
        async with self._lock:
            now = self._clock()
            start = max(now, self._next_start, self._paused_until)
            self._next_start = start + 1.0 / self._rate
        if start > now:
            await asyncio.sleep(start - now)
        return Ticket(start, paced=start > now)

    def succeeded(self, ticket: Ticket, latency: float) -> None:
        if self._queueing(latency):
            self._cut(ticket, LATENCY_CUT)
        elif ticket.paced:
            step = SLOW_START_STEP if self._slow_start else AVOIDANCE_STEP
            self._rate = min(self._rate + step, self._ceiling)

    def throttled(self, ticket: Ticket, retry_after: float | None) -> None:
        """A 429 for the request started at `ticket`; `retry_after` in seconds, if sent."""
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
        self._slow_start = False
        self._cut(ticket, THROTTLE_CUT)

    def _cut(self, ticket: Ticket, factor: float) -> None:
        # Requests started before the last cut report the same overload: one cut for all.
        if ticket.start <= self._last_cut:
            return
        self._last_cut = self._clock()
        self._rate = max(self._rate * factor, FLOOR_RATE)

    def _queueing(self, latency: float) -> bool:
        self._best_latency = min(self._best_latency, latency)
        previous = latency if self._latency is None else self._latency
        self._latency = previous + LATENCY_SMOOTHING * (latency - previous)
        excess = self._latency - self._best_latency
        return self._latency > LATENCY_FACTOR * self._best_latency and excess > LATENCY_MARGIN

"""Which calls webhooks asked the poll loop to read, and when: the hint schedule.

Hints only bring reads forward; they never count (the batch does, once, whoever asked). The
schedule keeps the cost bounded whatever arrives:

- a call named by an event is read at the next step; one seen still pending or running is read
  again after `FIRST_RECHECK`, doubling up to `MAX_RECHECK`, until `FOLLOW_FOR` after its last
  event (an event may arrive before bem marks the call finished; after that the poll's refresh
  follows it);
- steps are at least `STEP_GAP` apart and read every call due in one request per 100 calls, so
  a flood of deliveries costs a few requests a second, not one per delivery;
- a call settled (counted, already handled, or not listed) is remembered, and events naming it
  again cost nothing;
- any event also asks for a listing (new calls, events without a call), at most one early
  listing per `LISTING_GAP`, and none while a regular cycle listed more recently.

Times are the event loop's monotonic clock. Everything runs in the event loop's thread: the
listener notes hints, the poll loop's task takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

FIRST_RECHECK: Final = 0.25
MAX_RECHECK: Final = 2.0
FOLLOW_FOR: Final = 10.0
STEP_GAP: Final = 0.5
LISTING_GAP: Final = 1.0
MAX_FOLLOWED: Final = 10_000
"""Calls followed at once; hints for more only ask for a listing (the poll reconciles)."""
SETTLED_KEPT: Final = 10_000


@dataclass(slots=True)
class _Follow:
    due: float
    recheck: float
    until: float


class HintQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._follows: dict[str, _Follow] = {}
        self._settled: OrderedDict[str, None] = OrderedDict()
        self._listing_wanted: float | None = None
        """When the oldest hint not yet covered by a listing arrived."""
        self._last_listing = -math.inf
        self._last_step = -math.inf
        self._arrived = asyncio.Event()
        self.noted = 0
        """Hints received so far (status page)."""

    @property
    def followed(self) -> int:
        return len(self._follows)

    def note(self, call_id: str | None) -> None:
        """An accepted event: read `call_id` soon (when it names one), and list soon."""
        now = self._clock()
        self.noted += 1
        if self._listing_wanted is None:
            self._listing_wanted = now
        if call_id is not None and call_id not in self._settled:
            self._follow(call_id, now)
        self._arrived.set()

    def _follow(self, call_id: str, now: float) -> None:
        follow = self._follows.get(call_id)
        if follow is None:
            if len(self._follows) < MAX_FOLLOWED:
                self._follows[call_id] = _Follow(now, FIRST_RECHECK, now + FOLLOW_FOR)
            return
        # A new event of a call being followed: read it at the next step, and follow it longer.
        follow.due, follow.recheck, follow.until = min(follow.due, now), FIRST_RECHECK, now + FOLLOW_FOR

    def next_due(self) -> float | None:
        """When the next step should run, or None when nothing waits."""
        times = [follow.due for follow in self._follows.values()]
        if self._listing_wanted is not None:
            times.append(self._last_listing + LISTING_GAP)
        if not times:
            return None
        return max(min(times), self._last_step + STEP_GAP)

    def take_due(self) -> tuple[list[str], bool]:
        """The calls to read now, and whether to list now. Until `running` or `settled` says
        what the read found, each is due again after its backoff (a step that failed before
        saying anything loses no call)."""
        now = self._clock()
        self._last_step = now
        due = [call_id for call_id, follow in self._follows.items() if follow.due <= now]
        for call_id in due:
            follow = self._follows[call_id]
            follow.due = now + follow.recheck
        listing = self._listing_wanted is not None and now >= self._last_listing + LISTING_GAP
        if listing:
            self._listed(now)
        return due, listing

    def listed(self) -> None:
        """A regular cycle starts listing now: hints older than it need no early listing."""
        self._listed(self._clock())

    def _listed(self, at: float) -> None:
        self._last_listing = max(self._last_listing, at)
        if self._listing_wanted is not None and self._listing_wanted <= at:
            self._listing_wanted = None

    def running(self, call_ids: Iterable[str]) -> None:
        """Read and still in progress (or not readable now): again after the backoff, until
        `FOLLOW_FOR` after the call's last event."""
        now = self._clock()
        for call_id in call_ids:
            follow = self._follows.get(call_id)
            if follow is None:
                continue
            if now >= follow.until:
                del self._follows[call_id]
                continue
            follow.due = now + follow.recheck
            follow.recheck = min(follow.recheck * 2, MAX_RECHECK)

    def settled(self, call_ids: Iterable[str]) -> None:
        """Counted, already handled, or not a call the exporter watches: never read again for a hint."""
        for call_id in call_ids:
            self._follows.pop(call_id, None)
            self._settled[call_id] = None
            self._settled.move_to_end(call_id)
        while len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)

    async def wait(self, timeout: float) -> None:
        """Until a hint arrives or `timeout` seconds passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout=max(timeout, 0.0))
        self._arrived.clear()

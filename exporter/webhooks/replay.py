"""Events already accepted, remembered for as long as their deliveries could still pass.

A signed delivery older than the tolerance is refused as stale, so an event needs remembering
only for the tolerance on either side of now (bem's retries carry the same `eventID` under a
new signature). The memory is bounded: past `limit` events the oldest are forgotten first, and
a repeat of a forgotten one is acted on again, which costs at most a read (webhooks never
count).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

DEFAULT_LIMIT = 100_000
"""Event ids remembered at most (about 10 MiB)."""


class SeenEvents:
    def __init__(self, window: float, clock: Callable[[], float], limit: int = DEFAULT_LIMIT) -> None:
        self._window = window
        self._clock = clock
        self._limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, event_id: str) -> bool:
        self._forget_expired()
        return event_id in self._expiry

    def remember(self, event_id: str) -> None:
        self._expiry[event_id] = self._clock() + self._window
        self._expiry.move_to_end(event_id)
        while len(self._expiry) > self._limit:
            self._expiry.popitem(last=False)

    def _forget_expired(self) -> None:
        now = self._clock()
        while self._expiry:
            event_id, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[event_id]

"""The webhook section of the status page: what the listener received and what it led to.

Figures only (counts by result, times, a delay): nothing of a delivery, and the listener's
address as the settings show it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Handover = Literal["memory", "postgres"]
"""How an accepted hint reaches the polling replica: in this process, or through the shared state."""


@dataclass(frozen=True, slots=True)
class WebhookSummary:
    url: str | None
    """Where the listener answers (`.../webhook`); None until it listens."""
    handover: Handover
    received: tuple[tuple[str, int], ...]
    """(result, deliveries) in the contract's order."""
    last_accepted_at: float | None
    last_delay_seconds: float | None
    """From the last accepted event's createdAt to its receipt."""
    last_refused: str | None
    last_refused_at: float | None
    followed: int
    """Calls this replica follows for webhooks now (the leader's poll loop)."""
    read: int
    """Call records read because webhooks named them."""
    counted: int
    """Calls counted by reads and listings that webhooks brought forward."""


class WebhookBoard:
    """Fed by the intake (a `Watcher`) and the poll loop's hinted steps; thread-safe."""

    def __init__(self, results: Sequence[str], handover: Handover, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._received = dict.fromkeys(results, 0)
        self._handover: Handover = handover
        self._url: str | None = None
        self._accepted_at: float | None = None
        self._delay: float | None = None
        self._refused: tuple[str, float] | None = None
        self._followed = 0
        self._read = 0
        self._counted = 0

    def listening(self, url: str) -> None:
        with self._lock:
            self._url = url

    def webhook_received(self, result: str, delay: float | None) -> None:
        now = self._clock()
        with self._lock:
            self._received[result] = self._received.get(result, 0) + 1
            if result == "accepted":
                self._accepted_at, self._delay = now, delay
            elif result != "duplicate":
                self._refused = (result, now)

    def hints_followed(self, read: int, counted: int, followed: int) -> None:
        with self._lock:
            self._read += read
            self._counted += counted
            self._followed = followed

    def summary(self) -> WebhookSummary:
        with self._lock:
            refused, refused_at = self._refused or (None, None)
            return WebhookSummary(
                url=self._url,
                handover=self._handover,
                received=tuple(self._received.items()),
                last_accepted_at=self._accepted_at,
                last_delay_seconds=self._delay,
                last_refused=refused,
                last_refused_at=refused_at,
                followed=self._followed,
                read=self._read,
                counted=self._counted,
            )

"""What the simulated bem did with each webhook delivery: the ground truth tests compare with."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Literal

Signing = Literal["valid", "wrong_secret", "stale", "unsigned"]
"""How an attempt was signed: with the account's secret, another one, a `t=` long past, or not at all."""
Outcome = Literal["scheduled", "dropped", "duplicated", "reordered", "delivered", "retried", "given_up"]
"""What the counts count: deliveries scheduled (one per event and matching subscription, and
the second copies of duplicated ones), dropped by the knob (never attempted), duplicated, held
back to be reordered, answered 2xx, attempts retried, and deliveries given up after their last
attempt."""

ATTEMPTS_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class Attempt:
    event_id: str
    event_type: str
    call_id: str | None
    subscription_id: str
    attempt: int
    """1 for the first try of a delivery, 2 for its first retry, ..."""
    copy: int
    """0, or 1 for the second copy of a duplicated delivery."""
    signing: Signing
    status: int | None
    """The HTTP status answered; None: no answer (refused, reset, timed out)."""
    sent_at: float
    """Simulator clock (seconds since the epoch) when the attempt started."""


class DeliveryLog:
    """Appended to by the sender tasks, read by tests from other threads."""

    def __init__(self) -> None:
        self.handed_over_ms = 0
        """Simulator clock of the last tick that scheduled events: the events created before it
        are a dispatcher's already, so one started later (the server started again) leaves
        them be instead of delivering them twice."""
        self._lock = threading.Lock()
        self._attempts: deque[Attempt] = deque(maxlen=ATTEMPTS_KEPT)
        self._counts: Counter[Outcome] = Counter()

    def count(self, outcome: Outcome, n: int = 1) -> None:
        with self._lock:
            self._counts[outcome] += n

    def record(self, attempt: Attempt) -> None:
        with self._lock:
            self._attempts.append(attempt)

    def attempts(self) -> list[Attempt]:
        """The latest attempts, oldest first (a copy, safe while deliveries go on)."""
        with self._lock:
            return list(self._attempts)

    def counts(self) -> dict[Outcome, int]:
        with self._lock:
            return dict(self._counts)

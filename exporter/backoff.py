"""One backoff for every retry in the exporter: jittered, exponential, capped.

The API client, span delivery and the re-reads of undelivered calls all wait the same way:
each failure doubles the delay up to a cap, a success resets it, and the wait drawn is
"full jitter" (uniform between 0 and the delay) where many clients could retry in step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial: float
    cap: float
    jitter: bool = True
    _delay: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._delay = self.initial

    def next(self) -> float:
        """The wait before the next try; the one after it is twice as long (up to `cap`)."""
        delay = self._delay
        self._delay = min(self._delay * 2, self.cap)
        return random.uniform(0, delay) if self.jitter else delay

    def reset(self) -> None:
        self._delay = self.initial

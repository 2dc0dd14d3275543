"""A token-bucket rate limit per API key, as an API that does not publish its limits has."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float
    """Tokens (requests) added per second."""
    burst: float
    """Bucket size: requests that may arrive at once after a quiet spell."""
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._tokens = self.burst
        self._updated = self.clock()

    def take(self) -> float | None:
        """None when the request may go on; else the seconds until a token is there."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rate


class KeyedLimits:
    """One bucket per API key (a request without a key shares the anonymous bucket)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str | None, TokenBucket] = {}

    def take(self, key: str | None) -> float | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket.take()


class RateLimitKnob:
    """The limits `Faults.rate_limit` asks for now: rebuilt (every bucket full) when a test
    or the demo turns the knob while the server runs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._shape: tuple[float, float] | None = None
        self._limits: KeyedLimits | None = None

    def take(self, rate: float | None, burst: float, key: str | None) -> float | None:
        """None when the request may go on (or no limit is set); else seconds until it would."""
        if rate is None:
            return None
        if self._limits is None or self._shape != (rate, burst):
            self._shape = (rate, burst)
            self._limits = KeyedLimits(rate, burst, self._clock)
        return self._limits.take(key)


def retry_after_header(wait: float) -> str:
    """Whole seconds, rounded up, as HTTP's delta-seconds form requires."""
    return str(max(1, math.ceil(wait)))

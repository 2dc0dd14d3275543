"""Fault injection: per-request decisions drawn from the fault RNG, and the damage they do."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

import msgspec

from .config import Faults

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

ERROR_STATUSES = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one request."""

    delay: float = 0.0
    status: int | None = None
    """An error status to answer instead of the real response (429, 500, 502, 503)."""
    truncate: bool = False


def format_seconds(seconds: float) -> str:
    """`Retry-After` value: whole seconds as an integer (`2`), fractions as a decimal (`0.25`)."""
    if seconds == int(seconds):
        return str(int(seconds))
    return f"{seconds:g}"


class FaultInjector:
    """Draws fault decisions from its own RNG (never the workload's)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"bem-simulator/faults/{seed}")
        self._lock = threading.Lock()

    def decide(self, faults: Faults) -> Decision:
        with self._lock:
            rng = self._rng
            slow, limited, broken, which, cut = rng.random(), rng.random(), rng.random(), rng.random(), rng.random()
        delay = faults.slow_seconds if slow < faults.slow_rate else 0.0
        status: int | None = None
        if limited < faults.rate_429:
            status = 429
        elif broken < faults.rate_5xx:
            status = ERROR_STATUSES[int(which * len(ERROR_STATUSES))]
        return Decision(delay=delay, status=status, truncate=cut < faults.truncated_rate)

    def maybe_corrupt(self, record: bytes, rate: float) -> bytes:
        """With probability `rate`, a copy of the JSON call record made undecodable as a call."""
        if rate <= 0:
            return record
        with self._lock:
            if self._rng.random() >= rate:
                return record
            variant = self._rng.randrange(3)
        doc: dict[str, Any] = _decode(record)
        if variant == 0:
            doc.pop("callID", None)
        elif variant == 1:
            doc["createdAt"] = 1716000000.5
        else:
            doc["status"] = {"value": doc.get("status")}
        return _encode(doc)

    def truncate(self, body: bytes) -> bytes:
        """The body cut off somewhere in its middle."""
        if len(body) < 2:
            return b""
        with self._lock:
            return body[: self._rng.randint(1, len(body) - 1)]

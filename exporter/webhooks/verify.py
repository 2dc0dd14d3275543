"""Is a delivery from bem? The signature over the raw body, then the timestamp's age.

bem signs each delivery with HMAC-SHA256 over `"<t>.<raw body>"` and sends
`bem-signature: t=<unix seconds>,v1=<hex digest>`. Every configured secret is tried (two
during a rotation), each comparison in constant time and all of them always, so neither the
timing nor the answer says which secret, or which part of a digest, was right. The timestamp is
judged only after the signature: an unsigned claim about time means nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

SIGNATURE_HEADER: Final = "bem-signature"
SCHEME: Final = "v1"

Refusal = Literal["bad_signature", "stale", "unsigned"]
"""Why a delivery is refused with 401."""


@dataclass(frozen=True, slots=True)
class Signature:
    timestamp: int
    digests: tuple[str, ...]
    """Every `v1=` value (a sender may give several)."""


def parse_signature(header: str) -> Signature | None:
    """`t=<int>,v1=<hex>[,v1=<hex>...]`, or None when it is not that."""
    timestamp: int | None = None
    digests: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            if not value.isascii() or not value.isdigit() or timestamp is not None:
                return None
            timestamp = int(value)
        elif key == SCHEME:
            if not value.isascii():
                return None
            digests.append(value.lower())
    if timestamp is None or not digests:
        return None
    return Signature(timestamp, tuple(digests))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `bem-signature` header bem sends for `body` (tests and the docs' example use it)."""
    return f"t={timestamp},{SCHEME}={digest(secret, timestamp, body)}"


def digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


class Verifier:
    def __init__(
        self,
        secrets: Sequence[str],
        tolerance: float,
        *,
        allow_unsigned: bool = False,
        clock: Callable[[], float],
    ) -> None:
        self._keys = tuple(secret.encode() for secret in secrets)
        self._tolerance = tolerance
        self._allow_unsigned = allow_unsigned and not secrets
        self._clock = clock

    def refusal(self, body: bytes, header: str | None) -> Refusal | None:
        """Why the delivery must be refused, or None when it may be read."""
        if not self._keys:
            # No secret: the settings allowed unsigned deliveries, and a signature cannot be checked.
            return None if self._allow_unsigned else "unsigned"
        if header is None:
            return "unsigned"
        signature = parse_signature(header)
        if signature is None or not self._matches(signature, body):
            return "bad_signature"
        if abs(self._clock() - signature.timestamp) > self._tolerance:
            return "stale"
        return None

    def _matches(self, signature: Signature, body: bytes) -> bool:
        message = str(signature.timestamp).encode() + b"." + body
        expected = [hmac.new(key, message, hashlib.sha256).hexdigest().encode() for key in self._keys]
        found = False
        for given in signature.digests:
            for wanted in expected:
                # `|=` and no break: every comparison runs, whichever matched.
                found |= hmac.compare_digest(given.encode(), wanted)
        return found

"""One delivery, judged in the contract's order and handed over once.

Order: the size (checked by the listener while reading), the signature over the raw bytes,
the timestamp, and only then the JSON. Nothing of a refused delivery is acted on or kept. An
accepted event is handed over (to the poll loop in memory, or to the leader through the shared
state) and only then remembered, so a delivery whose hand-over failed (503) is taken again
when bem retries it, and a repeat of a handed-over one is answered 2xx and ignored.

Nothing here counts calls: the poll loop reads the call a hint names, and counts it in its own
commit if it finished, whoever asked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from exporter.state.store import StateError, StateWriteError
from exporter.webhooks.event import Hint, NotAnEventError, parse_event
from exporter.webhooks.replay import SeenEvents
from exporter.webhooks.verify import Verifier

log = logging.getLogger("exporter.webhooks")

Result = Literal["accepted", "duplicate", "bad_signature", "stale", "unsigned", "malformed", "too_large"]
RESULTS: Final[tuple[Result, ...]] = (
    "accepted",
    "duplicate",
    "bad_signature",
    "stale",
    "unsigned",
    "malformed",
    "too_large",
)
STATUS: Final[dict[Result, int]] = {
    "accepted": 200,
    "duplicate": 200,
    "bad_signature": 401,
    "stale": 401,
    "unsigned": 401,
    "malformed": 400,
    "too_large": 413,
}
UNSAFE: Final = 503
"""The hint could not be made safe: bem retries."""
REJECTION_LOG_EVERY: Final = 60.0
"""Seconds between two log lines about refused deliveries of one kind (an attack must not
flood the log; the counter has every one)."""
_ADVICE: Final[dict[Result, str]] = {
    "bad_signature": "check BEM_WEBHOOK_SECRET against bem's signing secret",
    "stale": "check this machine's clock, or a delivery was replayed",
    "unsigned": "bem sends unsigned deliveries while no signing secret exists in the account",
    "malformed": "the body is not a bem event",
    "too_large": "the body is larger than 1 MiB",
}

Handover = Callable[[Hint], Awaitable[bool]]
"""Give a hint to whoever polls; True when handed over now, False when it already was (another
replica took the same event). Raises `StateError`/`StateWriteError` when it cannot be made safe."""


class Watcher(Protocol):
    """Self-metrics and the status page: what was received, and the event's age on arrival."""

    def webhook_received(self, result: Result, delay: float | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    result: Result | None
    """None: answered 503, nothing decided (bem retries)."""


class Intake:
    def __init__(
        self,
        verifier: Verifier,
        handover: Handover,
        seen: SeenEvents,
        clock: Callable[[], float],
        watchers: Sequence[Watcher] = (),
    ) -> None:
        self._verifier = verifier
        self._handover = handover
        self._seen = seen
        self._clock = clock
        self._watchers = tuple(watchers)
        self._logged: dict[Result, tuple[float, int]] = {}

    async def take(self, body: bytes, signature: str | None) -> Answer:
        refusal = self._verifier.refusal(body, signature)
        if refusal is not None:
            return self._refused(refusal)
        try:
            hint = parse_event(body)
        except NotAnEventError as error:
            log.debug("refused a webhook delivery that is not a bem event", extra={"reason": str(error)})
            return self._refused("malformed")
        return await self._hand_over(hint)

    def too_large(self) -> Answer:
        return self._refused("too_large")

    async def _hand_over(self, hint: Hint) -> Answer:
        if hint.event_id in self._seen:
            return self._answer("duplicate")
        try:
            fresh = await self._handover(hint)
        except (StateError, StateWriteError) as error:
            log.warning(
                "could not hand a webhook over through the shared state; answered 503 so that bem retries",
                extra={"error": str(error)},
            )
            return Answer(UNSAFE, None)
        self._seen.remember(hint.event_id)
        if not fresh:
            return self._answer("duplicate")
        delay = None if hint.created_at is None else max(0.0, self._clock() - hint.created_at)
        return self._answer("accepted", delay)

    def _refused(self, result: Result) -> Answer:
        self._log_refusal(result)
        return self._answer(result)

    def _answer(self, result: Result, delay: float | None = None) -> Answer:
        for watcher in self._watchers:
            watcher.webhook_received(result, delay)
        return Answer(STATUS[result], result)

    def _log_refusal(self, result: Result) -> None:
        """One warning at the first refusal of a kind, then at most one per minute with the
        number refused since (nothing of the delivery itself)."""
        now = self._clock()
        last, since = self._logged.get(result, (float("-inf"), 0))
        if now - last < REJECTION_LOG_EVERY:
            self._logged[result] = (last, since + 1)
            return
        self._logged[result] = (now, 0)
        log.warning(
            f"refused webhook deliveries ({result}): {_ADVICE[result]}",
            extra={"result": result, "refused_since_last_line": since + 1},
        )

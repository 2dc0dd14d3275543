"""Listing calls for discovery, and what it says about the API's health.

While the API is down (no answer at all), each cycle probes it once instead of retrying with
backoff: the poll interval is the backoff, and an outage costs one request per interval. An API
that answers 429/5xx keeps its retries (and Retry-After): one try against a flaky API would
flip "unreachable" on and off every few cycles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from exporter.bem.client import ApiError, BemClient, ListQuery
from exporter.bem.decode import CallPage

log = logging.getLogger("exporter.poll")


class Listing:
    def __init__(self, client: BemClient, clock: Callable[[], float]) -> None:
        self._client = client
        self._clock = clock
        self._api_ok: bool | None = None
        self._unanswered = False
        """The last cycle's listing got no answer at all (refused, dropped, timed out)."""
        self._probing = False
        self.last_ok: float | None = None
        """Epoch seconds of the last successful list request (readiness)."""

    def cycle_started(self) -> None:
        self._probing = self._api_ok is False and self._unanswered

    async def page(self, query: ListQuery) -> CallPage:
        page = await self._client.list_calls(query, attempts=1 if self._probing else None)
        self._probing = False
        self.last_ok = self._clock()
        return page

    def cycle_ended(self, listed: bool, failure: ApiError | None) -> None:
        """After a cycle that listed all it wanted to, or failed at the API (not one that
        stopped on a state error first). One line when the API becomes unreachable or
        reachable again, not one per cycle."""
        self._unanswered = not listed and failure is not None and failure.status is None
        if listed and self._api_ok is False:
            log.info("bem API reachable again")
        elif not listed and self._api_ok is not False:
            log.warning("bem API unreachable; retrying every poll interval", extra={"error": str(failure)})
        self._api_ok = listed

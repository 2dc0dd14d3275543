"""Listing calls for discovery, and what it says about the API's health.

While the API is down (no answer at all), each cycle probes it once instead of retrying with
backoff: the poll interval is the backoff, and an outage costs one request per interval. An API
that answers 429/5xx keeps its retries (and Retry-After): one try against a flaky API would
flip "unreachable" on and off every few cycles.

Health is logged once per change, naming the cause: a rejected key (an error: it will not
heal by itself), a host name that does not resolve, no answer, an answer that is malformed or
too large, an HTTP error status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from exporter.bem.client import ApiError, BemClient, ListQuery
from exporter.bem.decode import CallPage
from exporter.bem.errors import Cause, cause_of, describe, resolves

log = logging.getLogger("exporter.poll")

RETRYING = "retrying every poll interval"
DOWN_LINES: dict[Cause, str] = {
    "key_rejected": "bem API rejected the API key",
    "unresolved_host": "bem API host name does not resolve",
    "unreachable": "bem API unreachable",
    "malformed": "bem API answers are malformed",
    "too_large": "bem API answers are larger than BEM_MAX_RESPONSE_BYTES",
    "rejected": "bem API answers the listing with an HTTP error",
}


class Listing:
    def __init__(self, client: BemClient, clock: Callable[[], float], host: str | None = None) -> None:
        self._client = client
        self._clock = clock
        self._host = host
        self._host_resolves = True
        self._api_ok: bool | None = None
        self._cause: Cause | None = None
        self._unanswered = False
        """The last cycle's listing got no answer at all (refused, dropped, timed out)."""
        self._probing = False
        self.last_ok: float | None = None
        """Epoch seconds of the last successful list request (readiness)."""

    def cycle_started(self) -> None:
        self._probing = self._api_ok is False and self._unanswered

    async def page(self, query: ListQuery) -> CallPage:
        try:
            page = await self._client.list_calls(query, attempts=1 if self._probing else None)
        except ApiError as failure:
            # The client says "cannot connect" either way; a name that does not resolve is a
            # different fix (the URL, or DNS), so look it up before saying which.
            self._host_resolves = failure.kind != "unreachable" or await resolves(self._host)
            raise
        self._probing = False
        self.last_ok = self._clock()
        return page

    def describe(self, failure: ApiError) -> str:
        """`failure` in words naming its cause (for the cycle's report)."""
        return describe(failure, self._host, host_resolves=self._host_resolves)

    def cycle_ended(self, listed: bool, failure: ApiError | None) -> None:
        """After a cycle that listed all it wanted to, or failed at the API (not one that
        stopped on a state error first). One line when the API's health or the cause of its
        failure changes, not one per cycle."""
        self._unanswered = not listed and failure is not None and failure.status is None
        if listed or failure is None:
            if self._api_ok is False:
                log.info("bem API reachable again")
            self._api_ok, self._cause = listed, None
            return
        cause = cause_of(failure, host_resolves=self._host_resolves)
        if self._api_ok is not False or cause != self._cause:
            level = logging.ERROR if cause == "key_rejected" else logging.WARNING
            error = self.describe(failure)
            log.log(level, f"{DOWN_LINES[cause]}; {RETRYING}", extra={"error": error})
        self._api_ok, self._cause = False, cause

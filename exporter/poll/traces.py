"""Traces of finished calls, read from the API: for a new batch, and again for delivery.

`ApiTraces.refetch` is the `TraceSource` delivery is given, so delivery re-reads what it must
send again without reaching back into the poll loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from exporter.bem.client import MAX_PAGE_SIZE, ApiError, BemClient, ListQuery
from exporter.bem.decode import CallPage
from exporter.bem.models import Call, Trace
from exporter.pipeline import FinishedCall, Refetched, SourceUnavailableError

log = logging.getLogger(__name__)


class ApiTraces:
    def __init__(self, client: BemClient) -> None:
        self._client = client

    async def fetch(self, calls: Sequence[Call]) -> tuple[list[FinishedCall], list[Call]]:
        """The calls with their traces, and the calls whose trace could not be read now."""
        results = await asyncio.gather(*(self._trace(call) for call in calls))
        pairs = list(zip(calls, results, strict=True))
        batch = [FinishedCall(call, trace) for call, trace in pairs if trace is not None]
        return batch, [call for call, trace in pairs if trace is None]

    async def refetch(self, call_ids: Sequence[str]) -> Refetched:
        """Re-read handled calls and their traces (spans whose delivery was deferred).

        Only a call the API answered for without listing it (or listed as not finished) is
        `gone`; one whose record or trace could not be read this time is in neither set, so
        delivery tries it again instead of giving its spans up."""
        result = Refetched()
        for start in range(0, len(call_ids), MAX_PAGE_SIZE):
            chunk = call_ids[start : start + MAX_PAGE_SIZE]
            page = await self._listed(chunk)
            if page.first_unidentified is None:  # every record has its id: the unlisted are gone
                listed = {call_id for call_id in page.ids if call_id is not None}
                result.gone.update(call_id for call_id in chunk if call_id not in listed)
            result.gone.update(call.call_id for call in page.calls if not call.finished)
            batch, _ = await self.fetch([call for call in page.calls if call.finished])
            result.found.extend(batch)
        return result

    async def _listed(self, call_ids: Sequence[str]) -> CallPage:
        try:
            return await self._client.list_calls(ListQuery(call_ids=call_ids))
        except ApiError as failure:
            raise SourceUnavailableError(str(failure)) from failure

    async def _trace(self, call: Call) -> Trace | None:
        try:
            return await self._client.get_trace(call.call_id)
        except ApiError as failure:
            # Counted in the cycle's line (trace_fetch_failures); one line per call would flood.
            log.debug("trace fetch failed; retrying next cycle", extra={"error": str(failure)})
            return None

"""Refresh: read again the tracked calls this cycle's listing did not show, 100 ids a request,
and stop tracking calls that have run longer than `BEM_ABANDON_AFTER`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from exporter.bem.client import MAX_PAGE_SIZE, BemClient, ListQuery
from exporter.config import PollSettings
from exporter.pipeline import CycleReport, Observer
from exporter.poll.batch import Batch, Sighting
from exporter.state.store import Changes

log = logging.getLogger("exporter.poll")


class Refresh:
    def __init__(
        self,
        client: BemClient,
        batch: Batch,
        observer: Observer,
        settings: PollSettings,
        clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._batch = batch
        self._observer = observer
        self._settings = settings
        self._clock = clock
        self.stopping = False

    async def run(self, report: CycleReport) -> None:
        seen = self._batch.in_progress
        stale = [call_id for call_id in self._batch.position.tracked if call_id not in seen]
        for start in range(0, len(stale), MAX_PAGE_SIZE):
            if self.stopping:
                return
            chunk = stale[start : start + MAX_PAGE_SIZE]
            page = await self._client.list_calls(ListQuery(call_ids=chunk, limit=MAX_PAGE_SIZE))
            report.refreshed += len(page.calls)
            report.rejected_records += page.rejected
            await self._batch.take(Sighting(page.calls, refreshed=True), Changes(), report)

    async def abandon_stuck(self, report: CycleReport) -> None:
        limit = self._clock() - self._settings.abandon_after
        stuck = [call_id for call_id, created in self._batch.position.tracked.items() if created < limit]
        if not stuck:
            return
        await self._batch.write(Changes(untracked=stuck))
        for call_id in stuck:
            self._batch.in_progress.pop(call_id, None)
        report.abandoned += len(stuck)
        self._observer.calls_abandoned(len(stuck))
        log.warning("stopped tracking calls running longer than BEM_ABANDON_AFTER", extra={"count": len(stuck)})

"""Hinted reads: the calls webhooks named, read by id through the same batch as the poll.

A call already handled costs no request (the state says so). The others are read 100 ids a
request, filtered by `BEM_WORKFLOWS` like the listing, and go through `Batch.take` as calls
known to be unhandled: a finished one has its trace fetched and is counted in that batch's
commit, exactly once whoever found it first; one still in progress is tracked, and read again
on the hint schedule's backoff.
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.bem.client import MAX_PAGE_SIZE, BemClient, ListQuery
from exporter.pipeline import CycleReport
from exporter.poll.batch import Batch, Sighting
from exporter.poll.hints import HintQueue
from exporter.state.store import Changes, StateStore


class HintedReads:
    def __init__(
        self, client: BemClient, batch: Batch, store: StateStore, queue: HintQueue, workflows: Sequence[str]
    ) -> None:
        self._client = client
        self._batch = batch
        self._store = store
        self._queue = queue
        self._workflows = tuple(workflows)

    async def read(self, call_ids: Sequence[str], report: CycleReport) -> None:
        """Read `call_ids`; on any failure they stay in the schedule (read again later)."""
        pending = list(call_ids)
        try:
            handled = await self._store.handled(pending)
            self._queue.settled(handled)
            pending = [call_id for call_id in pending if call_id not in handled]
            while pending:
                chunk, pending = pending[:MAX_PAGE_SIZE], pending[MAX_PAGE_SIZE:]
                await self._read_chunk(chunk, report)
        except BaseException:
            self._queue.running(pending)
            raise

    async def _read_chunk(self, chunk: list[str], report: CycleReport) -> None:
        query = ListQuery(call_ids=chunk, workflow_names=self._workflows, limit=MAX_PAGE_SIZE)
        try:
            page = await self._client.list_calls(query)
            report.refreshed += len(page.calls)
            report.rejected_records += page.rejected
            await self._batch.take(Sighting(page.calls, refreshed=True), Changes(), report)
        except BaseException:
            self._queue.running(chunk)
            raise
        listed = {call.call_id for call in page.calls}
        unreadable = set(page.rejected_ids)
        tracked = self._batch.position.tracked
        # In progress (tracked now), or a record that could not be decoded: again later.
        again = [call_id for call_id in chunk if call_id in unreadable or (call_id in listed and call_id in tracked)]
        self._queue.running(again)
        self._queue.settled(call_id for call_id in chunk if call_id not in again)

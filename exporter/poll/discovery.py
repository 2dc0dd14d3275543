"""Discovery: new calls, in creation order from a cursor, or by a first-start backfill.

The cursor is a call id used only as a position, never compared; a small overlap before it is
re-read each cycle, so a call that becomes visible late, just behind the cursor, is still
found. With no cursor (first start, or the cursor's call is gone) a backfill scans newest to
oldest down to `BEM_LOOKBACK`; its progress is committed with each page, so a crash
mid-backfill resumes where it stopped. Each page is one batch. A backfill, and a catch-up of
more than one page, report how far they are (`exporter.poll.progress`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from exporter.bem.client import MAX_PAGE_SIZE, ApiError, ListQuery
from exporter.bem.decode import CallPage
from exporter.bem.models import Call
from exporter.config import PollSettings
from exporter.pipeline import CycleReport
from exporter.poll.batch import Batch, Sighting
from exporter.poll.listing import Listing
from exporter.poll.progress import Listener, Tracker
from exporter.state.store import Backfill, Changes, StateStore

log = logging.getLogger("exporter.poll")

OVERLAP = 10
"""Call ids kept behind the cursor and re-read each cycle (late-visible calls)."""
HOLD_CYCLES = 3
"""Cycles discovery waits at a record with no readable id before skipping it."""

Hold = tuple[str | None, int]
"""(the last readable id before an unreadable record, cycles spent holding there)."""


class Discovery:
    def __init__(
        self,
        listing: Listing,
        batch: Batch,
        store: StateStore,
        settings: PollSettings,
        workflows: Sequence[str],
        clock: Callable[[], float],
        progress: Sequence[Listener] = (),
    ) -> None:
        self._listing = listing
        self._progress = tuple(progress)
        self._batch = batch
        self._store = store
        self._settings = settings
        self._workflows = tuple(workflows)
        self._clock = clock
        self._held: Hold | None = None
        self.stopping = False

    async def run(self, report: CycleReport) -> None:
        position = self._batch.position
        backfill = position.backfill
        if backfill is None and not position.cursor:
            backfill = self._fresh_backfill()
        if backfill is not None:
            await self._backfill(backfill, report, list(position.cursor))
        await self._forward(report)

    def _fresh_backfill(self) -> Backfill:
        return Backfill(until=self._clock() - self._settings.lookback)

    async def _backfill(self, backfill: Backfill, report: CycleReport, ring: list[str]) -> None:
        """Newest to oldest down to `backfill.until`, each page a durable step. `ring`: the
        cursor to keep, or empty to start forward discovery from the newest call listed."""
        query = ListQuery(sort_order="desc", workflow_names=self._workflows)
        tracker = Tracker("backfill", backfill.until, self._progress)
        after = backfill.after
        page = await self._listing.page(replace(query, starting_after=after))
        # Forward discovery continues from the newest call the backfill saw.
        ring = ring or self._newest(page)
        while True:
            ids, hold = self._readable_prefix(page)
            taken = set(ids)
            readable = [call for call in page.calls if call.call_id in taken]
            in_window = [call for call in readable if call.created_at.timestamp() >= backfill.until]
            after = ids[-1] if ids else after
            held = hold is not None
            done = not held and (page.size < MAX_PAGE_SIZE or len(in_window) < len(readable) or after is None)
            # Fetch the next page while this one's traces are fetched.
            upcoming = None
            if not done and not held and not self.stopping:
                upcoming = asyncio.create_task(self._listing.page(replace(query, starting_after=after)))
            report.rejected_records += page.rejected
            progress = Changes(cursor=ring, backfill=Backfill(backfill.until, after), backfill_done=done)
            try:
                progress.tracked = await self._rejected_to_retry(page, set())
                await self._take(in_window, progress, report, hold, set())
            except BaseException:
                if upcoming is not None:
                    upcoming.cancel()  # the cycle ends here; the next one lists this page again
                raise
            tracker.page(in_window, page.total_count, done)
            if upcoming is None:
                return
            page = await upcoming

    @staticmethod
    def _newest(page: CallPage) -> list[str]:
        return [call_id for call_id in page.ids[:OVERLAP] if call_id is not None][::-1]

    async def _forward(self, report: CycleReport) -> None:
        """Creation order from the cursor, re-reading the overlap behind it."""
        ring = list(self._batch.position.cursor)
        if not ring:
            return  # nothing listed yet: the backfill looks again next cycle
        tracker: Tracker | None = None
        while True:
            page, ring = await self._page_after(ring)
            if page is None:  # the cursor's calls are all gone
                await self._backfill(self._fresh_backfill(), report, [])
                return
            seen = set(ring)
            ids, hold = self._readable_prefix(page)
            new_ring = (ring + ids)[-OVERLAP:]
            taken = set(ids)
            fresh = [call for call in page.calls if call.call_id not in seen and call.call_id in taken]
            report.rejected_records += page.rejected
            changes = Changes(cursor=list(new_ring), tracked=await self._rejected_to_retry(page, seen))
            await self._take(fresh, changes, report, hold, seen)
            last = hold is not None or page.size < MAX_PAGE_SIZE or self.stopping or new_ring == ring
            if tracker is None and not last:  # more than a page behind: a catch-up worth showing
                tracker = Tracker("catch-up", self._clock(), self._progress)
            if tracker is not None:
                tracker.page(fresh, None, last)
            if last:
                return
            ring = new_ring

    async def _page_after(self, ring: list[str]) -> tuple[CallPage | None, list[str]]:
        """The page after the oldest position of `ring` still listed, and the ring from there."""
        while ring:
            query = ListQuery(workflow_names=self._workflows, starting_after=ring[0], sort_order="asc")
            try:
                return await self._listing.page(query), ring
            except ApiError as failure:
                if failure.status not in (400, 404):
                    raise
                # The cursor's call is gone: fall back to the next position behind it.
                log.warning("cursor position no longer listed; trying an older one")
                ring = ring[1:]
        return None, []

    async def _take(
        self, calls: Sequence[Call], changes: Changes, report: CycleReport, hold: Hold | None, seen: set[str]
    ) -> None:
        await self._batch.take(Sighting(calls, seen), changes, report)
        self._held = hold  # like the cursor, the hold moves on only with a commit

    def _readable_prefix(self, page: CallPage) -> tuple[list[str], Hold | None]:
        """The page's ids up to a record whose id is unreadable, and the hold there (None when
        the page reads through). Holding re-reads the record next cycle instead of losing it
        to a passing fault; after `HOLD_CYCLES` cycles on the same spot it is skipped (and
        stays counted as rejected)."""
        position = page.first_unidentified
        ids = [call_id for call_id in page.ids if call_id is not None]
        if position is None:
            return ids, None
        before = [call_id for call_id in page.ids[:position] if call_id is not None]
        spot = before[-1] if before else None
        cycles = self._held[1] + 1 if self._held is not None and self._held[0] == spot else 1
        if cycles > HOLD_CYCLES:
            log.warning("skipping a call record without a readable id")
            return ids, None
        return before, (spot, cycles)

    async def _rejected_to_retry(self, page: CallPage, seen: set[str]) -> list[tuple[str, float]]:
        """Track undecodable records that have an id: a later refresh reads them again, so a
        passing fault loses nothing (a permanent one is abandoned after BEM_ABANDON_AFTER)."""
        tracked = self._batch.position.tracked
        fresh = [cid for cid in page.rejected_ids if cid not in seen and cid not in tracked]
        if not fresh:
            return []
        known = await self._store.handled(fresh)
        now = self._clock()
        return [(cid, now) for cid in fresh if cid not in known]

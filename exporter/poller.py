"""One poll cycle: discover new calls, refresh the in-flight ones, hand finished calls on.

Discovery reads the listing in creation order from a cursor (a call id used only as a
position, never compared) and re-reads a small overlap before it, so a call that becomes
visible late, just behind the cursor, is still found. With no cursor (first start, or the
cursor's call is gone) a backfill scans newest to oldest down to `BEM_LOOKBACK`; its progress
is durable, so a crash mid-backfill resumes where it stopped.

Each page is handled as one batch: the traces of its newly finished calls are fetched, the
recorder stages the report, and one transaction writes report, handled marks, tracked calls
and the cursor. Only then are the counts published and the spans queued for delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from exporter.bem.client import MAX_PAGE_SIZE, ApiError, BemClient, ListQuery
from exporter.bem.decode import CallPage
from exporter.bem.models import Call, Trace
from exporter.config import PollSettings
from exporter.delivery import Delivery, Refetched
from exporter.pipeline import CallRecorder, CycleReport, FinishedCall, Observer
from exporter.state import Backfill, Changes, State

log = logging.getLogger(__name__)

OVERLAP = 10
"""Call ids kept behind the cursor and re-read each cycle (late-visible calls)."""
HOLD_CYCLES = 3
"""Cycles discovery waits at a record with no readable id before skipping it."""
RECORDER = "metrics"
"""The name of the recorder's snapshot in the state."""


class Poller:
    def __init__(
        self,
        client: BemClient,
        state: State,
        recorder: CallRecorder,
        delivery: Delivery,
        observer: Observer,
        settings: PollSettings,
        workflows: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._state = state
        self._recorder = recorder
        self._delivery = delivery
        self._observer = observer
        self._settings = settings
        self._workflows = tuple(workflows)
        self._clock = clock
        self._tracked = state.tracked()
        self._cursor = state.cursor()
        self._stopping = False
        self._held: tuple[str | None, int] | None = None
        self._api_ok: bool | None = None
        self._in_progress: dict[str, Call] = {}
        """Calls seen pending or running in the cycle under way."""
        self._probing = False
        """The API was unreachable at the last cycle: this cycle's first listing is one try."""
        self._unanswered = False
        """The last cycle's listing got no answer at all (refused, dropped, timed out)."""
        self.last_listing_ok: float | None = None
        """Epoch seconds of the last successful list request (readiness)."""
        snapshot = state.snapshot(RECORDER)
        if snapshot is not None:
            recorder.restore(snapshot)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    def stop(self) -> None:
        """Start no new page; the cycle in progress ends after its current batch."""
        self._stopping = True

    async def cycle(self) -> CycleReport:
        started = time.monotonic()
        report = CycleReport()
        self._in_progress = {}
        # While the API is down (no answer at all), each cycle probes it once instead of
        # retrying with backoff: the poll interval is the backoff, and an outage costs one
        # request per interval. An API that answers 429/5xx keeps its retries (and Retry-After):
        # one try against a flaky API would flip "unreachable" on and off every few cycles.
        self._probing = self._api_ok is False and self._unanswered
        try:
            backfill = self._state.backfill()
            if backfill is None and not self._cursor:
                backfill = Backfill(until=self._clock() - self._settings.lookback)
            if backfill is not None:
                await self._backfill(backfill, report)
            await self._discover(report)
            report.ok = True
            await self._refresh(report)
            self._abandon_stuck(report)
        except ApiError as failure:
            report.error = str(failure)
            self._unanswered = not report.ok and failure.status is None
        self._log_api_state(report.ok, report.error)
        boundary = self._clock() - self._settings.lookback - self._settings.interval
        dropped = self._state.prune(boundary, keep=self._delivery.waiting())
        if dropped:
            self._observer.spans_dropped(dropped)
        now = self._clock()
        if report.ok:
            self._observer.in_progress(list(self._in_progress.values()), now)
        report.duration_seconds = time.monotonic() - started
        report.tracked = len(self._tracked)
        report.export_backlog = self._delivery.backlog
        self._observer.cycle_done(report, now)
        return report

    def _log_api_state(self, ok: bool, error: str | None) -> None:
        """One line when the API becomes unreachable or reachable again, not one per cycle."""
        if ok and self._api_ok is False:
            log.info("bem API reachable again")
        elif not ok and self._api_ok is not False:
            log.warning("bem API unreachable; retrying every poll interval", extra={"error": error})
        self._api_ok = ok

    # -- discovery -----------------------------------------------------------------------------

    async def _backfill(self, backfill: Backfill, report: CycleReport) -> None:
        """Newest to oldest down to `backfill.until`, each page a durable step."""
        query = ListQuery(sort_order="desc", workflow_names=self._workflows)
        after = backfill.after
        page = await self._list(replace(query, starting_after=after))
        if not self._cursor:
            # Forward discovery continues from the newest call the backfill saw.
            self._cursor = [call_id for call_id in page.ids[:OVERLAP] if call_id is not None][::-1]
        while True:
            ids, held = self._readable_prefix(page)
            taken = set(ids)
            readable = [call for call in page.calls if call.call_id in taken]
            in_window = [call for call in readable if call.created_at.timestamp() >= backfill.until]
            after = ids[-1] if ids else after
            done = not held and (page.size < MAX_PAGE_SIZE or len(in_window) < len(readable) or after is None)
            # Fetch the next page while this one's traces are fetched.
            upcoming = None
            if not done and not held and not self._stopping:
                upcoming = asyncio.create_task(self._list(replace(query, starting_after=after)))
            report.rejected_records += page.rejected
            changes = Changes(
                cursor=list(self._cursor),
                backfill=Backfill(backfill.until, after),
                backfill_done=done,
                tracked=self._retry_rejected(page, set()),
            )
            await self._take(in_window, report, changes, seen=set())
            if upcoming is None:
                return
            page = await upcoming

    async def _discover(self, report: CycleReport) -> None:
        """Creation order from the cursor, re-reading the overlap behind it."""
        ring = list(self._cursor)
        if not ring:
            return  # nothing listed yet: the backfill looks again next cycle
        while True:
            start = ring[0]
            try:
                page = await self._list(
                    ListQuery(workflow_names=self._workflows, starting_after=start, sort_order="asc")
                )
            except ApiError as failure:
                if failure.status not in (400, 404):
                    raise
                # The cursor's call is gone: fall back to the next position behind it.
                log.warning("cursor position no longer listed; trying an older one")
                ring = ring[1:]
                if not ring:
                    self._cursor = []
                    backfill = Backfill(until=self._clock() - self._settings.lookback)
                    await self._backfill(backfill, report)
                    return
                continue
            seen = set(ring)
            ids, held = self._readable_prefix(page)
            new_ring = (ring + ids)[-OVERLAP:]
            self._cursor = new_ring
            taken = set(ids)
            fresh = [call for call in page.calls if call.call_id not in seen and call.call_id in taken]
            report.rejected_records += page.rejected
            changes = Changes(cursor=list(new_ring), tracked=self._retry_rejected(page, seen))
            await self._take(fresh, report, changes, seen=seen)
            if held or page.size < MAX_PAGE_SIZE or self._stopping or new_ring == ring:
                return
            ring = new_ring

    def _readable_prefix(self, page: CallPage) -> tuple[list[str], bool]:
        """The page's ids up to a record whose id is unreadable, and whether the cursor is held
        there. Holding re-reads the record next cycle instead of losing it to a passing fault;
        after `HOLD_CYCLES` cycles on the same spot it is skipped (and stays counted as rejected)."""
        position = page.first_unidentified
        ids = [call_id for call_id in page.ids if call_id is not None]
        if position is None:
            self._held = None
            return ids, False
        before = [call_id for call_id in page.ids[:position] if call_id is not None]
        spot = before[-1] if before else None
        cycles = self._held[1] + 1 if self._held is not None and self._held[0] == spot else 1
        if cycles > HOLD_CYCLES:
            self._held = None
            log.warning("skipping a call record without a readable id")
            return ids, False
        self._held = (spot, cycles)
        return before, True

    def _retry_rejected(self, page: CallPage, seen: set[str]) -> list[tuple[str, float]]:
        """Track undecodable records that have an id: a later refresh reads them again, so a
        passing fault loses nothing (a permanent one is abandoned after BEM_ABANDON_AFTER)."""
        fresh = [cid for cid in page.rejected_ids if cid not in seen and cid not in self._tracked]
        if not fresh:
            return []
        known = self._state.handled(fresh)
        now = self._clock()
        return [(cid, now) for cid in fresh if cid not in known]

    async def _list(self, query: ListQuery) -> CallPage:
        page = await self._client.list_calls(query, attempts=1 if self._probing else None)
        self._probing = False
        self.last_listing_ok = self._clock()
        return page

    # -- refresh -------------------------------------------------------------------------------

    async def _refresh(self, report: CycleReport) -> None:
        """Re-read tracked calls not seen in this cycle's listing, 100 ids a request."""
        stale = [call_id for call_id in self._tracked if call_id not in self._in_progress]
        for start in range(0, len(stale), MAX_PAGE_SIZE):
            if self._stopping:
                return
            batch = stale[start : start + MAX_PAGE_SIZE]
            page = await self._client.list_calls(ListQuery(call_ids=batch, limit=MAX_PAGE_SIZE))
            report.refreshed += len(page.calls)
            report.rejected_records += page.rejected
            await self._take(page.calls, report, Changes(), seen=set(), refreshed=True)

    def _abandon_stuck(self, report: CycleReport) -> None:
        limit = self._clock() - self._settings.abandon_after
        stuck = [call_id for call_id, created in self._tracked.items() if created < limit]
        if not stuck:
            return
        self._state.commit(Changes(untracked=stuck))
        for call_id in stuck:
            del self._tracked[call_id]
            self._in_progress.pop(call_id, None)
        report.abandoned += len(stuck)
        self._observer.calls_abandoned(len(stuck))
        log.warning("stopped tracking calls running longer than BEM_ABANDON_AFTER", extra={"count": len(stuck)})

    # -- handing on ----------------------------------------------------------------------------

    async def _take(
        self, calls: Sequence[Call], report: CycleReport, changes: Changes, *, seen: set[str], refreshed: bool = False
    ) -> None:
        """Track what is in flight, hand on what finished, and commit it all as one batch."""
        candidates = [call for call in calls if call.call_id not in seen]
        if not refreshed:
            known = self._state.handled(call.call_id for call in candidates)
            candidates = [c for c in candidates if c.call_id not in known and c.call_id not in self._tracked]
            report.discovered += len(candidates)
        finished: list[Call] = []
        for call in candidates:
            if call.finished:
                finished.append(call)
                self._in_progress.pop(call.call_id, None)
            else:
                self._in_progress[call.call_id] = call
                if call.call_id not in self._tracked:
                    changes.tracked.append((call.call_id, call.created_at.timestamp()))
        report.finished += len(finished)
        batch, failed = await self._with_traces(finished)
        report.trace_fetch_failures += len(failed)
        for call in failed:
            # Keep it tracked: the next refresh sees it finished and fetches the trace again.
            if call.call_id not in self._tracked:
                changes.tracked.append((call.call_id, call.created_at.timestamp()))
        changes.handled = [(item.call.call_id, item.call.created_at.timestamp()) for item in batch]
        changes.untracked = [item.call.call_id for item in batch if item.call.call_id in self._tracked]
        if batch:
            changes.snapshots[RECORDER] = self._recorder.stage(batch)
        try:
            self._state.commit(changes)
        except BaseException:
            if batch:
                self._recorder.discard()
            raise
        if batch:
            self._recorder.publish()
        for call_id, created in changes.tracked:
            self._tracked[call_id] = created
        for call_id in changes.untracked:
            self._tracked.pop(call_id, None)
        report.handed_on += len(batch)
        self._delivery.submit(batch)

    async def _with_traces(self, calls: Sequence[Call]) -> tuple[list[FinishedCall], list[Call]]:
        results = await asyncio.gather(*(self._trace(call) for call in calls))
        batch = [FinishedCall(call, trace) for call, trace in zip(calls, results, strict=True) if trace is not None]
        failed = [call for call, trace in zip(calls, results, strict=True) if trace is None]
        return batch, failed

    async def _trace(self, call: Call) -> Trace | None:
        try:
            return await self._client.get_trace(call.call_id)
        except ApiError as failure:
            # Counted in the cycle's line (trace_fetch_failures); one line per call would flood.
            log.debug("trace fetch failed; retrying next cycle", extra={"error": str(failure)})
            return None

    async def fetch_finished(self, call_ids: Sequence[str]) -> Refetched:
        """Re-read handled calls and their traces (spans whose delivery was deferred).

        Only a call the API answered for without listing it (or listed as not finished) is
        `gone`; one whose record or trace could not be read this time is in neither set, so
        delivery tries it again instead of giving its spans up."""
        result = Refetched()
        for start in range(0, len(call_ids), MAX_PAGE_SIZE):
            chunk = call_ids[start : start + MAX_PAGE_SIZE]
            page = await self._client.list_calls(ListQuery(call_ids=chunk))
            if page.first_unidentified is None:  # every record has its id: the unlisted are gone
                listed = {call_id for call_id in page.ids if call_id is not None}
                result.gone.update(call_id for call_id in chunk if call_id not in listed)
            result.gone.update(call.call_id for call in page.calls if not call.finished)
            batch, _ = await self._with_traces([call for call in page.calls if call.finished])
            result.found.extend(batch)
        return result

"""Delivery of spans, at least once.

Finished calls wait in a bounded in-memory backlog until the span exporter accepts them; only
then does the state mark them exported. While the backend is down, the backlog holds up to
`max_backlog` calls; older ones are evicted from memory but stay unexported in the state, and
are fetched again from the `TraceSource` it is given once the backend is back. Spans are given
up on only when a call leaves the state's retention window (`BEM_LOOKBACK` plus a poll
interval), and then counted as dropped: delivery owns that retention step too, so the poll loop
never reads delivery's backlog.

Exports run in a worker thread, one at a time, so the event loop (polling, /metrics) never
waits on the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.pipeline import FinishedCall, Observer, Refetched, SourceUnavailableError, SpanExporter, TraceSource
from exporter.redact import error_stack, error_text
from exporter.state.store import StateError, StateStore, StateWriteError

log = logging.getLogger(__name__)

EXPORT_BATCH = 100
"""Calls per export request (a few hundred spans)."""
RETRY_MIN, RETRY_MAX = 1.0, 60.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How long handled marks are kept, and how often they are pruned."""

    window: float
    """Seconds: marks of calls created longer ago are forgotten (unexported ones counted as dropped)."""
    every: float
    """Seconds between prunes (a poll interval)."""


class Delivery:
    def __init__(
        self,
        exporter: SpanExporter,
        store: StateStore,
        source: TraceSource,
        observer: Observer,
        max_backlog: int,
        retention: Retention,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._exporter = exporter
        self._store = store
        self._source = source
        self._observer = observer
        self._max_backlog = max_backlog
        self._retention = retention
        self._clock = clock
        self._prune_at = 0.0
        self._backlog: dict[str, FinishedCall] = {}
        self._evicted = False
        self._wake = asyncio.Event()
        self._retry_delay = RETRY_MIN
        self._retry_at = 0.0
        self._healthy = True
        # Re-reads from the API that failed are retried on their own backoff: without it a
        # failed re-read waited for new work to wake the worker, forever when none came.
        self._refetch_delay = RETRY_MIN
        self._refetch_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def reload(self) -> None:
        """Look for spans an earlier process (or another instance) left undelivered. What the
        backlog held (a replica leading again) is in the state too: it is read from there."""
        self._backlog.clear()
        if await self._store.count_unexported() > 0:
            self._evicted = True
            self._wake.set()  # deliver what was left, without waiting for new work

    def submit(self, batch: Sequence[FinishedCall]) -> None:
        for item in batch:
            self._backlog[item.call.call_id] = item
        overflow = len(self._backlog) - self._max_backlog
        if overflow > 0:
            for call_id in list(self._backlog)[:overflow]:
                del self._backlog[call_id]
            self._evicted = True
        if batch:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """The worker of `bem-exporter run`: deliver whenever there is work and it is time."""
        while not stop.is_set():
            wait: float | None = None
            if not self._healthy:
                wait = max(self._retry_at - time.monotonic(), 0.0)
            elif self._evicted:
                wait = max(self._refetch_at - time.monotonic(), 0.0)
            until_prune = max(self._prune_at - self._clock(), 0.0)
            wait = until_prune if wait is None else min(wait, until_prune)
            waker = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waker, stopper}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._wake.clear()
            if stop.is_set():
                return
            if self._healthy or time.monotonic() >= self._retry_at:
                await self.deliver()

    async def deliver(self, refetch: bool = True) -> bool:
        """Prune when due, export the backlog, then (when healthy, and unless `refetch` is
        False) what earlier evictions or processes left. True when nothing is left undelivered.
        A state fault is the poll loop's to report: delivery tries again later."""
        async with self._lock:
            try:
                await self._prune_if_due()
                if not await self._drain():
                    return False
                if refetch and self._evicted and time.monotonic() >= self._refetch_at:
                    await self._recover()
            except (StateError, StateWriteError) as error:
                log.debug("span delivery waits for the state", extra={"error": str(error)})
                return False
            return not self._backlog and not self._evicted

    async def _prune_if_due(self) -> None:
        now = self._clock()
        if now < self._prune_at:
            return
        self._prune_at = now + self._retention.every  # a failed prune, too, waits for the next turn
        dropped = await self._store.prune(now - self._retention.window, keep=list(self._backlog))
        if dropped:
            self._observer.spans_dropped(dropped)

    async def _drain(self) -> bool:
        while self._backlog:
            batch = list(self._backlog.values())[:EXPORT_BATCH]
            spans = await asyncio.to_thread(self._exporter.export, batch)
            if spans is None:
                self._failed(len(batch))
                return False
            call_ids = [item.call.call_id for item in batch]
            await self._store.mark_exported(call_ids)
            for call_id in call_ids:
                self._backlog.pop(call_id, None)
            self._observer.spans_exported(len(batch), spans)
            self._recovered()
        return True

    async def _recover(self) -> None:
        """Fetch again, from the API, calls whose spans were evicted or left by a crash."""
        # No more per round than the backlog holds: a larger round would evict at once what it
        # had just fetched, and fetch it again.
        size = min(EXPORT_BATCH, self._max_backlog)
        while True:
            call_ids = await self._store.unexported(size, skip=list(self._backlog))
            if not call_ids:
                self._evicted = False
                self._refetch_delay = RETRY_MIN
                return
            refetched = await self._refetch(call_ids)
            if refetched is None:
                self._postpone_refetch()
                return
            if refetched.gone:
                # Gone from the API (or no longer finished): nothing left to deliver for them.
                await self._store.mark_exported(sorted(refetched.gone))
                self._observer.spans_dropped(len(refetched.gone))
            self.submit(refetched.found)
            if not await self._drain():
                return
            if not refetched.found and not refetched.gone:
                # Nothing could be read this time: later, rather than at once in a tight loop.
                # (A round that made progress goes on: what it missed is read again next round.)
                self._postpone_refetch()
                return
            self._refetch_delay = RETRY_MIN

    async def _refetch(self, call_ids: Sequence[str]) -> Refetched | None:
        """What the source read again; None when it could not (tried again later)."""
        try:
            return await self._source.refetch(call_ids)
        except SourceUnavailableError as error:  # the API's trouble: the poll loop reports it
            log.debug("refetch of undelivered calls failed", extra={"error": str(error)})
        except Exception as error:  # noqa: BLE001  a bug must not stop delivery: named, counted, retried
            log.warning("refetch of undelivered calls failed unexpectedly", extra={"error": error_text(error)})
            log.debug("unexpected refetch failure", extra={"stack": error_stack(error)})
            self._observer.unexpected_error("span_delivery")
        return None

    def _postpone_refetch(self) -> None:
        self._refetch_at = time.monotonic() + self._refetch_delay
        self._refetch_delay = min(self._refetch_delay * 2, RETRY_MAX)

    def _failed(self, calls: int) -> None:
        self._observer.span_export_failed(calls)
        if self._healthy:
            # The span exporter logs the outage itself, once; this adds the backlog's size.
            log.info("span export failing; spans wait in the backlog", extra={"backlog": len(self._backlog)})
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        self._healthy = False
        self._retry_at = time.monotonic() + self._retry_delay

    def _recovered(self) -> None:
        if not self._healthy:
            log.info("span export recovered", extra={"backlog": len(self._backlog)})
        self._healthy = True
        self._retry_delay = RETRY_MIN

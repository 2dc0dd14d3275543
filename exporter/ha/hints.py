"""The leader's side of webhook hints from other replicas: take them from the shared state
into the poll loop's hint schedule as they are notified (and every few seconds, should a
notification be lost with its connection)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final, Protocol

from exporter.health import HealthLog
from exporter.poll.hints import HintQueue
from exporter.state.store import StateError, StateWriteError

log = logging.getLogger("exporter")

SWEEP: Final = 5.0
"""Seconds between takes without a notification."""


class HintSource(Protocol):
    """What the relay needs of `exporter.state.postgres_hints.SharedHints`."""

    async def take(self, keep: float) -> list[str | None]: ...

    async def listen(self, wake: Callable[[], None]) -> None: ...


class HintRelay:
    def __init__(self, source: HintSource, queue: HintQueue, keep: float) -> None:
        self._source = source
        self._queue = queue
        self._keep = keep
        self._wake = asyncio.Event()
        self._health = HealthLog(log, "taking webhook hints from the shared state")

    async def run(self) -> None:
        """While this replica leads (the caller cancels it when it stops leading)."""
        listener = asyncio.create_task(self._source.listen(self._wake.set))
        try:
            while True:
                await self._take()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=SWEEP)
                self._wake.clear()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _take(self) -> None:
        try:
            taken = await self._source.take(self._keep)
        except (StateError, StateWriteError) as error:
            # Hints wait in the table: the next take (a notification, or the sweep) gets them.
            self._health.failing(str(error))
            return
        self._health.ok()
        for call_id in taken:
            self._queue.note(call_id)

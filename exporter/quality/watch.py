"""The quality reader's loop: a task beside the poll loop, on the leader only.

Every `BEM_QUALITY_INTERVAL` it reads every page and replaces the gauges. A read that fails
keeps the gauges of the last good one (stale numbers beat none: each is labeled as of its read,
and `bem_exporter_quality_last_success_timestamp_seconds` says how old they are), is counted by
result in `bem_exporter_quality_reads_total` and shown on `/status`. The loop never waits on
the poll loop nor makes it wait: it shares only the API client (its rate and concurrency), and
a slow or failing quality read delays nothing but the next quality read. When the task ends
(the replica stops leading, or stops) the gauges are cleared: a standby serves no quality
gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from exporter.bem.client import ApiError
from exporter.health import HealthLog
from exporter.pipeline import UnexpectedSite
from exporter.quality.gauges import QualityGauges
from exporter.quality.reader import QualityReader
from exporter.quality.records import QualityResult, Reading
from exporter.redact import error_text, redact_text
from exporter.status import QualitySummary, StatusBoard

log = logging.getLogger(__name__)

UNAVAILABLE_STATUS = 404
"""bem's answer on an account without function quality metrics."""


class QualityReports(Protocol):
    """Where reads are counted (the self-metrics)."""

    def quality_read(self, result: QualityResult, at: float) -> None: ...

    def unexpected_error(self, site: UnexpectedSite) -> None: ...


class QualityWatch:
    def __init__(
        self,
        reader: QualityReader,
        gauges: QualityGauges,
        reports: QualityReports,
        interval: float,
        *,
        board: StatusBoard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._reader = reader
        self._gauges = gauges
        self._reports = reports
        self._interval = interval
        self._board = board
        self._clock = clock
        self._health = HealthLog(log, "bem quality read")
        self._summary = QualitySummary(interval=interval)

    async def run(self) -> None:
        """Read now, then every interval, until cancelled; the gauges go with the task."""
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.read_once()
                except Exception as error:  # noqa: BLE001 - a bug: reported, and the next read comes as planned
                    log.warning("quality read failed unexpectedly", extra={"error": error_text(error)})
                    self._reports.unexpected_error("quality_read")
                await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))
        finally:
            self._gauges.clear()
            self._show(functions=0)

    async def read_once(self) -> bool:
        """One read; True when it replaced the gauges."""
        try:
            reading = await self._reader.read()
        except ApiError as error:
            self._failed(error)
            return False
        self._succeeded(reading)
        return True

    def _succeeded(self, reading: Reading) -> None:
        now = self._clock()
        self._gauges.replace(reading.functions)
        self._reports.quality_read("success", now)
        self._health.ok()
        self._show(
            last_result="success",
            last_attempt_at=now,
            last_success_at=now,
            functions=self._gauges.shown,
            rejected=reading.rejected,
            pages=reading.pages,
        )

    def _failed(self, error: ApiError) -> None:
        now = self._clock()
        result, reason = _failure(error)
        self._reports.quality_read(result, now)
        self._health.failing(reason, level=logging.INFO if result == "unavailable" else logging.WARNING)
        self._show(last_result=result, last_attempt_at=now, last_error=redact_text(reason), last_error_at=now)

    def _show(self, **changes: object) -> None:
        self._summary = self._summary.but(**changes)
        if self._board is not None:
            self._board.set_quality(self._summary)


def _failure(error: ApiError) -> tuple[QualityResult, str]:
    """The result label of a failed read, and a line saying why (what the client said)."""
    if error.status == UNAVAILABLE_STATUS:
        return "unavailable", (
            f"{error.endpoint}: HTTP 404: bem offers no function quality metrics to this account; "
            "set BEM_QUALITY_INTERVAL=0 to stop asking"
        )
    return error.kind, str(error)

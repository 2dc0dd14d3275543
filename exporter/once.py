"""`bem-exporter once`: one full cycle, delivery included, and a one-line summary."""

from __future__ import annotations

from exporter.app import log_cycle, open_exporter
from exporter.config import Settings


async def once(settings: Settings) -> int:
    """One full cycle, delivery included; a one-line summary on stdout."""
    async with open_exporter(settings) as exporter:
        await exporter.delivery.deliver()
        report = await exporter.cycle()
        log_cycle(report)
        delivered = await exporter.delivery.deliver()
    print(
        f"{'ok' if report.ok and delivered else 'failed'}: discovered {report.discovered}, "
        f"finished {report.finished}, handed on {report.handed_on}, tracked {report.tracked}, "
        f"spans {'delivered' if delivered else 'NOT delivered (retried next run)'}, "
        f"{report.duration_seconds:.2f}s" + (f"; {report.error}" if report.error else "")
    )
    return 0 if report.ok and delivered else 1

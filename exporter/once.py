"""`bem-exporter once`: one full cycle, delivery included, and a one-line summary."""

from __future__ import annotations

import sys

from exporter.app import log_cycle, open_exporter
from exporter.config import Settings
from exporter.poll.progress import ProgressBar


async def once(settings: Settings) -> int:
    """One full cycle, delivery included; a one-line summary on stdout."""
    # A bar only for a person watching: logs and pipes get the progress log lines alone.
    bar = ProgressBar() if sys.stderr.isatty() else None
    async with open_exporter(settings, progress=[bar] if bar is not None else []) as exporter:
        await exporter.delivery.deliver()
        try:
            report = await exporter.cycle()
        finally:
            if bar is not None:
                bar.close()
        log_cycle(report)
        delivered = await exporter.delivery.deliver()
    print(
        f"{'ok' if report.ok and delivered else 'failed'}: discovered {report.discovered}, "
        f"finished {report.finished}, handed on {report.handed_on}, tracked {report.tracked}, "
        f"spans {'delivered' if delivered else 'NOT delivered (retried next run)'}, "
        f"{report.duration_seconds:.2f}s" + (f"; {report.error}" if report.error else "")
    )
    return 0 if report.ok and delivered else 1

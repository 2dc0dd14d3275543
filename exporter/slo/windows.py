"""Multi-window, multi-burn-rate alert windows, as Sloth defines them.

An SLO's error budget is spent at a *burn rate*: 1 spends it exactly over the SLO period. Each
alert watches a long window (is the budget really being spent that fast?) and a short one
(is it still?), and fires when both burn faster than its factor. The factor follows from the
share of the budget the alert allows to go in its long window (Sloth's
`internal/alert/window.go`, `getBurnRateFactor`):

    factor = budget_percent / 100 * period / long_window

With Sloth's `google-30d` windows (the SRE workbook's) that is 14.4 for 2% in 1h, 6 for 5% in
6h, 3 for 10% in 1d and 1 for 10% in 3d; `google-28d` has the same windows, so its factors are
28/30 of those (13.44, 5.6, 2.8, 0.933...).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Severity = Literal["page", "ticket"]

MS_PER: dict[str, int] = {"y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000}
"""Prometheus' duration units above a second (prometheus/common `model.Duration`)."""


def prom_duration(ms: int) -> str:
    """A duration as Prometheus (and so Sloth) writes it (prometheus/common `Duration.String`):
    `5m`, `1h30m`, `30d`, and years and weeks only when exact: `4w` for 28 days."""
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (*MS_PER.items(), ("s", 1000), ("ms", 1)):
        if unit in ("y", "w") and ms % size:
            continue
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class Window:
    """One alert's pair of windows and the share of the budget it allows in the long one."""

    budget_percent: Fraction
    short_ms: int
    long_ms: int


@dataclass(frozen=True)
class AlertWindows:
    """Sloth's `AlertWindows`: the SLO period and the four alerts' windows."""

    name: str
    period_ms: int
    page_quick: Window
    page_slow: Window
    ticket_quick: Window
    ticket_slow: Window

    def alerts(self) -> tuple[tuple[Severity, Window, Window], ...]:
        """(severity, quick, slow): each severity fires on either of its two windows."""
        return (("page", self.page_quick, self.page_slow), ("ticket", self.ticket_quick, self.ticket_slow))

    def factor(self, window: Window) -> Fraction:
        """The burn rate above which `window`'s alert fires."""
        return window.budget_percent / 100 * Fraction(self.period_ms, window.long_ms)

    def sli_windows(self) -> list[int]:
        """Every alert window, shortest first, once each (Sloth records one SLI per window)."""
        windows = {ms for _, quick, slow in self.alerts() for w in (quick, slow) for ms in (w.short_ms, w.long_ms)}
        return sorted(windows)

    def highest_factor(self) -> Fraction:
        return max(self.factor(w) for _, quick, slow in self.alerts() for w in (quick, slow))


def google(period_days: int) -> AlertWindows:
    """Sloth's `google-30d` / `google-28d` (internal/alert/windows/): the same windows for both."""
    minute, hour, day = MS_PER["m"], MS_PER["h"], MS_PER["d"]
    return AlertWindows(
        name=f"google-{period_days}d",
        period_ms=period_days * day,
        page_quick=Window(Fraction(2), 5 * minute, 1 * hour),
        page_slow=Window(Fraction(5), 30 * minute, 6 * hour),
        ticket_quick=Window(Fraction(10), 2 * hour, 1 * day),
        ticket_slow=Window(Fraction(10), 6 * hour, 3 * day),
    )


PERIODS: dict[str, AlertWindows] = {"30d": google(30), "28d": google(28)}
"""The periods `--period` takes, with their windows."""

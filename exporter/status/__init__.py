"""The status page: a bounded board of what the exporter is doing, as HTML and JSON."""

from exporter.status.board import (
    CALLS_KEPT,
    CYCLES_KEPT,
    BackfillProgress,
    CanarySummary,
    FoldedFamily,
    QualitySummary,
    ScrapeSummary,
    SettingRow,
    StatusBoard,
    StatusSnapshot,
    check_trace_url,
)
from exporter.status.document import render_json
from exporter.status.page import CONTENT_SECURITY_POLICY, render_html

__all__ = [
    "CALLS_KEPT",
    "CONTENT_SECURITY_POLICY",
    "CYCLES_KEPT",
    "BackfillProgress",
    "CanarySummary",
    "FoldedFamily",
    "QualitySummary",
    "ScrapeSummary",
    "SettingRow",
    "StatusBoard",
    "StatusSnapshot",
    "check_trace_url",
    "render_html",
    "render_json",
]

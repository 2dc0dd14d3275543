"""`/status.json`: the board as JSON for programs. The shape is documented in docs/status.md
and versioned by `schema`; fields are only ever added within a schema version."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from exporter.status.board import (
    ApiHealth,
    BackfillProgress,
    CallLine,
    CanarySummary,
    CycleFigures,
    QualitySummary,
    RateSummary,
    ScrapeSummary,
    SettingRow,
    StatusSnapshot,
)
from exporter.status.webhooks import WebhookSummary

SCHEMA = 1


def render_json(snapshot: StatusSnapshot) -> bytes:
    return json.dumps(status_document(snapshot), indent=2, sort_keys=False).encode()


def status_document(snapshot: StatusSnapshot) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "version": snapshot.version,
        "generated_at": iso(snapshot.generated_at),
        "started_at": iso(snapshot.started_at),
        "role": snapshot.role,
        "api": _api(snapshot.api),
        "backlog": snapshot.backlog,
        "tracked": snapshot.tracked,
        "cycles": [_cycle(cycle) for cycle in snapshot.cycles],
        "calls": [_call(call, snapshot.trace_link(call.trace_id)) for call in snapshot.calls],
        "canary": _canary(snapshot.canary) if snapshot.canary else None,
        "backfill": _backfill(snapshot.backfill) if snapshot.backfill else None,
        "scrape": _scrape(snapshot.scrape) if snapshot.scrape else None,
        "rate": _rate(snapshot.rate),
        "settings": [_setting(row) for row in snapshot.settings],
        "webhooks": _webhooks(snapshot.webhooks) if snapshot.webhooks else None,
        "quality": _quality(snapshot.quality) if snapshot.quality else None,
    }


def iso(epoch: float | None) -> str | None:
    """RFC 3339 in UTC with milliseconds, or None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _api(api: ApiHealth) -> dict[str, Any]:
    return {
        "state": api.state,
        "since": iso(api.since),
        "last_error": api.last_error,
        "last_error_at": iso(api.last_error_at),
    }


def _cycle(cycle: CycleFigures) -> dict[str, Any]:
    return {
        "at": iso(cycle.at),
        "ok": cycle.ok,
        "seconds": round(cycle.seconds, 3),
        "discovered": cycle.discovered,
        "refreshed": cycle.refreshed,
        "finished": cycle.finished,
        "counted": cycle.counted,
        "trace_fetch_failures": cycle.trace_fetch_failures,
        "rejected": cycle.rejected,
        "abandoned": cycle.abandoned,
        "tracked": cycle.tracked,
        "export_backlog": cycle.export_backlog,
    }


def _call(call: CallLine, link: str | None) -> dict[str, Any]:
    duration = round(call.duration_seconds, 3) if call.duration_seconds is not None else None
    return {
        "call_id": call.call_id,
        "workflow": call.workflow,
        "status": call.status,
        "duration_seconds": duration,
        "finished_at": iso(call.finished_at),
        "trace_id": call.trace_id,
        "trace_url": link,
    }


def _canary(canary: CanarySummary) -> dict[str, Any]:
    duration = canary.last_duration_seconds
    return {
        "workflow": canary.workflow,
        "last_result": canary.last_result,
        "last_duration_seconds": round(duration, 3) if duration is not None else None,
        "last_success_at": iso(canary.last_success_at),
        "in_flight": canary.in_flight,
    }


def _backfill(progress: BackfillProgress) -> dict[str, Any]:
    return {
        "until": iso(progress.until),
        "reached": iso(progress.reached),
        "calls": progress.calls,
        "done": progress.done,
    }


def _scrape(scrape: ScrapeSummary) -> dict[str, Any]:
    return {
        "samples": scrape.samples,
        "max_samples": scrape.max_samples,
        "folded": [
            {"metric": family.metric, "folded_series": family.folded_series, "series_cap": family.series_cap}
            for family in scrape.folded
        ],
    }


def _quality(quality: QualitySummary) -> dict[str, Any]:
    return {
        "interval_seconds": quality.interval,
        "last_result": quality.last_result,
        "last_attempt_at": iso(quality.last_attempt_at),
        "last_success_at": iso(quality.last_success_at),
        "functions": quality.functions,
        "rejected": quality.rejected,
        "pages": quality.pages,
        "last_error": quality.last_error,
        "last_error_at": iso(quality.last_error_at),
    }


def _rate(rate: RateSummary) -> dict[str, Any]:
    last = rate.last_decision
    return {
        "state": rate.state,
        "requests_per_second": _rounded(rate.requests_per_second),
        "limit_found": _rounded(rate.limit_found),
        "last_decision": None
        if last is None
        else {
            "kind": last.kind,
            "at": iso(rate.last_decision_at),
            "reason": last.reason,
            "rate_before": _rounded(last.rate_before),
            "rate": _rounded(last.rate),
        },
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _setting(row: SettingRow) -> dict[str, Any]:
    return {"name": row.name, "value": row.value, "source": row.source, "secret": row.secret}


def _webhooks(summary: WebhookSummary) -> dict[str, Any]:
    delay = summary.last_delay_seconds
    return {
        "url": summary.url,
        "handover": summary.handover,
        "received": dict(summary.received),
        "last_accepted_at": iso(summary.last_accepted_at),
        "last_delay_seconds": round(delay, 3) if delay is not None else None,
        "last_refused": summary.last_refused,
        "last_refused_at": iso(summary.last_refused_at),
        "followed": summary.followed,
        "read": summary.read,
        "counted": summary.counted,
    }

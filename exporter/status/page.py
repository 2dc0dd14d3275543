"""`/status`: the board as one self-contained HTML page for people.

No script and no external asset: inline CSS only, so the page works offline and under
`CONTENT_SECURITY_POLICY`, which the server sends with it. Every value is escaped. The page
reloads itself with a meta refresh, which needs no script.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

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
from exporter.status.document import iso
from exporter.status.webhooks import WebhookSummary

CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
REFRESH_SECONDS = 15

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
header .muted{color:#aab2c0}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:0 0 16px;padding:12px 16px}
h2{font-size:15px;margin:0 0 8px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin:0 0 16px}
.tile{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 16px;min-width:150px}
.tile b{display:block;font-size:20px}
.label{color:#5b6475;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{color:#5b6475;font-weight:600;font-size:12px}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.up{color:#116329}.down{color:#b42318}.unknown{color:#5b6475}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e8ebf0}
.badge.up{background:#dcfce7}.badge.down{background:#fee4e2}
.error{background:#fff4f2;border-left:3px solid #b42318;padding:6px 10px;white-space:pre-wrap;word-break:break-word}
.empty{color:#5b6475}
"""


def render_html(snapshot: StatusSnapshot) -> str:
    body = "".join(
        (
            _header(snapshot),
            "<main>",
            _tiles(snapshot),
            _api_section(snapshot.api),
            _rate_section(snapshot.rate),
            _canary_section(snapshot.canary),
            _webhooks_section(snapshot.webhooks),
            _quality_section(snapshot.quality),
            _backfill_section(snapshot.backfill),
            _calls_section(snapshot),
            _cycles_section(snapshot.cycles),
            _scrape_section(snapshot.scrape),
            _settings_section(snapshot.settings),
            "</main>",
        )
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bem-exporter status</title><style>{_CSS}</style></head><body>{body}</body></html>"
    )


def _header(snapshot: StatusSnapshot) -> str:
    return (
        f"<header><h1>bem-exporter {_e(snapshot.version)}</h1>"
        f'<span>role: <b id="role">{_e(snapshot.role)}</b></span>'
        f'<span class="muted">started {_time(snapshot.started_at)}</span>'
        f'<span class="muted">as of {_time(snapshot.generated_at)}</span></header>'
    )


def _tiles(snapshot: StatusSnapshot) -> str:
    last = snapshot.cycles[0] if snapshot.cycles else None
    tiles = (
        ("bem API", f'<span id="api-state" class="{snapshot.api.state}">{_e(snapshot.api.state)}</span>'),
        ("span backlog", _e(snapshot.backlog)),
        ("tracked calls", _e(snapshot.tracked)),
        ("last cycle", _e(f"{last.seconds:.2f} s") if last else "none yet"),
    )
    return (
        '<div class="tiles">'
        + "".join(f'<div class="tile"><span class="label">{label}</span><b>{value}</b></div>' for label, value in tiles)
        + "</div>"
    )


def _api_section(api: ApiHealth) -> str:
    since = f" since {_time(api.since)}" if api.since is not None else ""
    parts = [f'<h2>bem API</h2><p><span class="badge {api.state}">{_e(api.state)}</span>{since}</p>']
    if api.last_error:
        parts.append(
            f'<p class="label">last error, {_time(api.last_error_at)}</p>'
            f'<div class="error" id="api-error">{_e(api.last_error)}</div>'
        )
    return f'<section id="api">{"".join(parts)}</section>'


def _rate_section(rate: RateSummary) -> str:
    last = rate.last_decision
    rows = (
        ("state", f'<span id="rate-state">{_e(rate.state)}</span>'),
        ("allowed", _per_second(rate.requests_per_second)),
        ("limit found", _per_second(rate.limit_found)),
        ("last decision", "none yet" if last is None else f"{_e(last.kind)}, {_time(rate.last_decision_at)}"),
        ("why", "" if last is None else f'<span id="rate-reason">{_e(last.reason)}</span>'),
    )
    return f'<section id="rate"><h2>Request rate</h2>{_pairs(rows)}</section>'


def _per_second(value: float | None) -> str:
    return "" if value is None else _e(f"{value:.3g} requests/s")


def _canary_section(canary: CanarySummary | None) -> str:
    if canary is None:
        return ""
    rows = (
        ("workflow", _e(canary.workflow)),
        ("last result", _e(canary.last_result or "none yet")),
        ("last duration", _seconds(canary.last_duration_seconds)),
        ("last success", _time(canary.last_success_at)),
        ("in flight", "yes" if canary.in_flight else "no"),
    )
    return f'<section id="canary"><h2>Canary</h2>{_pairs(rows)}</section>'


def _webhooks_section(summary: WebhookSummary | None) -> str:
    if summary is None:
        return ""
    received = ", ".join(f"{result} {count}" for result, count in summary.received)
    refused = f"{_e(summary.last_refused)}, {_time(summary.last_refused_at)}" if summary.last_refused else "never"
    rows = (
        ("listener", f"<code>{_e(summary.url or 'not listening')}</code>"),
        ("hand-over", _e("through the shared state" if summary.handover == "postgres" else "in memory")),
        ("received", f'<span id="webhooks-received">{_e(received)}</span>'),
        ("last accepted", _time(summary.last_accepted_at)),
        ("its delay", _seconds(summary.last_delay_seconds)),
        ("last refused", refused),
        ("calls followed now", _e(summary.followed)),
        ("calls read for them", _e(summary.read)),
        ("calls counted sooner", _e(summary.counted)),
    )
    return f'<section id="webhooks"><h2>Webhooks</h2>{_pairs(rows)}</section>'


def _quality_section(quality: QualitySummary | None) -> str:
    if quality is None:
        return ""
    failed = quality.last_result not in (None, "success")
    result = f'<span class="{"down" if failed else "up"}">{_e(quality.last_result or "none yet")}</span>'
    rows = (
        ("last read", f"{result} {_time(quality.last_attempt_at)}"),
        ("values as of", _time(quality.last_success_at)),
        ("functions shown", _e(quality.functions)),
        ("unreadable items skipped", _e(quality.rejected)),
        ("every", _seconds(quality.interval)),
    )
    parts = [f"<h2>Function quality</h2>{_pairs(rows)}"]
    if quality.last_error:
        parts.append(
            f'<p class="label">last error, {_time(quality.last_error_at)}</p>'
            f'<div class="error" id="quality-error">{_e(quality.last_error)}</div>'
        )
    return f'<section id="quality">{"".join(parts)}</section>'


def _backfill_section(progress: BackfillProgress | None) -> str:
    if progress is None:
        return ""
    rows = (
        ("reaching back to", _time(progress.until)),
        ("oldest call read", _time(progress.reached)),
        ("calls read", _e(progress.calls)),
        ("state", "done" if progress.done else "in progress"),
    )
    return f'<section id="backfill"><h2>First-start backfill</h2>{_pairs(rows)}</section>'


def _calls_section(snapshot: StatusSnapshot) -> str:
    head = ("finished", "workflow", "status", "duration", "trace id")
    rows = [_call_row(call, snapshot.trace_link(call.trace_id)) for call in snapshot.calls]
    return f'<section id="calls"><h2>Latest finished calls</h2>{_table(head, rows, "no finished call yet")}</section>'


def _call_row(call: CallLine, link: str | None) -> Sequence[str]:
    trace = f"<code>{_e(call.trace_id)}</code>"
    if link is not None:
        trace = f'<a href="{_e(link)}" rel="noopener noreferrer" target="_blank">{trace}</a>'
    return (
        _time(call.finished_at),
        _e(call.workflow),
        f'<span class="{"down" if call.status == "failed" else "up"}">{_e(call.status)}</span>',
        _seconds(call.duration_seconds),
        trace,
    )


def _cycles_section(cycles: Sequence[CycleFigures]) -> str:
    head = ("ended", "ok", "seconds", "discovered", "refreshed", "finished", "counted", "rejected", "backlog")
    rows = [
        (
            _time(c.at),
            '<span class="up">yes</span>' if c.ok else '<span class="down">no</span>',
            _e(f"{c.seconds:.2f}"),
            *(_e(n) for n in (c.discovered, c.refreshed, c.finished, c.counted, c.rejected, c.export_backlog)),
        )
        for c in cycles
    ]
    return f'<section id="cycles"><h2>Last poll cycles</h2>{_table(head, rows, "no cycle yet")}</section>'


def _scrape_section(scrape: ScrapeSummary | None) -> str:
    if scrape is None:
        return ""
    size = f'<p><b id="scrape-samples">{_e(scrape.samples)}</b> samples of at most {_e(scrape.max_samples)}</p>'
    head = ("metric", "series folded into other", "series cap now")
    rows = [
        (f"<code>{_e(f.metric)}</code>", _e(f.folded_series), _e(f.series_cap if f.series_cap is not None else ""))
        for f in scrape.folded
    ]
    folded = _table(head, rows, "nothing folded to keep the scrape bounded")
    return f'<section id="scrape"><h2>Metrics scrape</h2>{size}{folded}</section>'


def _settings_section(settings: Sequence[SettingRow]) -> str:
    head = ("setting", "value", "from")
    rows = [(f"<code>{_e(r.name)}</code>", f"<code>{_e(r.value)}</code>", _e(r.source)) for r in settings]
    return f'<section id="settings"><h2>Settings</h2>{_table(head, rows, "not given")}</section>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    header = "".join(f"<th>{_e(name)}</th>" for name in head)
    body = "".join(f"<tr>{''.join(_cell(cell) for cell in row)}</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _cell(html: str) -> str:
    return f"<td>{html}</td>"


def _pairs(rows: Iterable[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _time(epoch: float | None) -> str:
    shown = iso(epoch)
    if shown is None:
        return "never"
    return f'<time datetime="{shown}">{_e(shown[:19].replace("T", " "))} UTC</time>'


def _seconds(value: float | None) -> str:
    return "" if value is None else _e(f"{value:.1f} s")


def _e(value: object) -> str:
    return escape(str(value), quote=True)

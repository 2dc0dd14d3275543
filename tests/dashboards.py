"""The shipped Grafana dashboards and their PromQL, for tests.

`dashboard_queries()` is the entry point for anything that wants to run the dashboards'
queries (against a real Prometheus, say): it returns every PromQL expression of every panel
with the Grafana variables already replaced by values Prometheus accepts.

Also here: the metric names the exporter exposes (the contract the dashboards and rules are
written against), the names a PromQL expression reads, and the rows of docs/dashboards.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
RULES_DIR = ROOT / "prometheus" / "rules"
DOCS = ROOT / "docs" / "dashboards.md"

Dashboard = dict[str, Any]
Panel = dict[str, Any]

COUNTERS = (
    "bem_calls_total",
    "bem_function_calls_total",
    "bem_events_total",
    "bem_call_errors_total",
    "bem_exporter_api_requests_total",
    "bem_exporter_spans_exported_total",
    "bem_exporter_span_export_failures_total",
    "bem_exporter_spans_dropped_total",
    "bem_exporter_rejected_records_total",
    "bem_exporter_trace_anomalies_total",
    "bem_exporter_calls_abandoned_total",
    "bem_exporter_label_overflow_total",
    "bem_exporter_scrape_folded_series_total",
    "bem_canary_runs_total",
    "bem_exporter_quality_reads_total",
    "bem_exporter_webhooks_received_total",
    "bem_exporter_webhook_counted_calls_total",
    "bem_exporter_api_rate_decisions_total",
    "bem_exporter_unexpected_errors_total",
    "bem_exporter_api_throttled_total",
    "bem_exporter_responses_too_large_total",
    "bem_exporter_state_errors_total",
    "bem_exporter_leader_transitions_total",
    "bem_exporter_fenced_commits_total",
)
HISTOGRAMS = (
    "bem_call_duration_seconds",
    "bem_call_queue_seconds",
    "bem_function_call_duration_seconds",
    "bem_function_confidence",
    "bem_exporter_poll_duration_seconds",
    "bem_exporter_api_request_duration_seconds",
    "bem_exporter_export_lag_seconds",
    "bem_canary_duration_seconds",
    "bem_exporter_webhook_delay_seconds",
)
GAUGES = (
    "bem_calls_in_progress",
    "bem_calls_oldest_in_progress_age_seconds",
    "bem_exporter_up",
    "bem_exporter_last_successful_poll_timestamp_seconds",
    "bem_exporter_leader",
    "bem_exporter_tracked_calls",
    "bem_exporter_export_backlog_calls",
    "bem_exporter_build_info",
    "bem_canary_success",
    "bem_canary_last_success_timestamp_seconds",
    "bem_exporter_api_rate_limit",
    "bem_exporter_backfill_remaining_calls",
    "bem_function_accuracy_ratio",
    "bem_function_precision_ratio",
    "bem_function_recall_ratio",
    "bem_function_f1_ratio",
    "bem_function_results",
    "bem_function_labeled_results",
    "bem_function_evaluations",
    "bem_exporter_quality_last_success_timestamp_seconds",
    "bem_exporter_scrape_samples",
    "bem_exporter_scrape_samples_limit",
    "bem_exporter_api_throttle_seconds",
)
EXPORTED_METRICS = COUNTERS + HISTOGRAMS + GAUGES
"""The metric families bem-exporter exposes (docs/metrics.md, DESIGN.md section 1)."""

PROMETHEUS_SERIES = ("up", "ALERTS")
"""Series Prometheus makes itself that the dashboards and alerts read."""

BUILTIN_VARIABLES = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
"""Values for Grafana's built-in variables when a query leaves Grafana."""

_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


@cache
def _load(path: Path) -> Dashboard:
    dashboard: Dashboard = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboards() -> dict[str, Dashboard]:
    """The dashboards by file name."""
    return {path.name: _load(path) for path in dashboard_files()}


def panels(dashboard: Dashboard) -> list[Panel]:
    """Every panel but rows, in file order (panels inside collapsed rows included)."""
    out: list[Panel] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def is_prometheus(panel: Panel) -> bool:
    return bool(panel.get("datasource", {}).get("type") == "prometheus")


def expand(expr: str, variables: Mapping[str, str] | None = None) -> str:
    """`expr` with Grafana variables replaced: built-ins by `BUILTIN_VARIABLES`, others by
    `variables`, anything else by `.*` (what an "All" selection sends)."""
    values = {**BUILTIN_VARIABLES, **(variables or {})}

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, ".*")

    return _VARIABLE.sub(replace, expr)


def dashboard_queries(variables: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every Prometheus query of every panel, with
    the Grafana variables expanded (see `expand`). Pass e.g. `{"workflow": "invoice-intake"}`
    for dashboards whose queries match a variable with `=` rather than `=~`. A text box
    variable not given is its value as shipped (what Grafana sends before anyone types)."""
    out = []
    for dashboard in load_dashboards().values():
        values = {**textbox_values(dashboard), **(variables or {})}
        for panel in panels(dashboard):
            if not is_prometheus(panel):
                continue
            for target in panel.get("targets", []):
                out.append((dashboard["uid"], panel["title"], expand(target["expr"], values)))
    return out


def textbox_values(dashboard: Dashboard) -> dict[str, str]:
    """The shipped values of a dashboard's text box variables (e.g. the Quality dashboard's
    price per function call, empty)."""
    return {
        variable["name"]: str(variable.get("current", {}).get("value", ""))
        for variable in dashboard.get("templating", {}).get("list", [])
        if variable.get("type") == "textbox"
    }


def annotation_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, annotation name, PromQL) of the Prometheus annotations."""
    return [
        (dashboard["uid"], annotation["name"], expand(annotation["expr"]))
        for dashboard in load_dashboards().values()
        for annotation in dashboard.get("annotations", {}).get("list", [])
        if annotation.get("datasource", {}).get("type") == "prometheus"
    ]


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, PromQL selector) of the `label_values(selector, label)`
    query variables."""
    out = []
    for dashboard in load_dashboards().values():
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert match, f"{dashboard['uid']}: variable {variable['name']}: not label_values(selector, label)"
            out.append((dashboard["uid"], variable["name"], expand(match.group(1))))
    return out


def selectors(expr: str) -> Iterator[str]:
    """The metric names an expression's vector selectors read."""
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"selector without a metric name in {expr!r}"
            names.append(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return iter(names)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted(RULES_DIR.glob("*.yaml")):
        groups.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    return groups


def recording_rules() -> dict[str, list[str]]:
    """Recorded name -> the expressions recording it."""
    out: dict[str, list[str]] = {}
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                out.setdefault(rule["record"], []).append(rule["expr"])
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def known_series() -> set[str]:
    """Every series name a dashboard or rule may read."""
    names = set(COUNTERS) | set(GAUGES) | set(PROMETHEUS_SERIES) | set(recording_rules())
    for histogram in HISTOGRAMS:
        names |= {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"}
    return names


# --- docs/dashboards.md ---------------------------------------------------------------------


def panel_queries(panel: Panel) -> list[str]:
    """A panel's queries as written (PromQL or TraceQL), whitespace collapsed."""
    return [" ".join((target.get("expr") or target.get("query") or "").split()) for target in panel["targets"]]


def doc_rows(dashboard: Dashboard) -> list[tuple[str, str, list[str]]]:
    """(title, what it shows, queries) per panel: what the docs table must say."""
    return [
        (panel["title"], " ".join(panel["description"].split()), panel_queries(panel)) for panel in panels(dashboard)
    ]


def doc_table(dashboard: Dashboard) -> str:
    """The markdown table of a dashboard's panels, as docs/dashboards.md has it."""
    lines = ["| Panel | What it shows | Query |", "| --- | --- | --- |"]
    for title, shows, queries in doc_rows(dashboard):
        cells = [title, shows, "<br>".join(f"`{query}`" for query in queries)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def documented_rows() -> dict[str, list[tuple[str, str, list[str]]]]:
    """The panel tables of docs/dashboards.md, by the dashboard uid named in the heading
    above each (`### Title (`uid`)`)."""
    out: dict[str, list[tuple[str, str, list[str]]]] = {}
    uid = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = re.fullmatch(r"#+\s.*\(`([\w-]+)`\)\s*", line)
            uid = heading.group(1) if heading else None
            if uid:
                out[uid] = []
            continue
        if uid is None or not line.startswith("|") or line.startswith(("| Panel |", "| ---")):
            continue
        cells = [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        assert len(cells) == 3, f"docs/dashboards.md: not a 3-column row: {line}"
        title, shows, queries = cells
        out[uid].append((title, shows, [query.strip().strip("`") for query in queries.split("<br>")]))
    return out

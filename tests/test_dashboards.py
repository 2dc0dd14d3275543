"""The Grafana dashboards: provisionable as shipped, every panel queried, described and with a
unit, every PromQL expression valid and reading only metrics the exporter exposes or the
recording rules record, and docs/dashboards.md in step with them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from dashboards import (
    DASHBOARD_DIR,
    DOCS,
    EXPORTED_METRICS,
    ROOT,
    alert_rules,
    annotation_queries,
    dashboard_queries,
    doc_rows,
    doc_table,
    documented_rows,
    is_prometheus,
    known_series,
    load_dashboards,
    panels,
    recording_rules,
    selectors,
    variable_queries,
)

DASHBOARDS = load_dashboards()
EXPECTED = {"bem-overview.json", "bem-workflow.json", "bem-exporter-health.json", "bem-slo.json"}
PANEL_TYPES = {"timeseries", "stat", "heatmap", "table", "bargauge"}
RANGE = re.compile(r"\[([^\]]*)\]")
EXPECTED.add("bem-quality.json")  # the Quality dashboard (issue 22)


def test_every_shipped_dashboard_is_there() -> None:
    assert set(DASHBOARDS) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_is_provisionable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
    assert "__inputs" not in dashboard and "__requires" not in dashboard, "an export for sharing, not provisioning"
    assert "${DS_" not in text, "import placeholder left in"
    assert dashboard["id"] is None
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"])
    assert dashboard["uid"] == Path(name).stem, "uid and file name differ"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["title"].startswith("bem / ")
    assert "bem" in dashboard["tags"]
    assert dashboard["description"]


def test_uids_and_titles_are_unique() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)


def test_links_point_at_shipped_dashboards() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    for name, dashboard in DASHBOARDS.items():
        for uid in re.findall(r"/d/([\w-]+)", json.dumps(dashboard)):
            assert uid in uids, f"{name} links to unknown dashboard {uid}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_and_target_uses_the_datasource_variable(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    allowed = {"prometheus": "${datasource}"}
    if "tempo" in variables:
        assert variables["tempo"]["type"] == "datasource"
        assert variables["tempo"]["query"] == "tempo"
        allowed["tempo"] = "${tempo}"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, variable["name"]
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, annotation["name"]
    for panel in panels(dashboard):
        source = panel["datasource"]
        assert allowed.get(source["type"]) == source["uid"], f"{panel['title']}: datasource {source}"
        for target in panel["targets"]:
            assert target["datasource"] == source, f"{panel['title']}: target {target['refId']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_has_a_query_a_unit_and_a_description(name: str) -> None:
    for panel in panels(DASHBOARDS[name]):
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel["type"] in PANEL_TYPES, f"{title}: panel type {panel['type']}"
        assert len(panel.get("description", "")) >= 30, f"{title}: no description"
        assert panel["targets"], f"{title}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), f"{title}: duplicate refIds"
        for target in panel["targets"]:
            query = target.get("expr") if is_prometheus(panel) else target.get("query")
            assert query and query.strip(), f"{title}: empty query {target['refId']}"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"].get("unit"), f"{title}: heatmap without a y-axis unit"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panel_ids_are_unique_and_the_grid_has_no_overlap(name: str) -> None:
    dashboard = DASHBOARDS[name]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, f"{panel['title']}: {grid}"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_query_parses() -> None:
    queries = dashboard_queries() + annotation_queries() + variable_queries()
    assert len(queries) > 60
    for uid, title, expr in queries:
        try:
            promql_parser.parse(expr)
        except ValueError as error:  # what promql_parser raises for an expression it cannot parse
            pytest.fail(f"{uid} / {title}: {error}\n{expr}")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_range_windows_follow_the_dashboard(name: str) -> None:
    """Graphs use $__rate_interval (or $__range for totals over the time picker); a fixed
    window is for "now" stat panels only."""
    for panel in panels(DASHBOARDS[name]):
        if not is_prometheus(panel):
            continue
        for target in panel["targets"]:
            for window in RANGE.findall(target["expr"]):
                if panel["type"] == "stat":
                    assert re.fullmatch(r"\d+[smh]|\$__rate_interval", window), f"{panel['title']}: [{window}]"
                else:
                    assert window in ("$__rate_interval", "$__range"), f"{panel['title']}: [{window}]"


def test_dashboards_and_rules_read_only_known_series() -> None:
    known = known_series()
    reads: list[tuple[str, str]] = [(f"{uid} / {title}", expr) for uid, title, expr in dashboard_queries()]
    reads += [(f"{uid} / annotation {title}", expr) for uid, title, expr in annotation_queries()]
    reads += [(f"{uid} / variable {title}", expr) for uid, title, expr in variable_queries()]
    reads += [(f"recording rule {name}", expr) for name, exprs in recording_rules().items() for expr in exprs]
    reads += [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for where, expr in reads:
        for name in selectors(expr):
            assert name in known, f"{where} reads {name}, which neither the exporter nor a recording rule provides"


def test_every_recording_rule_is_read_somewhere() -> None:
    exprs = [expr for _, _, expr in dashboard_queries()]
    exprs += [rule["expr"] for rule in alert_rules()]
    exprs += [expr for values in recording_rules().values() for expr in values]
    read = {name for expr in exprs for name in selectors(expr)}
    unused = set(recording_rules()) - read
    assert not unused, f"recording rules nothing reads: {sorted(unused)}"


def test_the_exporter_defines_every_metric_the_dashboards_rely_on() -> None:
    """A renamed metric in the exporter must not leave the dashboards and alerts blank."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "exporter").rglob("*.py"))
    missing = [name for name in EXPORTED_METRICS if f'"{name}"' not in source]
    assert not missing, f"not found in exporter/: {missing}"


def test_latency_panels_link_exemplars_to_traces() -> None:
    workflow = DASHBOARDS["bem-workflow.json"]
    exemplar_exprs = [
        target["expr"] for panel in panels(workflow) for target in panel["targets"] if target.get("exemplar")
    ]
    assert any("bem_call_duration_seconds_bucket" in expr for expr in exemplar_exprs)
    provisioning = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yaml").read_text())
    sources = {source["uid"]: source for source in provisioning["datasources"]}
    prometheus = next(source for source in sources.values() if source["type"] == "prometheus")
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id"}.items() <= destinations[0].items()
    assert sources[destinations[0]["datasourceUid"]]["type"] == "tempo"


def test_dashboards_provider_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yaml").read_text())["providers"][0]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = dict(volume.split(":")[:2] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_docs_table_matches_the_dashboards() -> None:
    documented = documented_rows()
    for dashboard in DASHBOARDS.values():
        uid = dashboard["uid"]
        assert uid in documented, f"{DOCS.name}: no section for {uid} (a heading ending in (`{uid}`))"
        assert documented[uid] == doc_rows(dashboard), (
            f"{DOCS.name} is out of date for {uid}; its table should read:\n\n{doc_table(dashboard)}\n"
        )
    assert set(documented) == {d["uid"] for d in DASHBOARDS.values()}

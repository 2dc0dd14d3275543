"""The Prometheus rules: valid for promtool, every alert unit-tested both ways (a case where it
fires and one where it stays silent), mixin conventions, and a runbook for every alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from dashboards import ROOT, RULES_DIR, alert_rules, recording_rules, rule_groups

PROMETHEUS = ROOT / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.yaml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yaml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"
SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(binary).exists(), "promtool is missing: apt-get install prometheus (scripts/test does)"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def test_rule_files_pass_promtool_check() -> None:
    assert len(RULE_FILES) == 2
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES
    result = promtool("test", "rules", *TEST_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_prometheus_config_is_valid() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yaml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["bem-exporter"]["static_configs"][0]["targets"] == ["exporter:9877"]


def _alert_cases() -> dict[str, dict[str, int]]:
    """alertname -> {"fires": n, "silent": n} over every promtool test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in TEST_FILES:
        document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                counts = cases.setdefault(case["alertname"], {"fires": 0, "silent": 0})
                counts["fires" if case.get("exp_alerts") else "silent"] += 1
    return cases


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    cases = _alert_cases()
    unknown = set(cases) - alerts
    assert not unknown, f"tests name alerts that do not exist (they would pass vacuously): {unknown}"
    for alert in sorted(alerts):
        assert cases.get(alert, {}).get("fires"), f"{alert}: no test case where it fires"
        assert cases.get(alert, {}).get("silent"), f"{alert}: no test case where it stays silent"


def test_test_files_load_every_rule_file() -> None:
    for path in TEST_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        loaded = {(path.parent / name).resolve() for name in document["rule_files"]}
        needed = {RULES_DIR / "bem-recording.yaml"}
        if any(case for test in document["tests"] for case in test.get("alert_rule_test", [])):
            needed.add(RULES_DIR / "bem-alerts.yaml")
        assert needed <= loaded, f"{path.name} does not load {needed - loaded}"


def test_alerts_follow_the_mixin_conventions() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(set(names)) == len(names), "duplicate alert names"
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Bem(?:[A-Z][a-z0-9]*)+", name), f"{name}: not CamelCase with the Bem prefix"
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in annotations["summary"], f"{name}: the summary is static; details go in the description"
        assert "{{ $labels." in annotations["description"] or "{{ $value" in annotations["description"], name
        assert annotations["runbook_url"] == f"docs/alerts.md#{name.lower()}", name


def test_alert_severities_match_the_intent() -> None:
    """Pages (critical) are for: bem failing outright, and monitoring gone blind."""
    critical = {rule["alert"] for rule in alert_rules() if rule["labels"]["severity"] == "critical"}
    assert critical == {
        "BemWorkflowFailing",
        "BemExporterDown",
        "BemExporterAbsent",
        "BemExporterPollFailing",
        "BemExporterPollsStale",
        "BemExporterNoLeader",
    }


def test_every_alert_has_a_runbook_section() -> None:
    text = ALERTS_DOC.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip()).lower().replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("### ")
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert name.lower() in headings, f"docs/alerts.md: no '### {name}' section"
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for part in ("**Meaning**", "**Threshold**", "**What to check**", "**What to do**"):
            assert part in section, f"docs/alerts.md: {name} has no {part}"
        assert f"`{rule['labels']['severity']}`" in section, f"docs/alerts.md: {name}: severity not stated"


def test_alerts_summary_table_matches_the_rules() -> None:
    """The table at the top of docs/alerts.md states each alert's severity and `for`."""
    rows = {
        match.group(1): (match.group(2), match.group(3))
        for match in re.finditer(
            r"^\| \[(\w+)\]\(#\w+\) \| `(\w+)` \| .+ \| (\w+) \|$", ALERTS_DOC.read_text(encoding="utf-8"), re.M
        )
    }
    expected = {rule["alert"]: (rule["labels"]["severity"], rule.get("for", "0m")) for rule in alert_rules()}
    assert rows == expected


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name in recording_rules():
        assert re.fullmatch(r"[a-z_]+:bem_[a-z0-9_]+:[a-z0-9_]+", name), name


def test_rule_groups_are_named_and_unique() -> None:
    names = [group["name"] for group in rule_groups()]
    assert len(set(names)) == len(names)

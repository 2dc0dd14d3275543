#!/usr/bin/env python3
"""Writes monitoring/prometheusrule.yaml (a Prometheus Operator PrometheusRule) from the
shipped rule files, prometheus/rules/*.yaml.

    python3 deploy/kubernetes/generate_prometheusrule.py           # write it
    python3 deploy/kubernetes/generate_prometheusrule.py --check   # exit 1 when it is stale

Each file's groups are copied as text under `spec.groups`, comments and block scalars kept,
so the manifest holds the shipped rules exactly (tests/test_deploy.py checks both).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules"
TARGET = Path(__file__).resolve().parent / "monitoring" / "prometheusrule.yaml"
HEADER = """\
# Generated from prometheus/rules/*.yaml by deploy/kubernetes/generate_prometheusrule.py:
# do not edit, run it again. The Prometheus Operator picks PrometheusRules by its ruleSelector
# (kube-prometheus-stack: the label release=<its release name>): add that label if yours has one.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: bem-exporter
  labels:
    app.kubernetes.io/name: bem-exporter
spec:
  groups:
"""


def groups_text(path: Path) -> str:
    """The lines under the file's top-level `groups:` key, indented one level deeper."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index("groups:") + 1
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    return f"    # from prometheus/rules/{path.name}\n" + "\n".join(body).rstrip("\n") + "\n"


def render() -> str:
    return HEADER + "\n".join(groups_text(path) for path in sorted(RULES.glob("*.yaml")))


def main(arguments: list[str]) -> int:
    text = render()
    if arguments == ["--check"]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    if arguments:
        print(__doc__, file=sys.stderr)
        return 2
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

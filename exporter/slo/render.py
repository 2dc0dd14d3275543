"""Rule groups as YAML: a Prometheus rule file, or a Kubernetes PrometheusRule.

PyYAML writes it: workflow names and labels come from users, and YAML's quoting rules (`yes`,
`1e3`, `: `, `#`) are where a hand-written emitter goes wrong. Expressions of several lines
are written as literal blocks (`|`), and sequences indented under their key, as the other rule
files of this repository are.
"""

from __future__ import annotations

from typing import Any

import yaml

from exporter.slo.model import Format


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # rules share label dicts; a reader wants them written out, not as &id001

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        del indentless  # sequences are always indented under their key
        super().increase_indent(flow, False)


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _string)


def render(groups: list[dict[str, Any]], output: Format, header: str) -> str:
    """`header` (comment lines) and the document."""
    document: dict[str, Any] = {"groups": groups}
    if output == "prometheusrule":
        document = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {
                "name": "bem-exporter-slo",
                "labels": {"app.kubernetes.io/name": "bem-exporter", "app.kubernetes.io/component": "slo"},
            },
            "spec": document,
        }
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    return comments + str(body)

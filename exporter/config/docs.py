"""The tables of docs/configuration.md, generated from the settings table.

    python -m exporter.config.docs docs/configuration.md          # rewrite the tables
    python -m exporter.config.docs --check docs/configuration.md  # exit 1 if out of date

Only the text between the markers is generated; the prose around it is written by hand.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.config.table import ROWS, SECTIONS, Row, Section

_BLOCK = re.compile(
    r"(<!-- generated from exporter/config/table\.py: (\w+) -->\n).*?(<!-- end of generated table -->)", re.DOTALL
)


def section_table(section: Section) -> str:
    lines = ["| environment | config key | flag | default | meaning |", "| --- | --- | --- | --- | --- |"]
    lines += [_line(row) for row in ROWS if row.section == section]
    return "\n".join(lines) + "\n"


def _line(row: Row) -> str:
    env = ", ".join(f"`{name}`" for name in row.names)
    key = f"`{row.key}`" if row.key else ""
    flag = f"`{row.flag_name}`" if row.flag_name else ""
    return f"| {env} | {key} | {flag} | {row.default_text} | {row.help} |"


def render(text: str) -> str:
    """`text` with every generated block rewritten from the table."""

    def block(match: re.Match[str]) -> str:
        section = next((name for name in SECTIONS if name == match.group(2)), None)
        if section is None:
            raise ValueError(f"no settings section {match.group(2)!r}")
        return match.group(1) + section_table(section) + match.group(3)

    return _BLOCK.sub(block, text)


def main(argv: Sequence[str]) -> int:
    check = "--check" in argv
    paths = [Path(arg) for arg in argv if arg != "--check"]
    stale = [path for path in paths if render(path.read_text()) != path.read_text()]
    if check:
        for path in stale:
            print(f"{path}: out of date; run python -m exporter.config.docs {path}", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A command imports what it needs: the heavy optional parts stay out of `once`.

aiohttp's server (about 10 MiB resident) serves `/metrics` and webhooks, which only `run`
and `demo` do; psycopg (about 20 MiB) is needed only with the state in PostgreSQL. (`check`,
which lives a second, imports psycopg to probe a PostgreSQL state when one is configured.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from processes import ROOT, ExporterProcess

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer

HEAVY = ("aiohttp", "psycopg")

PROBE = """
import json, sys
import exporter.cli, exporter.app, exporter.commands.{command}
print(json.dumps(sorted(name for name in {heavy!r} if name in sys.modules)))
"""


def imported_heavy(command: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after importing `command` and the wiring."""
    code = PROBE.format(command=command, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    found: list[str] = json.loads(done.stdout)
    return found


def test_once_imports_neither_a_server_nor_the_postgresql_driver() -> None:
    assert imported_heavy("once") == []


# `once` run to its end as the command line runs it: what the parser, the cycle and the span
# delivery import on the way counts too (the simulator's flags once brought aiohttp in).
RUN_ONCE = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(n for n in {heavy!r} if n in sys.modules)), file=sys.stderr))
from exporter.cli import main
sys.exit(main(["once"]))
"""


def test_once_run_to_its_end_imports_neither(tmp_path: Path) -> None:
    simulator = Simulator(SimulatorConfig(prefill=30, history=600.0, arrival_rate=0.0))
    with SimulatorServer(simulator) as url:
        env = ExporterProcess(url, tmp_path / "state.sqlite").env
        code = RUN_ONCE.format(heavy=HEAVY)
        command = [sys.executable, "-c", code]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("ok:")
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []


def test_check_imports_no_server() -> None:
    assert "aiohttp" not in imported_heavy("check")


def test_run_imports_the_server_it_needs() -> None:
    """The probe sees an import when there is one: `run` serves /metrics on aiohttp."""
    assert imported_heavy("run") == ["aiohttp"]

"""Peak RSS of `bem-exporter once`, measured from outside: the kernel's account of the child.

`once` runs as users run it (`python -m exporter once`, its own process, settings from the
environment) against a simulator and an OTLP/HTTP receiver; its peak resident set size and CPU
time come from `wait4`'s resource usage of that child (what `/usr/bin/time -v` reports), not
from the process's own view of itself.

Linux carries a parent's peak RSS into a child across fork (or vfork) and exec, so `once`
started by the bench (large after its scrape and memory runs) would report the bench's peak. A
small launcher, itself a fresh process, forks `once` and reports its `wait4` usage instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "exporter", "once"])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as report:
    json.dump({"maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime, "code": code}, report)
sys.exit(code)
"""
"""Runs `once` as its forked child and writes the child's resource usage to argv[1]."""


def once(root: Path, api_url: str, otlp_endpoint: str, state_path: Path) -> dict[str, Any]:
    """One `once` of the tree at `root`: peak RSS (MiB), CPU seconds, exit code, summary line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
    env.update(
        {
            "PYTHONPATH": str(root),
            "BEM_API_URL": api_url,
            "BEM_API_KEY": "sim-key",
            "BEM_STATE_PATH": str(state_path),
            "BEM_LOOKBACK": "3h",
            "BEM_MAX_RPS": "100000",
            "BEM_LOG_LEVEL": "warning",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }
    )
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile() as err:
        usage_path = Path(scratch) / "usage.json"
        command = [sys.executable, "-c", LAUNCHER, str(usage_path)]
        process = subprocess.run(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=err, check=False)
        summary = process.stdout.decode(errors="replace").strip().splitlines()
        if process.returncode != 0:
            err.seek(0)
            raise SystemExit(f"once failed ({process.returncode}): {summary}\n{err.read().decode()[-3000:]}")
        usage = json.loads(usage_path.read_text())
    return {
        "peak_rss_mb": usage["maxrss_kib"] / 1024,  # KiB on Linux
        "cpu_s": usage["cpu_s"],
        "returncode": process.returncode,
        "summary": summary[-1] if summary else "",
    }

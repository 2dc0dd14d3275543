"""Peak RSS of `bem-exporter once`, measured from outside: the kernel's account of the child.

`once` runs as users run it (`python -m exporter once`, its own process, settings from the
environment) against a simulator and an OTLP/HTTP receiver; its peak resident set size and CPU
time come from `wait4`'s resource usage of that child (what `/usr/bin/time -v` reports), not
from the process's own view of itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


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
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        command = [sys.executable, "-m", "exporter", "once"]
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        summary = out.read().decode(errors="replace").strip().splitlines()
        if process.returncode != 0:
            raise SystemExit(f"once failed ({process.returncode}): {summary}\n{err.read().decode()[-3000:]}")
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "returncode": process.returncode,
        "summary": summary[-1] if summary else "",
    }

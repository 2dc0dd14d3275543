"""Real processes for end-to-end tests: the exporter CLI as a subprocess, scraped over HTTP.

The simulator runs in the test process (`SimulatorServer`), so its ground truth is at hand;
the exporter runs exactly as a user runs it (`python -m exporter run`), so kill -9, SIGTERM and
restarts are real.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
from conftest import SIM_KEY
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: object, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_command(command: str, api_url: str, state_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`bem-exporter COMMAND` to completion, with the same environment as `ExporterProcess`."""
    process = ExporterProcess(api_url, state_path, env=env)
    return subprocess.run(
        [sys.executable, "-m", "exporter", command],
        env=process.env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


class ExporterProcess:
    """`bem-exporter run` against `api_url`, with its own state file and listen port."""

    def __init__(
        self,
        api_url: str,
        state_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        command: str = "run",
        log_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or state_path.with_suffix(f".{self.port}.log")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
        self.env = {
            **base,
            "PYTHONPATH": str(ROOT),
            "BEM_API_URL": api_url,
            "BEM_API_KEY": SIM_KEY,
            "BEM_STATE_PATH": str(state_path),
            "BEM_LISTEN": f"127.0.0.1:{self.port}",
            "BEM_POLL_INTERVAL": "1s",
            "BEM_MAX_RPS": "1000",
            "BEM_LOG_FORMAT": "json",
            "OTEL_TRACES_EXPORTER": "none",
            **(env or {}),
        }
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: bool = True, timeout: float = 30.0) -> ExporterProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "exporter", self.command],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        if ready:
            wait_until(self.is_ready, timeout, what=f"exporter ready at {self.url}")
        return self

    def is_ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"exporter exited with {self.process.returncode}:\n{self.log()}")
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    def metrics(self, openmetrics: bool = False) -> str:
        headers = {"accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
        response = httpx.get(f"{self.url}/metrics", headers=headers, timeout=10)
        response.raise_for_status()
        return response.text

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Values of the samples called `name`, keyed by their sorted labels."""
        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name:
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def calls_total(self) -> dict[tuple[str, str], int]:
        """`bem_calls_total` as {(workflow_name, status): count}, zeros left out."""
        counts = {}
        for labels, value in self.samples("bem_calls_total").items():
            label = dict(labels)
            if value:
                counts[(label["workflow_name"], label["status"])] = int(value)
        return counts

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ExporterProcess:
        try:
            return self.start()
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ fails: do not leak the process
            raise

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

"""A real Prometheus server for end-to-end tests: scrapes targets every second, optionally
evaluates rule files, and answers PromQL over its HTTP API.

    with PrometheusServer(tmp_path, ["127.0.0.1:9877"]) as prometheus:
        prometheus.wait_for("sum(bem_calls_total)", lambda v: v == 42, timeout=30)
        prometheus.vector("sum by (status) (bem_calls_total)")

Prometheus runs as a subprocess (`--enable-feature=exemplar-storage`) in a temporary
directory of its own (configuration, TSDB, log), on a free loopback port. `PROMETHEUS_BIN`
overrides the binary (default: `prometheus` on the PATH, as installed by `scripts/test`).
On failure, `report()` gives its log tail and the state of its scrape targets.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from processes import free_port

JSON = dict[str, Any]
Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted, `__name__` included when the result has one."""

JOB = "bem-exporter"
"""The scrape job of the exporter targets (the name the shipped alerts expect)."""

_INTERVAL_LINE = re.compile(r"^(\s*)interval:\s*\S+\s*$", re.MULTILINE)


def prometheus_binary() -> str | None:
    """The Prometheus binary to run, or None when there is none."""
    configured = os.environ.get("PROMETHEUS_BIN")
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("prometheus")


def labels_of(metric: Mapping[str, str]) -> Labels:
    return tuple(sorted(metric.items()))


class PrometheusError(AssertionError):
    """Prometheus did not start or a query failed; the message carries its log tail."""


class PrometheusServer:
    """One Prometheus process scraping `targets` (`host:port`) in job `bem-exporter`.

    `rule_files` are copied into the server's directory. With `rule_interval` set (the
    default: the scrape interval), each group's own `interval:` is replaced by it, so that a
    group meant to run every minute runs within a test's few seconds too.
    """

    def __init__(
        self,
        directory: Path,
        targets: Sequence[str],
        *,
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        rule_interval: str | None = "1s",
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.rule_files = list(rule_files)
        self.rule_interval = rule_interval
        self.binary = binary or prometheus_binary() or "prometheus"
        self.log_path = directory / "prometheus.log"
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(timeout=10)

    # --- lifecycle -------------------------------------------------------------------------------

    def _write_config(self) -> Path:
        rules = []
        for index, source in enumerate(self.rule_files):
            text = source.read_text()
            if self.rule_interval is not None:
                text = _INTERVAL_LINE.sub(lambda m: f"{m.group(1)}interval: {self.rule_interval}", text)
            target = self.directory / f"rules-{index}-{source.name}"
            target.write_text(text)
            rules.append(str(target))
        # JSON is YAML: no YAML library needed to write the configuration.
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.rule_interval or self.scrape_interval,
            },
            "rule_files": rules,
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }
        path = self.directory / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        config = self._write_config()
        for attempt in range(3):  # a free port can be taken by someone else before we bind it
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            storage = self.directory / "data"
            shutil.rmtree(storage, ignore_errors=True)
            with open(self.log_path, "ab") as log:
                log.write(f"--- start attempt {attempt + 1} on port {self.port}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    [
                        self.binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={storage}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--enable-feature=exemplar-storage",
                        "--log.level=info",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.directory,
                    start_new_session=True,  # a Ctrl-C of pytest must not kill it before we do
                )
            if self._wait_ready(timeout):
                return self
            if "address already in use" not in self.log_tail(20):
                break
        self.stop()
        raise PrometheusError(f"Prometheus did not become ready within {timeout}s\n{self.report()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                if self._client.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._client.close()
        self._client = httpx.Client(timeout=10)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- diagnostics -----------------------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def report(self) -> str:
        """Prometheus' log tail and the health of its scrape targets, for failure messages."""
        parts = [f"--- Prometheus at {self.url or '(not started)'}, log {self.log_path}:", self.log_tail()]
        try:
            for target in self.active_targets():
                parts.append(
                    f"target {target.get('scrapeUrl')}: health={target.get('health')} "
                    f"lastError={target.get('lastError')!r} lastScrape={target.get('lastScrape')}"
                )
        except (httpx.HTTPError, PrometheusError, OSError) as error:
            parts.append(f"(targets unavailable: {error})")
        return "\n".join(parts)

    @contextmanager
    def diagnose(self, *extra: Callable[[], str]) -> Iterator[None]:
        """Print this server's report (and each `extra()`, e.g. the exporter's log) when the
        block raises, so that pytest shows it with the failure."""
        try:
            yield
        except BaseException:
            print(self.report())
            for more in extra:
                try:
                    print(more())
                except Exception as error:  # noqa: BLE001  diagnostics must not hide the failure they explain
                    print(f"(diagnostics failed: {error})")
            raise

    # --- HTTP API --------------------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET `/api/v1/<path>`; the `data` of a successful answer."""
        response = self._client.get(f"{self.url}/api/v1/{path}", params=params)
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"{path} {params}: HTTP {response.status_code}: {response.text[:500]}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> JSON:
        """`/api/v1/query`: `{"resultType": ..., "result": ...}`."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data: JSON = self.api("query", **params)
        return data

    def vector(self, expr: str, at: float | None = None) -> dict[Labels, float]:
        """An instant vector query as {labels: value}."""
        data = self.query(expr, at)
        if data["resultType"] == "scalar":
            return {(): float(data["result"][1])}
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: expected a vector, got {data['resultType']}")
        return {labels_of(item["metric"]): float(item["value"][1]) for item in data["result"]}

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The single value of `expr`, None when the result is empty."""
        values = self.vector(expr, at)
        if not values:
            return None
        if len(values) != 1:
            raise PrometheusError(f"{expr}: expected one series, got {len(values)}: {sorted(values)[:5]}")
        return next(iter(values.values()))

    def matrix(self, expr: str, at: float | None = None) -> dict[Labels, list[tuple[float, float]]]:
        """A range-vector selector (`metric[5m]`) evaluated at an instant: the raw samples."""
        data = self.query(expr, at)
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{expr}: expected a matrix, got {data['resultType']}")
        return {labels_of(item["metric"]): [(float(t), float(v)) for t, v in item["values"]] for item in data["result"]}

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> dict[Labels, list[tuple[float, float]]]:
        """`/api/v1/query_range` as {labels: [(time, value), ...]}."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return {labels_of(item["metric"]): [(float(t), float(v)) for t, v in item["values"]] for item in data["result"]}

    def query_exemplars(self, expr: str, start: float, end: float) -> list[JSON]:
        """`/api/v1/query_exemplars`: [{"seriesLabels": {...}, "exemplars": [{labels, value, timestamp}]}]."""
        data: list[JSON] = self.api("query_exemplars", query=expr, start=start, end=end) or []
        return data

    def series(
        self, match: Sequence[str], start: float | None = None, end: float | None = None
    ) -> list[dict[str, str]]:
        """`/api/v1/series`: the label sets of the series matching any of `match`."""
        params: dict[str, Any] = {"match[]": list(match)}
        if start is not None:
            params["start"] = start
        if end is not None:
            params["end"] = end
        data: list[dict[str, str]] = self.api("series", **params)
        return data

    def active_targets(self) -> list[JSON]:
        targets: list[JSON] = self.api("targets", state="active")["activeTargets"]
        return targets

    def rule_groups(self) -> list[JSON]:
        groups: list[JSON] = self.api("rules")["groups"]
        return groups

    # --- waiting ---------------------------------------------------------------------------------

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[float | None], bool],
        timeout: float,
        what: str | None = None,
    ) -> float | None:
        """Poll the single value of `expr` until `predicate(value)` holds; return that value."""
        deadline = time.monotonic() + timeout
        value: float | None = None
        while True:
            try:
                value = self.scalar(expr)
                if predicate(value):
                    return value
            except (httpx.HTTPError, PrometheusError):
                pass
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"timed out after {timeout}s waiting for {what or expr} (last value {value})\n{self.report()}"
                )
            time.sleep(0.25)

    def wait_scraped(self, timeout: float = 15.0) -> float:
        """Wait until every target has been scraped successfully after now; return now."""
        since = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                targets = self.active_targets()
                if targets and all(
                    t.get("health") == "up" and _rfc3339(t.get("lastScrape", "")) > since for t in targets
                ):
                    return since
            except (httpx.HTTPError, PrometheusError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"timed out after {timeout}s waiting for a fresh scrape of every target\n{self.report()}")

    def wait_rules_evaluated(self, timeout: float = 15.0) -> None:
        """Wait until every rule group has been evaluated after now, without errors."""
        since = time.time()
        deadline = time.monotonic() + timeout
        groups: list[JSON] = []
        while time.monotonic() < deadline:
            groups = self.rule_groups()
            if groups and all(_rfc3339(g.get("lastEvaluation", "")) > since for g in groups):
                broken = [
                    f"{g['name']}/{r.get('name')}: {r.get('lastError')}"
                    for g in groups
                    for r in g.get("rules", [])
                    if r.get("health") == "err"
                ]
                if broken:
                    raise PrometheusError("rules failed to evaluate:\n" + "\n".join(broken))
                return
            time.sleep(0.2)
        raise PrometheusError(f"timed out after {timeout}s waiting for rule evaluation ({len(groups)} groups)")


def _rfc3339(stamp: str) -> float:
    """Seconds since the epoch of Prometheus' RFC 3339 timestamps (nanoseconds, `Z` or offset)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", stamp)
    if match is None:
        return -math.inf
    whole = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) == "Z" else match.group(3)))
    fraction = float("0" + match.group(2)) if match.group(2) else 0.0
    return whole.timestamp() + fraction

"""`bem-exporter check`: try everything `run` needs, change nothing, and say what is wrong.

Each part is one line, `NAME: ok (...)` or `NAME: FAILED ...` naming the cause: the listen
address and the webhook listener's (bound and released), the state (SQLite: the file opened read-only or created and
removed, the lock taken and released; PostgreSQL: reached and its leader lease read), the API
with the key, the trace backend. Exit 0 only when `run` would find all of them working.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from dataclasses import dataclass
from urllib.parse import urlsplit

from exporter.app import bem_client
from exporter.bem.client import ApiError, ListQuery
from exporter.bem.errors import api_host, describe, resolves
from exporter.config import Settings
from exporter.config.model import ApiSettings, MetricsSettings, StateSettings, TraceSettings, WebhookSettings
from exporter.redact import safe_url
from exporter.state.lease import Lease
from exporter.state.lock import FileLock
from exporter.state.migrations import SCHEMA_VERSION, stored_version
from exporter.state.postgres_connect import Timeouts, connection_kwargs, open_pool, parse_target, probe
from exporter.state.store import StateError, StateWriteError

METRICS_ONLY = "set OTEL_TRACES_EXPORTER=none to run with metrics only"


@dataclass(frozen=True, slots=True)
class Finding:
    ok: bool
    line: str


async def check(settings: Settings) -> int:
    """Print the resolved settings, then one line per part `run` needs; 0 when all work."""
    print("settings (secrets redacted):")
    for row in settings.resolved:
        print(f"  {row.line()}")
    findings = [
        await listen_finding(settings.metrics),
        *([await webhooks_finding(settings.webhooks)] if settings.webhooks.enabled else []),
        await state_finding(settings.state, settings.poll.state_path),
        await api_finding(settings.api),
        traces_finding(settings.traces),
    ]
    problems = sum(not finding.ok for finding in findings)
    print("check: ok" if not problems else f"check: FAILED ({problems} of {len(findings)}); `run` would not work")
    return 0 if not problems else 1


def _say(finding: Finding) -> Finding:
    print(finding.line, flush=True)
    return finding


# -- listen address ------------------------------------------------------------------------


async def listen_finding(metrics: MetricsSettings) -> Finding:
    host, port = metrics.listen_host, metrics.listen_port
    failure = await _bind_failure(host, port)
    if failure is not None:
        return _say(Finding(False, f"listen: FAILED: BEM_LISTEN: cannot listen on {host}:{port}: {failure}"))
    return _say(Finding(True, f"listen: ok ({host}:{port})"))


async def webhooks_finding(webhooks: WebhookSettings) -> Finding:
    """The webhook listener's address, bound and released like the metrics one. (A listener
    with neither a secret nor unsigned deliveries allowed never gets here: settings exit 2.)"""
    host, port = webhooks.listen_host or "", webhooks.listen_port
    failure = await _bind_failure(host, port)
    if failure is not None:
        line = f"webhooks: FAILED: BEM_WEBHOOK_LISTEN: cannot listen on {host}:{port}: {failure}"
        return _say(Finding(False, line))
    count = len(webhooks.secrets)
    signing = f"{count} secret{'s' if count > 1 else ''}" if count else "UNSIGNED deliveries accepted"
    return _say(Finding(True, f"webhooks: ok ({host}:{port}, POST /webhook, {signing})"))


async def _bind_failure(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on, or None (bound and released at once, as `run`
    binds it: asyncio sets SO_REUSEADDR the same way)."""
    try:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    except OSError as error:
        return os.strerror(error.errno) if error.errno else str(error)
    server.close()
    await server.wait_closed()
    return None


# -- state -----------------------------------------------------------------------------------


async def state_finding(state: StateSettings, path: str) -> Finding:
    try:
        if state.url is not None:
            described = await _postgres(state)
        else:
            described = await asyncio.to_thread(_sqlite, path)
    except (StateError, StateWriteError) as error:
        return _say(Finding(False, f"state: FAILED: {error}"))
    return _say(Finding(True, f"state: ok ({described})"))


def _sqlite(path: str) -> str:
    """Take and release the lock (removing a lock file it created), then read the file
    read-only, or create and remove it."""
    if path == ":memory:":
        return "sqlite :memory:, nothing kept between starts"
    lock_file = os.path.realpath(path) + ".lock"
    had_lock_file = os.path.exists(lock_file)
    lock = FileLock.acquire(path)
    try:
        return f"sqlite {path}, " + (_read_existing(path) if os.path.exists(path) else _create_and_remove(path))
    finally:
        lock.release()
        if not had_lock_file:
            with contextlib.suppress(OSError):
                os.remove(lock_file)


def _read_existing(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        raise StateError(f"BEM_STATE_PATH: {path!r} or its directory is not writable (SQLite writes beside it)")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            version = stored_version(db)
    except (sqlite3.Error, ValueError) as error:
        raise StateError(f"BEM_STATE_PATH: {path!r} is not a readable bem-exporter state file ({error})") from None
    if version > SCHEMA_VERSION:
        raise StateError(
            f"BEM_STATE_PATH: {path!r} has state schema version {version}, this bem-exporter reads up to "
            f"version {SCHEMA_VERSION}"
        )
    upgrade = "" if version == SCHEMA_VERSION else f", migrated to version {SCHEMA_VERSION} on start"
    return f"schema version {version}{upgrade}"


def _create_and_remove(path: str) -> str:
    try:
        with open(path, "x", encoding="utf-8"):
            pass
        os.remove(path)
    except OSError as error:
        raise StateError(f"BEM_STATE_PATH: cannot create {path!r}: {error.strerror}") from None
    return "created on first run"


async def _postgres(state: StateSettings) -> str:
    """Reach the database and read the leader lease; write nothing."""
    assert state.url is not None
    target = parse_target(state.url, state.password.get() if state.password else None)
    timeouts = Timeouts(state.lease)
    kwargs = connection_kwargs(target, timeouts)
    await probe(target, kwargs)
    pool = await open_pool(target, kwargs, 1, timeouts.wait)
    try:
        async with pool.connection() as connection:
            row = await (await connection.execute("SELECT to_regclass('bem_lease') IS NOT NULL")).fetchone()
        if row is None or not row[0]:
            return f"postgres {target.shown}, schema created on first run"
        status = await Lease(pool, target, state.lease).status()
    finally:
        await pool.close()
    if status is None or not status.held:
        return f"postgres {target.shown}, no leader holds the lease"
    return f"postgres {target.shown}, leader {status.holder} (epoch {status.epoch})"


# -- API and traces --------------------------------------------------------------------------


async def api_finding(api: ApiSettings) -> Finding:
    where = f"{safe_url(api.url)}, {api.version}"
    async with bem_client(api, max_attempts=2) as client:
        try:
            await client.list_calls(ListQuery(limit=1))
        except ApiError as error:
            host = api_host(api.url)
            found = error.kind != "unreachable" or await resolves(host)
            return _say(
                Finding(False, f"api: FAILED ({safe_url(api.url)}): {describe(error, host, host_resolves=found)}")
            )
    return _say(Finding(True, f"api: ok ({where})"))


def traces_finding(traces: TraceSettings) -> Finding:
    shown = f"{traces.protocol} {safe_url(traces.endpoint)}"
    if traces.exporter != "otlp":
        return _say(Finding(True, f"traces: exporter {traces.exporter} (no spans sent; metrics only)"))
    if _reachable(traces.endpoint):
        return _say(Finding(True, f"otlp: reachable ({shown})"))
    if traces.endpoint_configured:
        return _say(Finding(False, f"otlp: UNREACHABLE ({shown}); check OTEL_EXPORTER_OTLP_ENDPOINT"))
    return _say(
        Finding(False, f"otlp: UNREACHABLE ({shown}, the default; no trace backend configured); {METRICS_ONLY}")
    )


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False

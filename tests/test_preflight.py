"""`bem-exporter check` as an operator runs it: a pre-flight of everything `run` needs that
changes nothing, one line per part naming the cause, exit 0 only when all of it works."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SIM_KEY
from postgres_server import USER, PostgresServer
from processes import ROOT, ExporterProcess, free_port

from exporter.redact import safe_url
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.state.postgres import PostgresStore

KEY_REJECTED = "the API key was rejected (HTTP 401); check BEM_API_KEY or BEM_API_KEY_FILE"


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    with SimulatorServer(Simulator(SimulatorConfig(arrival_rate=0.0, prefill=5))) as url:
        yield url


def check(api_url: str, state: Path | None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_")) and k != "PGPASSWORD"}
    settings = {
        "PYTHONPATH": str(ROOT),
        "BEM_API_URL": api_url,
        "BEM_API_KEY": SIM_KEY,
        "BEM_LISTEN": f"127.0.0.1:{free_port()}",
        "OTEL_TRACES_EXPORTER": "none",
        **({"BEM_STATE_PATH": str(state)} if state is not None else {}),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check"],
        env={**clean, **settings},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def line(result: subprocess.CompletedProcess[str], part: str) -> str:
    """The line `check` printed for one part (`listen`, `state`, `api`, `otlp`, `traces`, `check`)."""
    found = [text for text in result.stdout.splitlines() if text.startswith(f"{part}: ")]
    assert len(found) == 1, result.stdout + result.stderr
    return found[0]


def test_all_good_exits_0_shows_the_settings_and_changes_nothing(api: str, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    result = check(api, state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result, "state") == f"state: ok (sqlite {state}, created on first run)"
    assert line(result, "api") == f"api: ok ({api}, v3)"
    assert line(result, "traces") == "traces: exporter none (no spans sent; metrics only)"
    assert line(result, "check") == "check: ok"
    assert result.stdout.splitlines()[0] == "settings (secrets redacted):"
    assert "  BEM_API_KEY=*** (environment)" in result.stdout.splitlines()
    assert "  BEM_POLL_INTERVAL=15s (default)" in result.stdout.splitlines()
    assert SIM_KEY not in result.stdout + result.stderr
    assert list(tmp_path.iterdir()) == []  # no state file, no lock file left behind


def test_the_listen_port_taken(api: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = check(api, tmp_path / "state.sqlite", BEM_LISTEN=f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert (
        line(result, "listen")
        == f"listen: FAILED: BEM_LISTEN: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert line(result, "check") == "check: FAILED (1 of 4); `run` would not work"


def test_the_webhook_listener_is_bound_and_its_secret_masked(api: str, tmp_path: Path) -> None:
    port = free_port()
    secrets = "whsec-old-0123456789,whsec-new-9876543210"
    result = check(api, tmp_path / "state.sqlite", BEM_WEBHOOK_LISTEN=f"127.0.0.1:{port}", BEM_WEBHOOK_SECRET=secrets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result, "webhooks") == f"webhooks: ok (127.0.0.1:{port}, POST /webhook, 2 secrets)"
    assert "  BEM_WEBHOOK_SECRET=*** (environment)" in result.stdout.splitlines()
    assert "whsec" not in result.stdout + result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        result = check(api, tmp_path / "state.sqlite", BEM_WEBHOOK_LISTEN=f"127.0.0.1:{busy}", BEM_WEBHOOK_SECRET="s")
    assert result.returncode == 1
    assert line(result, "webhooks") == (
        f"webhooks: FAILED: BEM_WEBHOOK_LISTEN: cannot listen on 127.0.0.1:{busy}: Address already in use"
    )
    assert line(result, "check") == "check: FAILED (1 of 5); `run` would not work"


def test_a_webhook_listener_with_neither_a_secret_nor_unsigned_allowed_fails(api: str, tmp_path: Path) -> None:
    result = check(api, tmp_path / "state.sqlite", BEM_WEBHOOK_LISTEN=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("bem-exporter: error: BEM_WEBHOOK_SECRET: required")
    unsigned = check(
        api, tmp_path / "state.sqlite", BEM_WEBHOOK_LISTEN=f"127.0.0.1:{free_port()}", BEM_WEBHOOK_ALLOW_UNSIGNED="true"
    )
    assert unsigned.returncode == 0, unsigned.stdout + unsigned.stderr
    assert line(unsigned, "webhooks").endswith(", POST /webhook, UNSIGNED deliveries accepted)")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[str]:
    """`directory` made read-only; yields the error a write there meets. Root writes into a
    0555 directory, so as root the directory is made immutable instead."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield os.strerror(errno.EACCES)
        finally:
            directory.chmod(0o755)
        return
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield os.strerror(errno.EPERM)
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_read_only_state_directory(api: str, tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    with read_only(directory) as refused:
        result = check(api, directory / "state.sqlite")
    assert result.returncode == 1, result.stdout + result.stderr
    lock = directory / "state.sqlite.lock"
    assert line(result, "state") == f"state: FAILED: BEM_STATE_PATH: cannot create {str(lock)!r}: {refused}"


def test_a_directory_as_the_state_path(api: str, tmp_path: Path) -> None:
    result = check(api, tmp_path)
    assert result.returncode == 1
    expected = f"state: FAILED: BEM_STATE_PATH: {str(tmp_path)!r} is a directory; give a file path inside it"
    assert line(result, "state") == expected
    assert list(tmp_path.iterdir()) == []


def test_a_state_in_use_by_a_running_exporter_then_free(api: str, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    with ExporterProcess(api, state):
        busy = check(api, state)
    free = check(api, state)
    assert busy.returncode == 1
    assert line(busy, "state") == (
        f"state: FAILED: BEM_STATE_PATH: {str(state)!r} is in use by another bem-exporter process; "
        "give each exporter its own state file"
    )
    assert free.returncode == 0, free.stdout
    assert line(free, "state") == f"state: ok (sqlite {state}, schema version 2)"


def test_a_rejected_key(api: str, tmp_path: Path) -> None:
    result = check(api, tmp_path / "state.sqlite", BEM_API_KEY="wrong-key-123")
    assert result.returncode == 1
    assert line(result, "api") == f"api: FAILED ({api}): {KEY_REJECTED}"
    assert "wrong-key-123" not in result.stdout + result.stderr


def test_a_host_name_that_does_not_resolve(tmp_path: Path) -> None:
    result = check("http://bem-api.invalid", tmp_path / "state.sqlite")
    assert result.returncode == 1
    expected = (
        "api: FAILED (http://bem-api.invalid): the host name 'bem-api.invalid' does not resolve; check BEM_API_URL"
    )
    assert line(result, "api") == expected


def test_otlp_down_where_it_was_configured(api: str, tmp_path: Path) -> None:
    port = free_port()
    result = check(
        api, tmp_path / "s.sqlite", OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}"
    )
    assert result.returncode == 1
    expected = f"otlp: UNREACHABLE (http/protobuf http://127.0.0.1:{port}/v1/traces); check OTEL_EXPORTER_OTLP_ENDPOINT"
    assert line(result, "otlp") == expected


def test_otlp_down_and_never_configured_suggests_metrics_only(api: str, tmp_path: Path) -> None:
    result = check(api, tmp_path / "s.sqlite", OTEL_TRACES_EXPORTER="otlp")
    assert result.returncode == 1
    assert line(result, "otlp") == (
        "otlp: UNREACHABLE (http/protobuf http://localhost:4318/v1/traces, the default; no trace backend "
        "configured); set OTEL_TRACES_EXPORTER=none to run with metrics only"
    )


def test_postgres_reachable_before_and_after_a_leader_took_the_lease(
    api: str, postgres_server: PostgresServer, postgres_url: str
) -> None:
    url = postgres_url.replace(f":{postgres_server.password}@", "@")
    fresh = check(api, None, BEM_STATE_URL=url, PGPASSWORD=postgres_server.password)

    async def while_leading() -> subprocess.CompletedProcess[str]:
        store = await PostgresStore.open(postgres_url, holder="replica-a")
        try:
            assert await store.lease.acquire() == 1
            return await asyncio.to_thread(check, api, None, BEM_STATE_URL=url, PGPASSWORD=postgres_server.password)
        finally:
            await store.close()

    led = asyncio.run(while_leading())
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert line(fresh, "state") == f"state: ok (postgres {safe_url(url)}, schema created on first run)"
    assert line(led, "state") == f"state: ok (postgres {safe_url(url)}, leader replica-a (epoch 1))"
    assert postgres_server.password not in fresh.stdout + fresh.stderr + led.stdout + led.stderr


def test_postgres_with_a_wrong_password(api: str, postgres_server: PostgresServer, postgres_url: str) -> None:
    url = postgres_url.replace(f":{postgres_server.password}@", "@")
    result = check(api, None, BEM_STATE_URL=url, PGPASSWORD="not-the-password-42")
    assert result.returncode == 1
    assert line(result, "state").startswith(f"state: FAILED: BEM_STATE_URL: cannot use {safe_url(url)}: ")
    assert f'password authentication failed for user "{USER}"' in line(result, "state")
    assert "not-the-password-42" not in result.stdout + result.stderr

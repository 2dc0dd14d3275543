"""A real PostgreSQL server for tests: its own temporary cluster on a free loopback port.

    with PostgresServer() as server:
        url = server.create_database()       # postgresql://bem:<password>@127.0.0.1:<port>/t_1
        server.stop()                         # the database is down ...
        server.start()                        # ... and back, same port, same data

The cluster is made by `initdb` in a fresh temporary directory with password authentication
(SCRAM) over TCP only (no Unix socket), so tests can check that a wrong password is reported
without the password. PostgreSQL refuses to run as root: when the tests run as root, the
cluster belongs to and runs as an unprivileged system user (`postgres`, made by Debian's
package, else `nobody`). Binaries: `PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`
(Debian keeps them off the PATH), else `postgres` on the PATH.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg

USER = "bem"
"""The role the tests connect as: a superuser, so each test can have a database of its own."""

_STOP_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    # A test cluster: durability across an OS crash is not what is tested.
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "log_min_messages": "warning",
}


class PostgresError(AssertionError):
    """The server did not start or stop; the message carries its log tail."""


def free_port() -> int:
    # Not tests/processes.py's: that module imports conftest, which imports this one.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path:
    configured = os.environ.get("PG_BINDIR")
    if configured:
        return Path(configured)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
    if debian:
        return debian[-1]
    found = shutil.which("postgres")
    if found is None:
        raise PostgresError("no PostgreSQL server binaries: install postgresql-15 (scripts/test does)")
    return Path(found).parent


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root and there is no unprivileged 'postgres' or 'nobody' account")


class PostgresServer:
    """One PostgreSQL cluster; `start()`/`stop()` as often as a test needs, same port and data."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.password = "pw-" + secrets.token_hex(12)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="bem-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._account = _run_as()
        self._process: subprocess.Popen[bytes] | None = None
        self._names = count(1)
        self._initdb()

    # -- life cycle ----------------------------------------------------------------------------

    def _initdb(self) -> None:
        password_file = self.directory / "password"
        password_file.write_text(self.password + "\n", encoding="utf-8")
        self._own(self.directory, password_file)
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", USER,
            "--pwfile", str(password_file),
            "--auth-host=scram-sha-256",
            "--auth-local=reject",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        password_file.unlink()

    def start(self, timeout: float = 30) -> None:
        if self.running:
            return
        settings = [arg for key, value in _SETTINGS.items() for arg in ("-c", f"{key}={value}")]
        command = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), *settings]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **self._as_account())
        self._wait_ready(timeout)

    def stop(self, mode: Literal["fast", "immediate"] = "fast", timeout: float = 30) -> None:
        """Stop the server: `fast` disconnects clients and shuts down cleanly, `immediate`
        is a crash (recovery on the next start)."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        process.send_signal(_STOP_SIGNALS[mode])
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise PostgresError(f"PostgreSQL did not stop within {timeout}s\n{self.log_tail()}") from None
        self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- databases -----------------------------------------------------------------------------

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """A connection URL; `password=""` leaves the password out (for PGPASSWORD tests)."""
        secret = self.password if password is None else password
        userinfo = f"{USER}:{secret}" if secret else USER
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL (password included)."""
        name = f"t_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement as the superuser (autocommit) and return its rows, if any."""
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(sql.encode())
            return cursor.fetchall() if cursor.description is not None else []

    # -- internals -----------------------------------------------------------------------------

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise PostgresError(f"PostgreSQL exited while starting\n{self.log_tail()}")
            try:
                self.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop("immediate")
        raise PostgresError(f"PostgreSQL not ready within {timeout}s\n{self.log_tail()}")

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / program), *args], capture_output=True, text=True, timeout=120, **self._as_account()
        )
        if result.returncode != 0:
            raise PostgresError(f"{program} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _as_account(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def _own(self, *paths: Path) -> None:
        if self._account is not None:
            for path in paths:
                os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

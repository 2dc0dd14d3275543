"""Parsers of raw setting values: `(name, raw) -> value`, or `SettingsError` naming the setting.

A message never repeats a value that may hold a secret: URLs are shown through `safe_url`, and
the parsers of secrets never echo their input.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from exporter.config.model import TRACE_ID_PLACEHOLDER, PostgresUrl, Secret
from exporter.redact import MASK, safe_url

log = logging.getLogger("exporter.config")

C = TypeVar("C", bound=str)


class SettingsError(Exception):
    """An invalid setting. The message is one line that names the setting."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, None: 1}


def parse_duration(name: str, raw: str) -> float:
    """`30m`, `6h`, `7d`, `15` (seconds) -> seconds; > 0."""
    match = _DURATION.match(raw)
    if not match:
        raise SettingsError(f"{name}: {raw!r} is not a duration (examples: 15, 30s, 30m, 6h, 7d)")
    seconds = float(match.group(1)) * _TIME_UNITS[match.group(2)]
    if seconds <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return seconds


def parse_size(name: str, raw: str) -> int:
    """`64MiB`, `3MB`, `512KiB`, `1048576` (bytes) -> bytes; > 0."""
    match = _SIZE.match(raw)
    if not match:
        raise SettingsError(f"{name}: {raw!r} is not a size (examples: 1048576, 512KiB, 64MiB, 1GB)")
    unit = match.group(2).lower() if match.group(2) else None
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return size


def positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a whole number") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return value


def positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}: must be a number greater than 0, got {raw!r}")
    return value


def choice(choices: tuple[C, ...]) -> Callable[[str, str], C]:
    """A parser that accepts exactly one of `choices` (case-insensitive)."""

    def parse(name: str, raw: str) -> C:
        value = raw.strip().lower()
        for option in choices:
            if option == value:
                return option
        raise SettingsError(f"{name}: {raw!r} is not one of {', '.join(choices)}")

    return parse


def names(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def text(_name: str, raw: str) -> str:
    return raw.strip()


def boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: {raw!r} is not true or false")


def shown_url(raw: str) -> str:
    """`raw` as it may be shown: through `safe_url`, or masked whole when it is too malformed
    for `safe_url` to find the userinfo (`user:pw@host` has no scheme)."""
    shown = safe_url(raw)
    return MASK if "@" in shown else shown


def _shown(raw: str) -> str:
    """`raw` as it may appear in a message: as given unless it might carry a password."""
    return shown_url(raw) if "@" in raw else raw


def http_url(name: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        raise SettingsError(f"{name}: not a valid URL (check its port and any [IPv6] brackets)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: {_shown(raw)!r} is not an http(s) URL with a host (example: https://api.bem.ai)")
    if parts.query or parts.fragment:
        raise SettingsError(f"{name}: must not carry a query or fragment")
    return url


def trace_url_template(name: str, raw: str) -> str:
    """An http(s) URL holding `{trace_id}` anywhere (path, query or fragment)."""
    template = raw.strip()
    if TRACE_ID_PLACEHOLDER not in template:
        raise SettingsError(f"{name}: must contain {TRACE_ID_PLACEHOLDER} where the trace id goes")
    try:
        parts = urlsplit(template.replace(TRACE_ID_PLACEHOLDER, "0"))
    except ValueError:
        raise SettingsError(f"{name}: not a valid URL (check its port and any [IPv6] brackets)") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}: {_shown(raw)!r} is not an http(s) URL with a host")
    return template


POSTGRES_EXAMPLE = "postgresql://user@host:5432/db"


def postgres_url(name: str, raw: str) -> PostgresUrl:
    """A libpq connection URL, split into the URL without its password and the password.

    Messages never repeat the URL: it may hold the password.
    """
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: not a valid URL (expected {POSTGRES_EXAMPLE})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError(f"{name}: must start with postgresql:// or postgres:// (example: {POSTGRES_EXAMPLE})")
    if parts.fragment:
        raise SettingsError(f"{name}: must not carry a fragment")
    if "password" in parse_qs(parts.query):
        raise SettingsError(f"{name}: give the password in the URL before @, PGPASSWORD or BEM_STATE_PASSWORD_FILE")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    _check_hosts(name, hosts)
    user, _, password = userinfo.partition(":")
    netloc = f"{user}@{hosts}" if at and user else hosts
    url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return PostgresUrl(url, Secret(unquote(password)) if password else None)


def _check_hosts(name: str, hosts: str) -> None:
    """libpq allows `host1:5432,host2:5433`, and no host at all (a Unix socket)."""
    for host in hosts.split(","):
        try:
            urlsplit(f"//{host}").port  # noqa: B018 -- raises on a port that is not a number
        except ValueError:
            raise SettingsError(f"{name}: a port in the URL is not a number in 0-65535") from None


def listen_address(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep:
        host, port = "", raw.strip()
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not host:port (example: 0.0.0.0:9877)") from None
    if not 0 <= number <= 65535:
        raise SettingsError(f"{name}: port {number} is out of range 0-65535")
    return host, number


def buckets(name: str, raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a comma list of numbers") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise SettingsError(f"{name}: needs one or more positive bucket bounds")
    if list(values) != sorted(set(values)):
        raise SettingsError(f"{name}: bucket bounds must be strictly increasing")
    return values


def state_path(name: str, raw: str) -> str:
    path = raw.strip()
    if path != ":memory:":
        parent = Path(path).expanduser().resolve().parent
        if not parent.is_dir():
            raise SettingsError(f"{name}: directory {str(parent)!r} does not exist")
    return path


def read_text_file(name: str, path: str) -> str:
    """The stripped text of `path`; the message names the file, never its content."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"{name}: cannot read {path!r}: {_reason(error)}") from None


def read_bytes_file(name: str, path: str, limit: int) -> bytes:
    """The bytes of `path`: readable, not empty, at most `limit` bytes."""
    try:
        with open(path, "rb") as handle:
            content = handle.read(limit + 1)
    except OSError as error:
        raise SettingsError(f"{name}: cannot read {path!r}: {_reason(error)}") from None
    if not content:
        raise SettingsError(f"{name}: {path!r} is empty")
    if len(content) > limit:
        raise SettingsError(f"{name}: {path!r} is larger than {limit // 2**20} MiB")
    return content


def readable_file(name: str, path: str) -> str:
    """A path to a file that can be opened for reading now (its content is read later)."""
    path = path.strip()
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise SettingsError(f"{name}: cannot read {path!r}: {_reason(error)}") from None
    return path


def _reason(error: OSError | UnicodeDecodeError) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else "unreadable"


def otel_pairs(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """W3C-baggage-like `k=v,k2=v2` with percent-decoding; an entry without `=` is warned
    about and dropped, per the OpenTelemetry specification."""
    pairs: list[tuple[str, str]] = []
    for item in filter(str.strip, raw.split(",")):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            pairs.append((unquote(key.strip()), unquote(value.strip())))
        else:
            log.warning("ignoring an invalid entry in %s", name)
    return tuple(pairs)


def otel_millis(name: str, raw: str) -> float:
    """OTLP timeouts are given in milliseconds; the settings hold seconds."""
    try:
        millis = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a number of milliseconds") from None
    if not math.isfinite(millis) or millis <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return millis / 1000.0


def otel_endpoint(name: str, raw: str) -> str:
    url = raw.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        raise SettingsError(f"{name}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}: not an http(s) URL")
    return url


def otel_true(_name: str, raw: str) -> bool:
    """Per the specification, only `true` (any case) is true."""
    return raw.strip().lower() == "true"

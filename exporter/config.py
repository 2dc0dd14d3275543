"""Settings: one typed object, built once at start, validated before anything runs.

Precedence: command-line flag > environment > config file (TOML) > default. Every invalid
value raises `SettingsError` naming the setting; the CLI prints its one line and exits 2.
`OTEL_*` variables follow the OpenTelemetry specification instead: an invalid value is
warned about and the default used.

The API key is held in `Secret`, whose repr and str never show it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.bem.ai"
DEFAULT_LISTEN_PORT = 9877
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_LISTEN_PORT}"
DEFAULT_POLL_INTERVAL = 15.0
DEFAULT_LOOKBACK = 3600.0
DEFAULT_ABANDON_AFTER = 6 * 3600.0
DEFAULT_STATE_PATH = "bem-exporter.sqlite"
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_MAX_RPS = 50.0
DEFAULT_API_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_GRACE = 8.0
DEFAULT_SERVICE_NAME = "bem"
DEFAULT_SPAN_BACKLOG = 10_000
# Document workflows run from seconds to tens of minutes.
DEFAULT_CALL_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
DEFAULT_FUNCTION_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEFAULT_MAX_LABEL_VALUES = 200
DEFAULT_ERROR_MESSAGE_LENGTH = 256

OTLP_PROTOCOLS = ("grpc", "http/protobuf")
TRACES_EXPORTERS = ("otlp", "console", "none")
API_VERSIONS = ("v3", "v2")
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(Exception):
    """An invalid setting. The message is one line that names the setting."""


class Secret:
    """A value that must never be printed: repr and str are masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiSettings:
    url: str = DEFAULT_API_URL
    version: str = "v3"
    key: Secret | None = None
    workflows: tuple[str, ...] = ()
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_rps: float = DEFAULT_MAX_RPS
    timeout: float = DEFAULT_API_TIMEOUT


@dataclass(frozen=True)
class PollSettings:
    interval: float = DEFAULT_POLL_INTERVAL
    lookback: float = DEFAULT_LOOKBACK
    abandon_after: float = DEFAULT_ABANDON_AFTER
    state_path: str = DEFAULT_STATE_PATH
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: Secret


@dataclass(frozen=True)
class MetricsSettings:
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_LISTEN_PORT
    call_buckets: tuple[float, ...] = DEFAULT_CALL_BUCKETS
    function_buckets: tuple[float, ...] = DEFAULT_FUNCTION_BUCKETS
    allow_workflows: tuple[str, ...] = ()
    """Empty: every workflow name is a label value (up to the cap)."""
    allow_functions: tuple[str, ...] = ()
    max_label_values: int = DEFAULT_MAX_LABEL_VALUES
    basic_auth: BasicAuth | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


@dataclass(frozen=True)
class TraceSettings:
    exporter: str = "otlp"
    endpoint: str = "http://localhost:4318/v1/traces"
    """The full URL to send to: `/v1/traces` already appended for http/protobuf."""
    endpoint_configured: bool = False
    """An OTLP endpoint was set explicitly (the demo prints a tree in the terminal otherwise)."""
    protocol: str = "http/protobuf"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0
    insecure: bool | None = None
    service_name: str = DEFAULT_SERVICE_NAME
    resource_attributes: tuple[tuple[str, str], ...] = ()
    error_messages: bool = True
    """Export error events' messages (truncated) as span attributes."""
    error_message_length: int = DEFAULT_ERROR_MESSAGE_LENGTH
    max_backlog: int = DEFAULT_SPAN_BACKLOG
    """Finished calls whose spans wait in memory while the backend is down."""


@dataclass(frozen=True)
class Settings:
    api: ApiSettings = field(default_factory=ApiSettings)
    poll: PollSettings = field(default_factory=PollSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    traces: TraceSettings = field(default_factory=TraceSettings)
    log_level: str = "info"
    log_format: str = "auto"


# ---------------------------------------------------------------------------------------------
# The table of settings: environment name, config-file key, parser.
# ---------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(name: str, raw: str) -> float:
    """`30m`, `6h`, `7d`, `15` (seconds) -> seconds; > 0."""
    match = _DURATION.match(raw)
    if not match:
        raise SettingsError(f"{name}: {raw!r} is not a duration (examples: 15, 30s, 30m, 6h, 7d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return seconds


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a whole number") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {raw!r}")
    return value


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}: must be a number greater than 0, got {raw!r}")
    return value


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
    return value


def _names(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: {raw!r} is not true or false")


def _http_url(name: str, raw: str) -> str:
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name}: {raw!r} is not an http(s) URL with a host (example: https://api.bem.ai)")
    if parts.query or parts.fragment:
        raise SettingsError(f"{name}: must not carry a query or fragment")
    return url


def _listen(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep:
        host, port = "", raw.strip()
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not host:port (example: 0.0.0.0:{DEFAULT_LISTEN_PORT})") from None
    if not 0 <= number <= 65535:
        raise SettingsError(f"{name}: port {number} is out of range 0-65535")
    return host, number


def _buckets(name: str, raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a comma list of numbers") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise SettingsError(f"{name}: needs one or more positive bucket bounds")
    if list(values) != sorted(set(values)):
        raise SettingsError(f"{name}: bucket bounds must be strictly increasing")
    return values


def _read_file(name: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "unreadable"
        raise SettingsError(f"{name}: cannot read {path!r}: {reason}") from None


def _api_key(raw: str) -> Secret:
    key = raw.strip()
    if not key or any(c.isspace() for c in key):
        raise SettingsError("BEM_API_KEY: is empty or contains white space")
    return Secret(key)


# (environment variable, config-file key)
SETTINGS: dict[str, str] = {
    "BEM_API_KEY": "api_key",
    "BEM_API_KEY_FILE": "api_key_file",
    "BEM_API_URL": "api_url",
    "BEM_API_VERSION": "api_version",
    "BEM_API_TIMEOUT": "api_timeout",
    "BEM_POLL_INTERVAL": "poll_interval",
    "BEM_LOOKBACK": "lookback",
    "BEM_ABANDON_AFTER": "abandon_after",
    "BEM_WORKFLOWS": "workflows",
    "BEM_STATE_PATH": "state_path",
    "BEM_LISTEN": "listen",
    "BEM_MAX_CONCURRENCY": "max_concurrency",
    "BEM_MAX_RPS": "max_rps",
    "BEM_SHUTDOWN_GRACE": "shutdown_grace",
    "BEM_CALL_BUCKETS": "call_buckets",
    "BEM_FUNCTION_BUCKETS": "function_buckets",
    "BEM_METRICS_WORKFLOWS": "metrics_workflows",
    "BEM_METRICS_FUNCTIONS": "metrics_functions",
    "BEM_METRICS_MAX_LABEL_VALUES": "metrics_max_label_values",
    "BEM_METRICS_BASIC_AUTH_FILE": "metrics_basic_auth_file",
    "BEM_TLS_CERT_FILE": "tls_cert_file",
    "BEM_TLS_KEY_FILE": "tls_key_file",
    "BEM_EXPORT_ERROR_MESSAGES": "export_error_messages",
    "BEM_SPAN_BACKLOG": "span_backlog",
    "BEM_LOG_LEVEL": "log_level",
    "BEM_LOG_FORMAT": "log_format",
}
CONFIG_KEYS = {key: env for env, key in SETTINGS.items()}


def load_config_file(path: str) -> dict[str, str]:
    """A TOML file of the keys in `SETTINGS`, returned under their environment names."""
    try:
        with open(path, "rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except OSError as error:
        raise SettingsError(f"--config: cannot read {path!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"--config: {path!r} is not valid TOML ({error})") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise SettingsError(f"--config: unknown key {key!r} in {path!r}")
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        values[CONFIG_KEYS[key]] = str(value)
    return values


def load_settings(
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    *,
    require_key: bool = True,
) -> Settings:
    """Merge flags > environment > config file > defaults into one validated `Settings`.

    `flags` and the config file use environment names as keys (the CLI maps its flags).
    """
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    if config_file:
        merged.update(load_config_file(config_file))
    merged.update({k: v for k, v in env.items() if k in SETTINGS})
    merged.update(flags or {})

    def get(name: str) -> str | None:
        value = merged.get(name)
        return value if value is not None and value.strip() != "" else None

    api = _api_settings(get, require_key)
    poll = _poll_settings(get)
    metrics = _metrics_settings(get)
    traces = _trace_settings(get, env)
    log_level = _choice("BEM_LOG_LEVEL", get("BEM_LOG_LEVEL") or "info", LOG_LEVELS)
    log_format = _choice("BEM_LOG_FORMAT", get("BEM_LOG_FORMAT") or "auto", LOG_FORMATS)
    return Settings(api=api, poll=poll, metrics=metrics, traces=traces, log_level=log_level, log_format=log_format)


def _api_settings(get: Any, require_key: bool) -> ApiSettings:
    key: Secret | None = None
    if (raw := get("BEM_API_KEY")) is not None:
        key = _api_key(raw)
    elif (path := get("BEM_API_KEY_FILE")) is not None:
        key = _api_key(_read_file("BEM_API_KEY_FILE", path))
    if key is None and require_key:
        raise SettingsError("BEM_API_KEY: required (or BEM_API_KEY_FILE); try `bem-exporter demo` to run without one")
    return ApiSettings(
        url=_http_url("BEM_API_URL", get("BEM_API_URL") or DEFAULT_API_URL),
        version=_choice("BEM_API_VERSION", get("BEM_API_VERSION") or "v3", API_VERSIONS),
        key=key,
        workflows=_names(get("BEM_WORKFLOWS") or ""),
        max_concurrency=_positive_int(
            "BEM_MAX_CONCURRENCY", get("BEM_MAX_CONCURRENCY") or str(DEFAULT_MAX_CONCURRENCY)
        ),
        max_rps=_positive_float("BEM_MAX_RPS", get("BEM_MAX_RPS") or str(DEFAULT_MAX_RPS)),
        timeout=parse_duration("BEM_API_TIMEOUT", get("BEM_API_TIMEOUT") or str(DEFAULT_API_TIMEOUT)),
    )


def _poll_settings(get: Any) -> PollSettings:
    state_path = get("BEM_STATE_PATH") or DEFAULT_STATE_PATH
    if state_path != ":memory:":
        parent = Path(state_path).expanduser().resolve().parent
        if not parent.is_dir():
            raise SettingsError(f"BEM_STATE_PATH: directory {str(parent)!r} does not exist")
    return PollSettings(
        interval=parse_duration("BEM_POLL_INTERVAL", get("BEM_POLL_INTERVAL") or str(DEFAULT_POLL_INTERVAL)),
        lookback=parse_duration("BEM_LOOKBACK", get("BEM_LOOKBACK") or "1h"),
        abandon_after=parse_duration("BEM_ABANDON_AFTER", get("BEM_ABANDON_AFTER") or "6h"),
        state_path=state_path,
        shutdown_grace=parse_duration("BEM_SHUTDOWN_GRACE", get("BEM_SHUTDOWN_GRACE") or str(DEFAULT_SHUTDOWN_GRACE)),
    )


def _metrics_settings(get: Any) -> MetricsSettings:
    host, port = _listen("BEM_LISTEN", get("BEM_LISTEN") or DEFAULT_LISTEN)
    basic_auth = None
    if (path := get("BEM_METRICS_BASIC_AUTH_FILE")) is not None:
        user, sep, password = _read_file("BEM_METRICS_BASIC_AUTH_FILE", path).partition(":")
        if not sep or not user or not password:
            raise SettingsError("BEM_METRICS_BASIC_AUTH_FILE: must hold one line `username:password`")
        basic_auth = BasicAuth(user, Secret(password))
    cert, key = get("BEM_TLS_CERT_FILE"), get("BEM_TLS_KEY_FILE")
    if (cert is None) != (key is None):
        raise SettingsError("BEM_TLS_CERT_FILE: TLS needs both BEM_TLS_CERT_FILE and BEM_TLS_KEY_FILE")
    for name, tls_path in (("BEM_TLS_CERT_FILE", cert), ("BEM_TLS_KEY_FILE", key)):
        if tls_path is not None and not os.access(tls_path, os.R_OK):
            raise SettingsError(f"{name}: cannot read {tls_path!r}")
    return MetricsSettings(
        listen_host=host,
        listen_port=port,
        call_buckets=_buckets("BEM_CALL_BUCKETS", get("BEM_CALL_BUCKETS"))
        if get("BEM_CALL_BUCKETS")
        else DEFAULT_CALL_BUCKETS,
        function_buckets=(
            _buckets("BEM_FUNCTION_BUCKETS", get("BEM_FUNCTION_BUCKETS"))
            if get("BEM_FUNCTION_BUCKETS")
            else DEFAULT_FUNCTION_BUCKETS
        ),
        allow_workflows=_names(get("BEM_METRICS_WORKFLOWS") or ""),
        allow_functions=_names(get("BEM_METRICS_FUNCTIONS") or ""),
        max_label_values=_positive_int(
            "BEM_METRICS_MAX_LABEL_VALUES", get("BEM_METRICS_MAX_LABEL_VALUES") or str(DEFAULT_MAX_LABEL_VALUES)
        ),
        basic_auth=basic_auth,
        tls_cert_file=cert,
        tls_key_file=key,
    )


# ---------------------------------------------------------------------------------------------
# OTEL_* variables, per the OpenTelemetry specification: invalid values warn and fall back.
# ---------------------------------------------------------------------------------------------


def _otel(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _otel_pairs(name: str, raw: str | None) -> tuple[tuple[str, str], ...]:
    """W3C-baggage-like `k=v,k2=v2` with percent-decoding; bad entries are warned and dropped."""
    pairs: list[tuple[str, str]] = []
    for item in (raw or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            log.warning("ignoring an invalid entry in %s", name)
            continue
        pairs.append((unquote(key.strip()), unquote(value.strip())))
    return tuple(pairs)


def _trace_settings(get: Any, env: Mapping[str, str]) -> TraceSettings:
    exporter = (_otel(env, "OTEL_TRACES_EXPORTER") or "otlp").lower()
    if exporter not in TRACES_EXPORTERS:
        log.warning("OTEL_TRACES_EXPORTER: unsupported value, using otlp")
        exporter = "otlp"
    protocol = (
        _otel(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    ).lower()
    if protocol not in OTLP_PROTOCOLS:
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL: unsupported value, using http/protobuf")
        protocol = "http/protobuf"
    endpoint, configured = _otlp_endpoint(env, protocol)
    timeout = 10.0
    if (raw_timeout := _otel(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")) is not None:
        try:
            millis = float(raw_timeout)
            if millis <= 0 or not math.isfinite(millis):
                raise ValueError
            timeout = millis / 1000.0
        except ValueError:
            log.warning("OTEL_EXPORTER_OTLP_TIMEOUT: invalid value, using 10000 ms")
    insecure: bool | None = None
    if (raw_insecure := _otel(env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")) is not None:
        insecure = raw_insecure.lower() == "true"
    resource = _otel_pairs("OTEL_RESOURCE_ATTRIBUTES", _otel(env, "OTEL_RESOURCE_ATTRIBUTES"))
    service_name = _otel(env, "OTEL_SERVICE_NAME") or dict(resource).get("service.name") or DEFAULT_SERVICE_NAME
    headers = _otel_pairs(
        "OTEL_EXPORTER_OTLP_HEADERS", _otel(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")
    )
    error_messages = True
    if (raw_messages := get("BEM_EXPORT_ERROR_MESSAGES")) is not None:
        error_messages = _bool("BEM_EXPORT_ERROR_MESSAGES", raw_messages)
    return TraceSettings(
        exporter=exporter,
        endpoint=endpoint,
        endpoint_configured=configured,
        protocol=protocol,
        headers=headers,
        timeout=timeout,
        insecure=insecure,
        service_name=service_name,
        resource_attributes=resource,
        error_messages=error_messages,
        max_backlog=_positive_int("BEM_SPAN_BACKLOG", get("BEM_SPAN_BACKLOG") or str(DEFAULT_SPAN_BACKLOG)),
    )


def _otlp_endpoint(env: Mapping[str, str], protocol: str) -> tuple[str, bool]:
    """The URL to export to. Per the spec, the signal-specific variable is used as is, and the
    generic one gets `/v1/traces` appended for http/protobuf."""
    default = "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318/v1/traces"
    if (specific := _otel(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) is not None:
        return (specific, True) if _valid_endpoint(specific) else (default, False)
    if (generic := _otel(env, "OTEL_EXPORTER_OTLP_ENDPOINT")) is not None:
        if not _valid_endpoint(generic):
            return default, False
        if protocol == "grpc":
            return generic, True
        return generic.rstrip("/") + "/v1/traces", True
    return default, False


def _valid_endpoint(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return True
    log.warning("OTEL_EXPORTER_OTLP_ENDPOINT: not an http(s) URL, using the default")
    return False

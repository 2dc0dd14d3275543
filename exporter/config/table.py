"""The table of settings: one row per setting.

A row names the environment variable, the config-file key (which also gives the flag:
`max_rps` -> `--max-rps`), the default as a user would write it, the parser that validates
it, how its value may be shown, and the text of `--help` and docs/configuration.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from exporter.config import parse
from exporter.config.model import (
    API_VERSIONS,
    CANARY_FILE_LIMIT,
    LOG_FORMATS,
    LOG_LEVELS,
    OTLP_PROTOCOLS,
    TRACES_EXPORTERS,
    BasicAuth,
    Secret,
)
from exporter.config.parse import SettingsError

T = TypeVar("T")

Section = Literal["api", "poll", "state", "canary", "server", "webhooks", "traces", "logs"]
SECTIONS: dict[Section, str] = {
    "api": "bem API",
    "poll": "Polling",
    "state": "State and high availability",
    "canary": "Synthetic canary",
    "server": "HTTP server and metrics",
    "webhooks": "Webhooks",
    "traces": "Traces (OpenTelemetry)",
    "logs": "Logs",
}
Shown = Literal["plain", "secret", "url", "pairs"]
"""How a value may be shown: as is, `***`, a URL without credentials or query, `key=***`."""


@dataclass(frozen=True, kw_only=True)
class Row:
    env: str
    section: Section
    help: str
    default: str | None = None
    """Parsed like a given value; None: the setting is unset unless given."""
    unset: str = ""
    """What an unset setting without a default means (docs and --help)."""
    key: str | None = None
    """Config-file key; None: environment only (OTEL_* per their specification, PGPASSWORD)."""
    flag: bool = True
    metavar: str = "VALUE"
    shown: Shown = "plain"
    aliases: tuple[str, ...] = ()
    """Further environment names, tried in order when `env` is unset."""
    spec: bool = False
    """An OpenTelemetry variable: an invalid value is warned about and the default used."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.env, *self.aliases)

    @property
    def flag_name(self) -> str | None:
        return f"--{self.key.replace('_', '-')}" if self.flag and self.key else None

    @property
    def default_text(self) -> str:
        return f"`{self.default}`" if self.default is not None else self.unset


@dataclass(frozen=True, kw_only=True)
class Setting(Row, Generic[T]):
    parse: Callable[[str, str], T]


def _api_key(name: str, raw: str) -> Secret:
    key = raw.strip()
    if not key or any(c.isspace() for c in key):
        raise SettingsError(f"{name}: is empty or contains white space")
    return Secret(key)


def _api_key_file(name: str, path: str) -> Secret:
    return _api_key(name, parse.read_text_file(name, path))


def _password(name: str, raw: str) -> Secret:
    if not raw:
        raise SettingsError(f"{name}: is empty")
    return Secret(raw)


def _password_file(name: str, path: str) -> Secret:
    return _password(name, parse.read_text_file(name, path))


def _basic_auth_file(name: str, path: str) -> BasicAuth:
    user, sep, password = parse.read_text_file(name, path).partition(":")
    if not sep or not user or not password:
        raise SettingsError(f"{name}: must hold one line `username:password`")
    return BasicAuth(user, Secret(password))


def _webhook_secrets(name: str, raw: str) -> tuple[Secret, ...]:
    """Secrets separated by commas or newlines (several during a rotation); never echoed."""
    parts = [part.strip() for part in re.split(r"[,\n]", raw)]
    secrets = [part for part in parts if part]
    if not secrets or any(any(c.isspace() for c in secret) for secret in secrets):
        raise SettingsError(f"{name}: holds no secret, or a secret with white space inside")
    return tuple(Secret(secret) for secret in secrets)


def _webhook_secrets_file(name: str, path: str) -> tuple[Secret, ...]:
    return _webhook_secrets(name, parse.read_text_file(name, path))


def _duration_or_off(name: str, raw: str) -> float:
    """A duration, or `0` for off."""
    return 0.0 if raw.strip() in ("0", "0s") else parse.parse_duration(name, raw)


def _canary_file(name: str, path: str) -> bytes:
    return parse.read_bytes_file(name, path.strip(), CANARY_FILE_LIMIT)


# The rows are kept dense, a setting's facts on two or three lines, so the table reads as one.
# fmt: off
# --- bem API ----------------------------------------------------------------------------------
API_KEY = Setting(
    env="BEM_API_KEY", key="api_key", flag=False, section="api", shown="secret", parse=_api_key,
    unset="required for `run`, `once`, `check`, `subscribe`",
    help="API key, sent as `x-api-key`; no flag, as every user of the machine sees command lines",
)
API_KEY_FILE = Setting(
    env="BEM_API_KEY_FILE", key="api_key_file", section="api", metavar="FILE", parse=_api_key_file,
    help="file holding the API key (Docker/Kubernetes secrets)",
)
API_URL = Setting(
    env="BEM_API_URL", key="api_url", section="api", metavar="URL", shown="url", parse=parse.http_url,
    default="https://api.bem.ai", help="bem API base URL; may carry a path prefix",
)
API_VERSION = Setting(
    env="BEM_API_VERSION", key="api_version", section="api", metavar="v3|v2", parse=parse.choice(API_VERSIONS),
    default="v3", help="`v3`, or `v2` for legacy accounts",
)
API_TIMEOUT = Setting(
    env="BEM_API_TIMEOUT", key="api_timeout", section="api", metavar="DURATION", parse=parse.parse_duration,
    default="30s", help="bound on one API request, response body included",
)
WORKFLOWS = Setting(
    env="BEM_WORKFLOWS", key="workflows", section="api", metavar="NAMES", parse=parse.names, unset="all",
    help="comma list (TOML: a list) of workflow names to watch; filtered by the API (`workflowNames`)",
)
MAX_CONCURRENCY = Setting(
    env="BEM_MAX_CONCURRENCY", key="max_concurrency", section="api", metavar="N", parse=parse.positive_int,
    default="16", help="API requests in flight",
)
MAX_RPS = Setting(
    env="BEM_MAX_RPS", key="max_rps", section="api", metavar="N", parse=parse.positive_float,
    default="200", help="ceiling of API requests started per second: the rate itself adapts, starting at 5/s, "
    "rising while bem answers, cut on 429 (honouring Retry-After), each change logged with its reason",
)
MAX_RESPONSE_BYTES = Setting(
    env="BEM_MAX_RESPONSE_BYTES", key="max_response_bytes", section="api", metavar="SIZE", parse=parse.parse_size,
    default="64MiB", help="bound on the decoded size of one API response (gzip included); a larger one is refused",
)
RETRY_AFTER_MAX = Setting(
    env="BEM_RETRY_AFTER_MAX", key="retry_after_max", section="api", metavar="DURATION", parse=parse.parse_duration,
    default="120s", help="longest `Retry-After` wait honoured; a longer one is cut to this and reported",
)

# --- Polling ----------------------------------------------------------------------------------
POLL_INTERVAL = Setting(
    env="BEM_POLL_INTERVAL", key="poll_interval", section="poll", metavar="DURATION", parse=parse.parse_duration,
    default="15s", help="time between poll cycles",
)
LOOKBACK = Setting(
    env="BEM_LOOKBACK", key="lookback", section="poll", metavar="DURATION", parse=parse.parse_duration,
    default="1h", help="with no cursor in the state (first start, or `:memory:`), pick up calls created this "
    "far back; also how long handled calls are remembered",
)
ABANDON_AFTER = Setting(
    env="BEM_ABANDON_AFTER", key="abandon_after", section="poll", metavar="DURATION", parse=parse.parse_duration,
    default="6h", help="a call still pending/running after this long stops being tracked and is counted in "
    "`bem_exporter_calls_abandoned_total`",
)
QUALITY_INTERVAL = Setting(
    env="BEM_QUALITY_INTERVAL", key="quality_interval", section="poll", metavar="DURATION", parse=_duration_or_off,
    default="5m", help="how often the leader reads bem's function quality metrics (`GET /v3/functions/metrics`, "
    "every page) into the `bem_function_*_ratio` gauges; `0` turns the reads off",
)
SHUTDOWN_GRACE = Setting(
    env="BEM_SHUTDOWN_GRACE", key="shutdown_grace", section="poll", metavar="DURATION", parse=parse.parse_duration,
    default="8s", help="on SIGTERM/SIGINT, time to finish the batch in progress and deliver spans",
)

# --- State and high availability ---------------------------------------------------------------
STATE_PATH = Setting(
    env="BEM_STATE_PATH", key="state_path", section="state", metavar="FILE", parse=parse.state_path,
    default="bem-exporter.sqlite", help="SQLite state file (relative: to the working directory); `:memory:` "
    "disables persistence (every start is a first start)",
)
STATE_URL = Setting(
    env="BEM_STATE_URL", key="state_url", flag=False, section="state", shown="url", parse=parse.postgres_url,
    unset="none (SQLite at `BEM_STATE_PATH`)", help="`postgresql://user@host:5432/db`: the state lives in "
    "PostgreSQL and any number of `run` replicas may share it; not with `BEM_STATE_PATH`; no flag, as it may "
    "hold a password",
)
STATE_PASSWORD_FILE = Setting(
    env="BEM_STATE_PASSWORD_FILE", key="state_password_file", section="state", metavar="FILE",
    parse=_password_file, help="file holding the PostgreSQL password, used when the URL has none",
)
PGPASSWORD = Setting(
    env="PGPASSWORD", section="state", shown="secret", parse=_password,
    help="libpq's password variable, used when neither the URL nor `BEM_STATE_PASSWORD_FILE` gives one",
)
LEADER_LEASE = Setting(
    env="BEM_LEADER_LEASE", key="leader_lease", section="state", metavar="DURATION", parse=parse.parse_duration,
    default="15s", help="with `BEM_STATE_URL`: how long a leader's lease lasts without renewal",
)

# --- Synthetic canary ---------------------------------------------------------------------------
CANARY_WORKFLOW = Setting(
    env="BEM_CANARY_WORKFLOW", key="canary_workflow", section="canary", metavar="NAME", parse=parse.text,
    unset="none (no canary)", help="workflow the canary calls",
)
CANARY_FILE = Setting(
    env="BEM_CANARY_FILE", key="canary_file", section="canary", metavar="FILE", parse=_canary_file,
    unset="required with the workflow", help="the document the canary submits: readable, not empty, at most "
    f"{CANARY_FILE_LIMIT // 2**20} MiB; its bytes never leave in logs, metrics or spans",
)
CANARY_INTERVAL = Setting(
    env="BEM_CANARY_INTERVAL", key="canary_interval", section="canary", metavar="DURATION",
    parse=parse.parse_duration, default="5m", help="time between canary calls; never more than one in flight",
)
CANARY_TIMEOUT = Setting(
    env="BEM_CANARY_TIMEOUT", key="canary_timeout", section="canary", metavar="DURATION",
    parse=parse.parse_duration, default="10m", help="a canary call not finished by then counts as `timeout`; "
    "must be longer than `BEM_POLL_INTERVAL`",
)

# --- HTTP server and metrics ----------------------------------------------------------------------
LISTEN = Setting(
    env="BEM_LISTEN", key="listen", section="server", metavar="HOST:PORT", parse=parse.listen_address,
    default="0.0.0.0:9877", help="`host:port` of `/metrics`, `/healthz`, `/readyz`, `/status`",
)
CALL_BUCKETS = Setting(
    env="BEM_CALL_BUCKETS", key="call_buckets", section="server", metavar="NUMBERS", parse=parse.buckets,
    default="1,2.5,5,10,20,30,60,120,300,600,1200,1800,3600",
    help="bucket bounds (s) of call durations and queue times",
)
FUNCTION_BUCKETS = Setting(
    env="BEM_FUNCTION_BUCKETS", key="function_buckets", section="server", metavar="NUMBERS", parse=parse.buckets,
    default="0.25,0.5,1,2.5,5,10,20,30,60,120,300,600", help="bucket bounds (s) of function-call durations",
)
METRICS_WORKFLOWS = Setting(
    env="BEM_METRICS_WORKFLOWS", key="metrics_workflows", section="server", metavar="NAMES", parse=parse.names,
    unset="all", help="allow-list of workflow names used as label values; others become `other`",
)
METRICS_FUNCTIONS = Setting(
    env="BEM_METRICS_FUNCTIONS", key="metrics_functions", section="server", metavar="NAMES", parse=parse.names,
    unset="all", help="allow-list of function names used as label values; others become `other`",
)
METRICS_MAX_LABEL_VALUES = Setting(
    env="BEM_METRICS_MAX_LABEL_VALUES", key="metrics_max_label_values", section="server", metavar="N",
    parse=parse.positive_int, default="200",
    help="cap on distinct values per label; overflow becomes `other` and is counted",
)
MAX_SERIES_PER_METRIC = Setting(
    env="BEM_MAX_SERIES_PER_METRIC", key="max_series_per_metric", section="server", metavar="N",
    parse=parse.positive_int, default="10000",
    help="cap on series of one metric family; overflow folds into `other` and is counted",
)
MAX_SCRAPE_SAMPLES = Setting(
    env="BEM_MAX_SCRAPE_SAMPLES", key="max_scrape_samples", section="server", metavar="N",
    parse=parse.positive_int, default="150000",
    help="bound on the samples of the `bem_*` call metrics in one scrape (a histogram series counts its buckets, "
    "`_sum` and `_count`); beyond it the families with the most samples fold series into `other`, counted in "
    "`bem_exporter_scrape_folded_series_total`; a large account makes about 50,000 (docs/metrics.md)",
)
METRICS_BASIC_AUTH_FILE = Setting(
    env="BEM_METRICS_BASIC_AUTH_FILE", key="metrics_basic_auth_file", section="server", metavar="FILE",
    parse=_basic_auth_file, help="file with one line `username:password`; `/metrics` and `/status` then "
    "require basic auth",
)
TLS_CERT_FILE = Setting(
    env="BEM_TLS_CERT_FILE", key="tls_cert_file", section="server", metavar="FILE", parse=parse.readable_file,
    help="serve HTTPS with this certificate (with `BEM_TLS_KEY_FILE`), on the webhook listener too",
)
TLS_KEY_FILE = Setting(
    env="BEM_TLS_KEY_FILE", key="tls_key_file", section="server", metavar="FILE", parse=parse.readable_file,
    help="the private key of `BEM_TLS_CERT_FILE` (both or neither)",
)
TRACE_URL = Setting(
    env="BEM_TRACE_URL", key="trace_url", section="server", metavar="URL", shown="url",
    parse=parse.trace_url_template, unset="none (no link)", help="link from `/status` to a trace: an http(s) URL "
    "template holding `{trace_id}`, e.g. a Grafana Explore link",
)

# --- Webhooks -------------------------------------------------------------------------------------
WEBHOOK_LISTEN = Setting(
    env="BEM_WEBHOOK_LISTEN", key="webhook_listen", section="webhooks", metavar="HOST:PORT",
    parse=parse.listen_address, unset="none (no listener)", help="`host:port` of a second listener that "
    "answers only `POST /webhook` (bem's signed deliveries), to be exposed to bem while `/metrics` and "
    "`/status` stay private; TLS as `BEM_TLS_CERT_FILE` sets it",
)
WEBHOOK_SECRET = Setting(
    env="BEM_WEBHOOK_SECRET", key="webhook_secret", flag=False, section="webhooks", shown="secret",
    parse=_webhook_secrets, unset="required with the listener (or `BEM_WEBHOOK_ALLOW_UNSIGNED`)",
    help="bem's webhook signing secret; several, separated by commas or newlines, are all accepted "
    "(rotation); never printed; no flag, as every user of the machine sees command lines",
)
WEBHOOK_SECRET_FILE = Setting(
    env="BEM_WEBHOOK_SECRET_FILE", key="webhook_secret_file", section="webhooks", metavar="FILE",
    parse=_webhook_secrets_file, help="file holding the webhook secret(s), one per line (Kubernetes secrets)",
)
WEBHOOK_ALLOW_UNSIGNED = Setting(
    env="BEM_WEBHOOK_ALLOW_UNSIGNED", key="webhook_allow_unsigned", section="webhooks", metavar="BOOL",
    parse=parse.boolean, default="false", help="`true` accepts deliveries without `bem-signature`; only "
    "without a secret (bem sends unsigned deliveries while no signing secret exists)",
)
WEBHOOK_TOLERANCE = Setting(
    env="BEM_WEBHOOK_TOLERANCE", key="webhook_tolerance", section="webhooks", metavar="DURATION",
    parse=parse.parse_duration, default="5m", help="how far a signature's `t=` may be from now; older "
    "or later deliveries are answered 401 (replays)",
)

# --- Traces (OpenTelemetry) -----------------------------------------------------------------------
TRACES_EXPORTER = Setting(
    env="OTEL_TRACES_EXPORTER", section="traces", spec=True, parse=parse.choice(TRACES_EXPORTERS),
    default="otlp", help="`otlp`, `console` (JSON spans on stdout) or `none`",
)
OTLP_TRACES_ENDPOINT = Setting(
    env="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", section="traces", spec=True, shown="url", parse=parse.otel_endpoint,
    help="full URL, used as is; wins over `OTEL_EXPORTER_OTLP_ENDPOINT`",
)
OTLP_ENDPOINT = Setting(
    env="OTEL_EXPORTER_OTLP_ENDPOINT", section="traces", spec=True, shown="url", parse=parse.otel_endpoint,
    unset="`http://localhost:4318` (`:4317` for gRPC)",
    help="base endpoint; `/v1/traces` is appended for `http/protobuf`",
)
OTLP_PROTOCOL = Setting(
    env="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", aliases=("OTEL_EXPORTER_OTLP_PROTOCOL",), section="traces",
    spec=True, parse=parse.choice(OTLP_PROTOCOLS), default="http/protobuf", help="`http/protobuf` or `grpc`",
)
OTLP_HEADERS = Setting(
    env="OTEL_EXPORTER_OTLP_TRACES_HEADERS", aliases=("OTEL_EXPORTER_OTLP_HEADERS",), section="traces",
    spec=True, shown="pairs", parse=parse.otel_pairs,
    help="`key=value,key2=value2` (percent-encoded values), e.g. a vendor's API key; values are never shown",
)
OTLP_TIMEOUT = Setting(
    env="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", aliases=("OTEL_EXPORTER_OTLP_TIMEOUT",), section="traces",
    spec=True, parse=parse.otel_millis, default="10000", help="milliseconds per export",
)
OTLP_INSECURE = Setting(
    env="OTEL_EXPORTER_OTLP_TRACES_INSECURE", aliases=("OTEL_EXPORTER_OTLP_INSECURE",), section="traces",
    spec=True, parse=parse.otel_true, unset="insecure exactly when the endpoint's scheme is `http://`",
    help="`true`: gRPC without TLS",
)
SERVICE_NAME = Setting(
    env="OTEL_SERVICE_NAME", section="traces", spec=True, parse=parse.text, unset="`bem`",
    help="`service.name` of the spans; wins over `OTEL_RESOURCE_ATTRIBUTES`",
)
RESOURCE_ATTRIBUTES = Setting(
    env="OTEL_RESOURCE_ATTRIBUTES", section="traces", spec=True, parse=parse.otel_pairs,
    help="extra resource attributes `k=v,k2=v2`",
)
SEMCONV_STABILITY_OPT_IN = Setting(
    env="OTEL_SEMCONV_STABILITY_OPT_IN", section="traces", spec=True, parse=parse.names,
    unset="none (the default layout)", help="comma list of semantic-convention categories to emit in their newest "
    "form; `gen_ai_latest_experimental` adds the OpenTelemetry GenAI layout to the spans (docs/traces.md)",
)
EXPORT_ERROR_MESSAGES = Setting(
    env="BEM_EXPORT_ERROR_MESSAGES", key="export_error_messages", section="traces", metavar="BOOL",
    parse=parse.boolean, default="true",
    help="put error events' messages (first 256 characters) on spans; `false` keeps them inside",
)
SPAN_BACKLOG = Setting(
    env="BEM_SPAN_BACKLOG", key="span_backlog", section="traces", metavar="N", parse=parse.positive_int,
    default="10000", help="finished calls whose spans wait in memory while the backend is down (beyond it "
    "they wait in the state and are fetched again)",
)
OTLP_MAX_REQUEST_BYTES = Setting(
    env="BEM_OTLP_MAX_REQUEST_BYTES", key="otlp_max_request_bytes", section="traces", metavar="SIZE",
    parse=parse.parse_size, default="3MiB", help="bound on the encoded size of one OTLP export request; "
    "larger batches are split",
)

# --- Logs -------------------------------------------------------------------------------------------
LOG_LEVEL = Setting(
    env="BEM_LOG_LEVEL", key="log_level", section="logs", metavar="LEVEL", parse=parse.choice(LOG_LEVELS),
    default="info", help="`debug`, `info`, `warning`, `error`",
)
LOG_FORMAT = Setting(
    env="BEM_LOG_FORMAT", key="log_format", section="logs", metavar="FORMAT", parse=parse.choice(LOG_FORMATS),
    default="auto", help="`json`, `text`, or `auto` (JSON when stderr is not a terminal)",
)

ROWS: tuple[Row, ...] = (
    API_KEY, API_KEY_FILE, API_URL, API_VERSION, API_TIMEOUT, WORKFLOWS, MAX_CONCURRENCY, MAX_RPS,
    MAX_RESPONSE_BYTES, RETRY_AFTER_MAX,
    POLL_INTERVAL, LOOKBACK, ABANDON_AFTER, QUALITY_INTERVAL, SHUTDOWN_GRACE,
    STATE_PATH, STATE_URL, STATE_PASSWORD_FILE, PGPASSWORD, LEADER_LEASE,
    CANARY_WORKFLOW, CANARY_FILE, CANARY_INTERVAL, CANARY_TIMEOUT,
    LISTEN, CALL_BUCKETS, FUNCTION_BUCKETS, METRICS_WORKFLOWS, METRICS_FUNCTIONS, METRICS_MAX_LABEL_VALUES,
    MAX_SERIES_PER_METRIC, MAX_SCRAPE_SAMPLES, METRICS_BASIC_AUTH_FILE, TLS_CERT_FILE, TLS_KEY_FILE, TRACE_URL,
    WEBHOOK_LISTEN, WEBHOOK_SECRET, WEBHOOK_SECRET_FILE, WEBHOOK_ALLOW_UNSIGNED, WEBHOOK_TOLERANCE,
    TRACES_EXPORTER, OTLP_TRACES_ENDPOINT, OTLP_ENDPOINT, OTLP_PROTOCOL, OTLP_HEADERS, OTLP_TIMEOUT, OTLP_INSECURE,
    SERVICE_NAME, RESOURCE_ATTRIBUTES, SEMCONV_STABILITY_OPT_IN, EXPORT_ERROR_MESSAGES, SPAN_BACKLOG,
    OTLP_MAX_REQUEST_BYTES,
    LOG_LEVEL, LOG_FORMAT,
)
# fmt: on
BY_KEY: dict[str, Row] = {row.key: row for row in ROWS if row.key}

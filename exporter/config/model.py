"""The settings object: frozen, typed groups read by the rest of the exporter.

The defaults here are the ones `load_settings` resolves to when nothing is set (a test holds
the two together), so code and tests may also build a group directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ApiVersion = Literal["v3", "v2"]
OtlpProtocol = Literal["grpc", "http/protobuf"]
TracesExporter = Literal["otlp", "console", "none"]
LogFormat = Literal["auto", "json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]
Source = Literal["flag", "environment", "file", "default"]

API_VERSIONS: tuple[ApiVersion, ...] = ("v3", "v2")
OTLP_PROTOCOLS: tuple[OtlpProtocol, ...] = ("grpc", "http/protobuf")
TRACES_EXPORTERS: tuple[TracesExporter, ...] = ("otlp", "console", "none")
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")

MiB = 2**20
DEFAULT_LISTEN_PORT = 9877
# Document workflows run from seconds to tens of minutes.
DEFAULT_CALL_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
DEFAULT_FUNCTION_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TRACE_ID_PLACEHOLDER = "{trace_id}"
CANARY_FILE_LIMIT = 10 * MiB
"""The largest canary document accepted: the canary proves the path works, not bem's limits."""


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
class PostgresUrl:
    url: str
    """The connection URL without its password."""
    password: Secret | None


@dataclass(frozen=True)
class ApiSettings:
    url: str = "https://api.bem.ai"
    version: ApiVersion = "v3"
    key: Secret | None = None
    workflows: tuple[str, ...] = ()
    max_concurrency: int = 16
    max_rps: float = 200.0
    timeout: float = 30.0
    max_response_bytes: int = 64 * MiB
    """Bound on the decoded size of one API response body (gzip included)."""
    retry_after_max: float = 120.0
    """The longest `Retry-After` wait honoured; a longer one is cut to this."""


@dataclass(frozen=True)
class PollSettings:
    interval: float = 15.0
    lookback: float = 3600.0
    abandon_after: float = 6 * 3600.0
    state_path: str = "bem-exporter.sqlite"
    shutdown_grace: float = 8.0
    quality_interval: float = 300.0
    """Seconds between reads of bem's function quality metrics; 0: no reads."""


@dataclass(frozen=True)
class StateSettings:
    """Where the durable state lives: SQLite at `poll.state_path`, or PostgreSQL at `url`."""

    url: str | None = None
    """A `postgresql://` URL without its password; None: SQLite."""
    password: Secret | None = None
    lease: float = 15.0
    """How long a leader's lease lasts without renewal."""

    @property
    def engine(self) -> Literal["sqlite", "postgres"]:
        return "sqlite" if self.url is None else "postgres"


@dataclass(frozen=True)
class CanarySettings:
    workflow: str | None = None
    """None: no canary."""
    file: str | None = None
    document: bytes = field(default=b"", repr=False)
    """The bytes of `file`, read and checked at start; never printed."""
    interval: float = 300.0
    timeout: float = 600.0

    @property
    def enabled(self) -> bool:
        return self.workflow is not None


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
    max_label_values: int = 200
    max_series_per_metric: int = 10_000
    """Cap on series of one metric family; beyond it label values fold into `other`."""
    max_scrape_samples: int = 150_000
    """Bound on the samples of the counted metrics in one scrape; beyond it the largest
    families fold series into `other`."""
    basic_auth: BasicAuth | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook listener (`exporter.webhooks`); TLS comes from `MetricsSettings`."""

    listen_host: str | None = None
    """None: no listener."""
    listen_port: int = 0
    secrets: tuple[Secret, ...] = ()
    """Every secret a signature may be made with (more than one during a rotation)."""
    allow_unsigned: bool = False
    """Accept deliveries without `bem-signature` (only with no secret)."""
    tolerance: float = 300.0
    """Seconds a signature's timestamp may be from now."""

    @property
    def enabled(self) -> bool:
        return self.listen_host is not None


@dataclass(frozen=True)
class StatusSettings:
    trace_url: str | None = None
    """A link template holding `{trace_id}`; None: trace ids are shown without a link."""

    def trace_link(self, trace_id: str) -> str | None:
        # Plain replacement, not str.format: Grafana links carry JSON braces of their own.
        return None if self.trace_url is None else self.trace_url.replace(TRACE_ID_PLACEHOLDER, trace_id)


@dataclass(frozen=True)
class TraceSettings:
    exporter: TracesExporter = "otlp"
    endpoint: str = "http://localhost:4318/v1/traces"
    """The full URL to send to: `/v1/traces` already appended for http/protobuf."""
    endpoint_configured: bool = False
    """An OTLP endpoint was set explicitly (the demo prints a tree in the terminal otherwise)."""
    protocol: OtlpProtocol = "http/protobuf"
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0
    insecure: bool | None = None
    service_name: str = "bem"
    resource_attributes: tuple[tuple[str, str], ...] = ()
    error_messages: bool = True
    """Export error events' messages (truncated) as span attributes."""
    genai_conventions: bool = False
    """`OTEL_SEMCONV_STABILITY_OPT_IN` holds `gen_ai_latest_experimental`: the GenAI layout too."""
    error_message_length: int = 256
    max_backlog: int = 10_000
    """Finished calls whose spans wait in memory while the backend is down."""
    max_request_bytes: int = 3 * MiB
    """Bound on the encoded size of one OTLP export request."""


@dataclass(frozen=True)
class ResolvedSetting:
    """One resolved setting as it may be shown: secrets as `***`, URLs without credentials."""

    name: str
    value: str
    """Empty when unset."""
    source: Source

    def line(self) -> str:
        return f"{self.name}={self.value or '(unset)'} ({self.source})"


@dataclass(frozen=True)
class Settings:
    api: ApiSettings = field(default_factory=ApiSettings)
    poll: PollSettings = field(default_factory=PollSettings)
    state: StateSettings = field(default_factory=StateSettings)
    canary: CanarySettings = field(default_factory=CanarySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    traces: TraceSettings = field(default_factory=TraceSettings)
    log_level: LogLevel = "info"
    log_format: LogFormat = "auto"
    resolved: tuple[ResolvedSetting, ...] = field(default=(), repr=False, compare=False)
    """Every setting, redacted, with where it came from: for `check` and `/status`."""

    def secrets(self) -> tuple[str, ...]:
        """The secret values the logs must mask."""
        held = (self.api.key, self.state.password, self.metrics.basic_auth and self.metrics.basic_auth.password)
        return tuple(secret.get() for secret in (*held, *self.webhooks.secrets) if secret)

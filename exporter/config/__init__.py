"""Settings: one typed object, built once at start, validated before anything runs.

Precedence: command-line flag > environment > config file (TOML) > default. Every setting is
one row of `exporter.config.table`, which drives its flag, environment variable, file key,
default, validation, `--help` and docs/configuration.md. An invalid value raises
`SettingsError` naming the setting; the CLI prints its one line and exits 2. `OTEL_*`
variables follow the OpenTelemetry specification instead: an invalid value is warned about
and the default used.

Secrets are held in `Secret`, whose repr and str never show it; `Settings.resolved` lists
every setting with its source, redacted, for `check` and `/status`.
"""

from exporter.config.load import load_settings
from exporter.config.model import (
    DEFAULT_LISTEN_PORT,
    ApiSettings,
    BasicAuth,
    CanarySettings,
    MetricsSettings,
    PollSettings,
    ResolvedSetting,
    Secret,
    Settings,
    Source,
    StateSettings,
    StatusSettings,
    TraceSettings,
    WebhookSettings,
)
from exporter.config.parse import SettingsError, parse_duration, parse_size

__all__ = [
    "DEFAULT_LISTEN_PORT",
    "ApiSettings",
    "BasicAuth",
    "CanarySettings",
    "MetricsSettings",
    "PollSettings",
    "ResolvedSetting",
    "Secret",
    "Settings",
    "SettingsError",
    "Source",
    "StateSettings",
    "StatusSettings",
    "TraceSettings",
    "WebhookSettings",
    "load_settings",
    "parse_duration",
    "parse_size",
]

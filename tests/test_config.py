"""Settings: precedence, defaults, and one clear line (exit 2) per invalid value."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.config import (
    ApiSettings,
    CanarySettings,
    MetricsSettings,
    PollSettings,
    ResolvedSetting,
    Secret,
    Settings,
    SettingsError,
    StateSettings,
    StatusSettings,
    TraceSettings,
    WebhookSettings,
    load_settings,
    parse_size,
)
from exporter.config.docs import render
from exporter.config.model import CANARY_FILE_LIMIT
from exporter.config.table import ROWS

KEY = "bem-test-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def settings(env: dict[str, str], flags: dict[str, str] | None = None, config: str | None = None):  # type: ignore[no-untyped-def]
    return load_settings(flags, {"BEM_API_KEY": KEY, **env}, config)


def test_defaults() -> None:
    s = settings({})
    assert s.api.url == "https://api.bem.ai"
    assert s.api.version == "v3"
    assert s.poll.interval == 15
    assert s.poll.lookback == 3600
    assert s.metrics.listen_port == 9877
    assert s.traces.protocol == "http/protobuf"
    assert s.traces.endpoint == "http://localhost:4318/v1/traces"
    assert not s.traces.endpoint_configured
    assert s.traces.service_name == "bem"


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "bem.toml"
    config.write_text('poll_interval = "40s"\nlookback = "2h"\nworkflows = ["a", "b"]\nmax_rps = 7\n')
    s = settings({"BEM_POLL_INTERVAL": "30s"}, {"BEM_POLL_INTERVAL": "20"}, str(config))
    assert s.poll.interval == 20
    assert s.poll.lookback == 7200
    assert s.api.workflows == ("a", "b")
    assert s.api.max_rps == 7
    assert settings({"BEM_POLL_INTERVAL": "30s"}, None, str(config)).poll.interval == 30


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BEM_POLL_INTERVAL": "-5"}, "BEM_POLL_INTERVAL"),
        ({"BEM_POLL_INTERVAL": "0"}, "BEM_POLL_INTERVAL"),
        ({"BEM_LOOKBACK": "banana"}, "BEM_LOOKBACK"),
        ({"BEM_API_URL": "api.bem.ai"}, "BEM_API_URL"),
        ({"BEM_API_URL": "ftp://api.bem.ai"}, "BEM_API_URL"),
        ({"BEM_API_VERSION": "v9"}, "BEM_API_VERSION"),
        ({"BEM_MAX_CONCURRENCY": "0"}, "BEM_MAX_CONCURRENCY"),
        ({"BEM_MAX_RPS": "fast"}, "BEM_MAX_RPS"),
        ({"BEM_LISTEN": "localhost:99999"}, "BEM_LISTEN"),
        ({"BEM_STATE_PATH": "/no/such/dir/state.sqlite"}, "BEM_STATE_PATH"),
        ({"BEM_CALL_BUCKETS": "5,1"}, "BEM_CALL_BUCKETS"),
        ({"BEM_TLS_CERT_FILE": "/etc/hostname"}, "BEM_TLS_CERT_FILE"),
        ({"BEM_EXPORT_ERROR_MESSAGES": "maybe"}, "BEM_EXPORT_ERROR_MESSAGES"),
        ({"BEM_LEADER_LEASE": "0s"}, "BEM_LEADER_LEASE"),
        ({"BEM_CANARY_INTERVAL": "soon"}, "BEM_CANARY_INTERVAL"),
        ({"BEM_CANARY_TIMEOUT": "-1"}, "BEM_CANARY_TIMEOUT"),
        ({"BEM_CANARY_FILE": "/etc/hostname"}, "BEM_CANARY_FILE"),
        ({"BEM_STATE_PASSWORD_FILE": "/etc/hostname"}, "BEM_STATE_PASSWORD_FILE"),
        ({"BEM_STATE_URL": "postgresql://db/x", "BEM_STATE_PASSWORD_FILE": "/no/such/file"}, "BEM_STATE_PASSWORD_FILE"),
        ({"BEM_MAX_RESPONSE_BYTES": "0"}, "BEM_MAX_RESPONSE_BYTES"),
        ({"BEM_RETRY_AFTER_MAX": "forever"}, "BEM_RETRY_AFTER_MAX"),
        ({"BEM_OTLP_MAX_REQUEST_BYTES": "3 megs"}, "BEM_OTLP_MAX_REQUEST_BYTES"),
        ({"BEM_MAX_SERIES_PER_METRIC": "1e4"}, "BEM_MAX_SERIES_PER_METRIC"),
        ({"BEM_TRACE_URL": "https://grafana.example/explore"}, "BEM_TRACE_URL"),
        ({"BEM_TRACE_URL": "grafana/{trace_id}"}, "BEM_TRACE_URL"),
        ({"BEM_API_URL": "https://api.bem.ai:port"}, "BEM_API_URL"),
        ({"BEM_WEBHOOK_LISTEN": "127.0.0.1:9878"}, "BEM_WEBHOOK_SECRET"),
        ({"BEM_WEBHOOK_SECRET": "s"}, "BEM_WEBHOOK_SECRET"),
        ({"BEM_WEBHOOK_SECRET_FILE": "/etc/hostname"}, "BEM_WEBHOOK_SECRET_FILE"),
        ({"BEM_WEBHOOK_LISTEN": "127.0.0.1:9878", "BEM_WEBHOOK_SECRET": " , "}, "BEM_WEBHOOK_SECRET"),
        ({"BEM_WEBHOOK_LISTEN": "127.0.0.1:9878", "BEM_WEBHOOK_SECRET": "a b"}, "BEM_WEBHOOK_SECRET"),
        (
            {"BEM_WEBHOOK_LISTEN": "127.0.0.1:9878", "BEM_WEBHOOK_SECRET": "s", "BEM_WEBHOOK_ALLOW_UNSIGNED": "true"},
            "BEM_WEBHOOK_ALLOW_UNSIGNED",
        ),
        ({"BEM_WEBHOOK_LISTEN": "9877", "BEM_WEBHOOK_SECRET": "s"}, "BEM_WEBHOOK_LISTEN"),
        ({"BEM_WEBHOOK_LISTEN": "0.0.0.0:80000", "BEM_WEBHOOK_SECRET": "s"}, "BEM_WEBHOOK_LISTEN"),
        ({"BEM_WEBHOOK_TOLERANCE": "0"}, "BEM_WEBHOOK_TOLERANCE"),
    ],
)
def test_invalid_values_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as error:
        settings(env)
    assert str(error.value).startswith(named)
    assert "\n" not in str(error.value)


def test_missing_key_and_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^BEM_API_KEY"):
        load_settings({}, {})
    with pytest.raises(SettingsError, match=r"^BEM_API_KEY_FILE"):
        load_settings({}, {"BEM_API_KEY_FILE": str(tmp_path / "missing")})
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert load_settings({}, {"BEM_API_KEY_FILE": str(key_file)}).api.key.get() == KEY  # type: ignore[union-attr]
    assert load_settings({}, {}, require_key=False).api.key is None


def test_unknown_config_key(tmp_path: Path) -> None:
    config = tmp_path / "bem.toml"
    config.write_text('poll_intervall = "5s"\n')
    with pytest.raises(SettingsError, match="unknown key 'poll_intervall'"):
        settings({}, None, str(config))


def test_the_key_is_never_in_repr() -> None:
    s = settings({})
    assert KEY not in repr(s)
    assert KEY not in str(s.api)


def test_otel_variables_follow_the_spec() -> None:
    s = settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_SERVICE_NAME": "docs"})
    assert s.traces.endpoint == "http://collector:4318/v1/traces"
    assert s.traces.endpoint_configured
    assert s.traces.service_name == "docs"
    s = settings({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9/custom", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert s.traces.endpoint == "http://c:9/custom"
    s = settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert (s.traces.protocol, s.traces.endpoint) == ("grpc", "http://c:4317")
    # Invalid OTEL_* values warn and fall back to the default (never exit).
    s = settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
    assert (s.traces.protocol, s.traces.timeout) == ("http/protobuf", 10.0)
    s = settings({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,deployment.environment=prod"})
    assert s.traces.service_name == "from-resource"
    s = settings({"OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%20def,bad"})
    assert s.traces.headers == (("api-key", "abc def"),)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["once"], {}, "BEM_API_KEY"),
        (["run"], {"BEM_API_KEY": KEY, "BEM_POLL_INTERVAL": "-1"}, "BEM_POLL_INTERVAL"),
        (["once"], {"BEM_API_KEY": KEY, "BEM_LOOKBACK": "banana"}, "BEM_LOOKBACK"),
        (["check"], {"BEM_API_KEY": KEY, "BEM_API_URL": "api.bem.ai"}, "BEM_API_URL"),
        (["run", "--poll-interval", "0"], {"BEM_API_KEY": KEY}, "BEM_POLL_INTERVAL"),
        (["once"], {"BEM_API_KEY_FILE": "/nonexistent/key"}, "BEM_API_KEY_FILE"),
        (["run", "--bogus"], {"BEM_API_KEY": KEY}, "unrecognized arguments"),
    ],
)
def test_cli_exits_2_with_one_line(args: list[str], env: dict[str, str], named: str) -> None:
    result = _cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr + result.stdout


def test_help_shows_no_key() -> None:
    result = _cli("run", "--help", env={"BEM_API_KEY": KEY})
    assert result.returncode == 0
    assert "demo" in _cli("--help", env={}).stdout
    assert KEY not in result.stdout
    assert "--api-key-file" in result.stdout


# --- The table: defaults, docs, provenance ---------------------------------------------------


def test_resolved_defaults_are_the_model_defaults() -> None:
    """The table's defaults and the dataclasses' defaults are one set of numbers."""
    s = settings({})
    assert replace(s.api, key=None) == ApiSettings()
    assert s.poll == PollSettings()
    assert s.state == StateSettings()
    assert s.canary == CanarySettings()
    assert s.metrics == MetricsSettings()
    assert s.status == StatusSettings()
    assert s.traces == TraceSettings()
    assert s.webhooks == WebhookSettings()
    assert (s.log_level, s.log_format) == ("info", "auto")


def test_docs_tables_are_generated_from_the_table() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert render(doc) == doc, "run: python -m exporter.config.docs docs/configuration.md"
    for row in ROWS:
        assert f"`{row.env}`" in doc
        assert row.key is None or f"`{row.key}`" in doc


def test_rows_are_unique_and_every_file_key_is_accepted(tmp_path: Path) -> None:
    assert len({row.env for row in ROWS}) == len(ROWS)
    keys = [row.key for row in ROWS if row.key]
    assert len(set(keys)) == len(keys)
    config = tmp_path / "bem.toml"
    config.write_text('max_response_bytes = "1MiB"\nleader_lease = "30s"\ntrace_url = "https://t/{trace_id}"\n')
    s = settings({}, None, str(config))
    assert (s.api.max_response_bytes, s.state.lease, s.status.trace_url) == (2**20, 30, "https://t/{trace_id}")


def _resolved(s: Settings) -> dict[str, ResolvedSetting]:
    return {item.name: item for item in s.resolved}


def test_provenance_names_the_source_of_each_setting(tmp_path: Path) -> None:
    config = tmp_path / "bem.toml"
    config.write_text('lookback = "2h"\nmax_rps = 7\n')
    s = settings({"BEM_MAX_RPS": "9", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, {"BEM_LOOKBACK": "3h"}, str(config))
    resolved = _resolved(s)
    assert resolved["BEM_LOOKBACK"] == ResolvedSetting("BEM_LOOKBACK", "3h", "flag")
    assert resolved["BEM_MAX_RPS"] == ResolvedSetting("BEM_MAX_RPS", "9", "environment")
    assert resolved["BEM_POLL_INTERVAL"] == ResolvedSetting("BEM_POLL_INTERVAL", "15s", "default")
    # The generic OTEL name stands in for the signal-specific one, and says so.
    assert resolved["OTEL_EXPORTER_OTLP_PROTOCOL"].source == "environment"
    assert resolved["BEM_CANARY_WORKFLOW"].line() == "BEM_CANARY_WORKFLOW=(unset) (default)"
    s = settings({}, None, str(config))
    assert _resolved(s)["BEM_MAX_RPS"] == ResolvedSetting("BEM_MAX_RPS", "7", "file")


def test_a_blank_value_resets_to_the_default(tmp_path: Path) -> None:
    config = tmp_path / "bem.toml"
    config.write_text('workflows = ["a"]\npoll_interval = "40s"\n')
    s = settings({"BEM_WORKFLOWS": "", "BEM_POLL_INTERVAL": " ", "OTEL_TRACES_EXPORTER": ""}, None, str(config))
    assert (s.api.workflows, s.poll.interval, s.traces.exporter) == ((), 15, "otlp")
    assert _resolved(s)["BEM_POLL_INTERVAL"] == ResolvedSetting("BEM_POLL_INTERVAL", "15s", "default")
    # OTEL_*: an empty signal-specific variable lets the generic one speak (the specification's "unset").
    s = settings({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert s.traces.protocol == "grpc"


def test_an_invalid_otel_value_is_shown_as_the_default_it_fell_back_to(caplog: pytest.LogCaptureFixture) -> None:
    s = settings({"OTEL_TRACES_EXPORTER": "zipkin"})
    assert s.traces.exporter == "otlp"
    assert _resolved(s)["OTEL_TRACES_EXPORTER"] == ResolvedSetting("OTEL_TRACES_EXPORTER", "otlp", "default")
    assert "OTEL_TRACES_EXPORTER: 'zipkin' is not one of otlp, console, none; using the default" in caplog.text


def test_no_secret_is_ever_in_the_resolved_list(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("prometheus:basic-secret-42\n")
    canary = tmp_path / "doc.pdf"
    canary.write_bytes(b"%PDF canary-content-marker")
    s = settings(
        {
            "BEM_API_URL": "https://user:url-secret-1@api.example/bem",
            "BEM_STATE_URL": "postgresql://exporter:pg-secret-3@db:5432/bem?sslmode=require",
            "PGPASSWORD": "pg-secret-4",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=header-secret-5,x-team=ops",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp:otlp-secret-6@collector:4318",
            "BEM_METRICS_BASIC_AUTH_FILE": str(auth),
            "BEM_CANARY_WORKFLOW": "canary",
            "BEM_CANARY_FILE": str(canary),
            "BEM_TRACE_URL": "https://grafana.example/explore?token=trace-secret-7&q={trace_id}",
            "BEM_WEBHOOK_LISTEN": "0.0.0.0:9878",
            "BEM_WEBHOOK_SECRET": "webhook-secret-8,webhook-secret-9",
        }
    )
    shown = "\n".join(item.line() for item in s.resolved)
    for secret in (
        KEY, "url-secret", "pg-secret", "header-secret", "otlp-secret", "basic-secret", "trace-secret", "webhook-secret"
    ):  # fmt: skip
        assert secret not in shown
    for secret in (KEY, "pg-secret", "basic-secret", "canary-content-marker", "webhook-secret"):  # Secret or hidden
        assert secret not in repr(s)
    assert "canary-content-marker" not in shown
    resolved = _resolved(s)
    assert resolved["BEM_API_KEY"].value == "***"
    assert resolved["PGPASSWORD"].value == "***"
    assert resolved["BEM_STATE_URL"].value == "postgresql://db:5432/bem"
    assert resolved["OTEL_EXPORTER_OTLP_HEADERS"].value == "api-key=***,x-team=***"
    assert resolved["BEM_API_URL"].value == "https://api.example/bem"
    assert resolved["BEM_CANARY_FILE"].value == str(canary)
    assert resolved["BEM_WEBHOOK_SECRET"].value == "***"
    assert set(s.secrets()) == {KEY, "pg-secret-3", "basic-secret-42", "webhook-secret-8", "webhook-secret-9"}


def test_webhook_secrets_from_a_file_one_per_line_for_a_rotation(tmp_path: Path) -> None:
    secrets = tmp_path / "webhook-secret"
    secrets.write_text("whsec-old\nwhsec-new\n\n")
    s = settings({"BEM_WEBHOOK_LISTEN": "[::1]:9878", "BEM_WEBHOOK_SECRET_FILE": str(secrets)})
    assert [secret.get() for secret in s.webhooks.secrets] == ["whsec-old", "whsec-new"]
    assert (s.webhooks.listen_host, s.webhooks.listen_port, s.webhooks.tolerance) == ("::1", 9878, 300.0)
    unsigned = settings({"BEM_WEBHOOK_LISTEN": "127.0.0.1:9878", "BEM_WEBHOOK_ALLOW_UNSIGNED": "true"})
    assert unsigned.webhooks.allow_unsigned and unsigned.webhooks.secrets == ()
    assert not settings({}).webhooks.enabled


def test_a_key_file_given_as_a_flag_beats_a_key_in_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("key-from-file\n")
    s = settings({}, {"BEM_API_KEY_FILE": str(key_file)})
    assert s.api.key == Secret("key-from-file")
    assert settings({"BEM_API_KEY_FILE": str(key_file)}).api.key == Secret(KEY)  # a tie: the key


def test_a_config_file_api_key_works(tmp_path: Path) -> None:
    config = tmp_path / "bem.toml"
    config.write_text('api_key = "key-from-toml"\n')
    s = load_settings({}, {}, str(config))
    assert s.api.key == Secret("key-from-toml")
    assert _resolved(s)["BEM_API_KEY"] == ResolvedSetting("BEM_API_KEY", "***", "file")


# --- Typed closed sets and sizes ----------------------------------------------------------------


def test_closed_sets_are_normalised() -> None:
    s = settings({"BEM_API_VERSION": "V2", "BEM_LOG_LEVEL": "DEBUG", "OTEL_TRACES_EXPORTER": "Console"})
    assert (s.api.version, s.log_level, s.traces.exporter) == ("v2", "debug", "console")


@pytest.mark.parametrize(
    ("raw", "size"),
    [("1048576", 2**20), ("64MiB", 64 * 2**20), ("3 mib", 3 * 2**20), ("512KiB", 512 * 1024), ("1GB", 10**9),
     ("1.5MiB", 3 * 2**19), ("10b", 10)],
)  # fmt: skip
def test_sizes(raw: str, size: int) -> None:
    assert parse_size("X", raw) == size


def test_limits_take_sizes_and_durations() -> None:
    s = settings(
        {
            "BEM_MAX_RESPONSE_BYTES": "8MiB",
            "BEM_RETRY_AFTER_MAX": "5m",
            "BEM_OTLP_MAX_REQUEST_BYTES": "1MB",
            "BEM_MAX_SERIES_PER_METRIC": "500",
        }
    )
    assert s.api.max_response_bytes == 8 * 2**20
    assert s.api.retry_after_max == 300
    assert s.traces.max_request_bytes == 10**6
    assert s.metrics.max_series_per_metric == 500


# --- State in PostgreSQL --------------------------------------------------------------------------


def test_state_url_keeps_the_password_apart(tmp_path: Path) -> None:
    s = settings({"BEM_STATE_URL": "postgresql://bem:p%40ss@db1:5432,db2:5433/state?sslmode=require"})
    assert s.state.engine == "postgres"
    assert s.state.url == "postgresql://bem@db1:5432,db2:5433/state?sslmode=require"
    assert s.state.password == Secret("p@ss")
    assert s.state.lease == 15
    password_file = tmp_path / "pw"
    password_file.write_text("from-file\n")
    env = {"BEM_STATE_URL": "postgres://bem@db/state", "PGPASSWORD": "from-env"}
    assert settings(env).state.password == Secret("from-env")
    assert settings({**env, "BEM_STATE_PASSWORD_FILE": str(password_file)}).state.password == Secret("from-file")
    assert settings({"BEM_STATE_URL": "postgresql:///state?host=/run/postgresql"}).state.password is None
    assert settings({}).state.engine == "sqlite"


def test_state_url_errors_never_show_the_password() -> None:
    for url in (
        "postgresql://bem:hunter2@db:port/x",
        "mysql://bem:hunter2@db/x",
        "postgresql://bem@db/x?password=hunter2",
    ):
        with pytest.raises(SettingsError, match=r"^BEM_STATE_URL: ") as error:
            settings({"BEM_STATE_URL": url})
        assert "hunter2" not in str(error.value)


# --- Canary and trace links -----------------------------------------------------------------------


def test_canary_reads_its_document_once(tmp_path: Path) -> None:
    document = tmp_path / "doc.pdf"
    document.write_bytes(b"%PDF-1.7 content-marker")
    s = settings({"BEM_CANARY_WORKFLOW": "canary-wf", "BEM_CANARY_FILE": str(document), "BEM_CANARY_INTERVAL": "1m"})
    assert s.canary.enabled
    assert (s.canary.workflow, s.canary.file) == ("canary-wf", str(document))
    assert s.canary.document == b"%PDF-1.7 content-marker"
    assert (s.canary.interval, s.canary.timeout) == (60, 600)
    assert "content-marker" not in repr(s)
    # A timeout shorter than the interval is allowed: a new call waits for the previous judgement anyway.
    s = settings({"BEM_CANARY_WORKFLOW": "w", "BEM_CANARY_FILE": str(document), "BEM_CANARY_TIMEOUT": "1m"})
    assert (s.canary.interval, s.canary.timeout) == (300, 60)
    assert not settings({}).canary.enabled


def test_canary_file_limit_is_10_mib(tmp_path: Path) -> None:
    document = tmp_path / "big.pdf"
    document.write_bytes(b"x" * CANARY_FILE_LIMIT)
    assert len(settings({"BEM_CANARY_WORKFLOW": "w", "BEM_CANARY_FILE": str(document)}).canary.document) == 10 * 2**20
    with document.open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(SettingsError, match=r"^BEM_CANARY_FILE: .* is larger than 10 MiB$"):
        settings({"BEM_CANARY_WORKFLOW": "w", "BEM_CANARY_FILE": str(document)})


def test_trace_link_substitutes_only_the_placeholder() -> None:
    template = 'https://grafana.example/explore?left={"queries":[{"query":"{trace_id}"}]}'
    s = settings({"BEM_TRACE_URL": template})
    trace_id = "ab" * 16
    assert s.status.trace_link(trace_id) == template.replace("{trace_id}", trace_id)
    assert (
        s.status.trace_link(trace_id)
        == f'https://grafana.example/explore?left={{"queries":[{{"query":"{trace_id}"}}]}}'
    )
    assert settings({}).status.trace_link("ab" * 16) is None

"""Settings: precedence, defaults, and one clear line (exit 2) per invalid value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import SettingsError, load_settings

KEY = "bem-test-key-0123456789"


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

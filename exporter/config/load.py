"""`load_settings`: sources -> the table's rows -> one validated `Settings`.

The rows validate single values; the checks here are the ones between settings (a key or a
key file, TLS certificate and key, SQLite or PostgreSQL, the canary's workflow and document).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace

from exporter.bem.create import input_type_of
from exporter.config import table as t
from exporter.config.model import (
    ApiSettings,
    CanarySettings,
    MetricsSettings,
    PollSettings,
    Secret,
    Settings,
    StateSettings,
    StatusSettings,
    TraceSettings,
    WebhookSettings,
)
from exporter.config.parse import SettingsError
from exporter.config.resolve import PRECEDENCE, Values, load_config_file, resolve
from exporter.traces.genai import opted_in


def load_settings(
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    *,
    require_key: bool = True,
) -> Settings:
    """Merge flags > environment > config file > defaults into one validated `Settings`.

    `flags` uses environment names as keys (the CLI maps its flags).
    """
    file = load_config_file(config_file) if config_file else {}
    values = Values(resolve(flags or {}, os.environ if environ is None else environ, file))
    poll = _poll(values)
    metrics = _metrics(values)
    settings = Settings(
        api=_api(values, require_key),
        poll=poll,
        state=_state(values),
        canary=_canary(values, poll.interval),
        metrics=metrics,
        webhooks=_webhooks(values, metrics),
        status=StatusSettings(trace_url=values.optional(t.TRACE_URL)),
        traces=_traces(values),
        log_level=values.get(t.LOG_LEVEL),
        log_format=values.get(t.LOG_FORMAT),
    )
    return replace(settings, resolved=values.resolved())


def _api(values: Values, require_key: bool) -> ApiSettings:
    return ApiSettings(
        url=values.get(t.API_URL),
        version=values.get(t.API_VERSION),
        key=_api_key(values, require_key),
        workflows=values.optional(t.WORKFLOWS) or (),
        max_concurrency=values.get(t.MAX_CONCURRENCY),
        max_rps=values.get(t.MAX_RPS),
        timeout=values.get(t.API_TIMEOUT),
        max_response_bytes=values.get(t.MAX_RESPONSE_BYTES),
        retry_after_max=values.get(t.RETRY_AFTER_MAX),
    )


def _api_key(values: Values, require_key: bool) -> Secret | None:
    """The key or the key file, whichever comes from the stronger source (the key on a tie)."""
    given = [row for row in (t.API_KEY, t.API_KEY_FILE) if values.is_set(row)]
    if not given:
        if require_key:
            raise SettingsError(
                "BEM_API_KEY: required (or BEM_API_KEY_FILE); try `bem-exporter demo` to run without one"
            )
        return None
    return values.get(min(given, key=lambda row: PRECEDENCE.index(values.raw(row).source)))


def _poll(values: Values) -> PollSettings:
    return PollSettings(
        interval=values.get(t.POLL_INTERVAL),
        lookback=values.get(t.LOOKBACK),
        abandon_after=values.get(t.ABANDON_AFTER),
        state_path=values.get(t.STATE_PATH),
        shutdown_grace=values.get(t.SHUTDOWN_GRACE),
        quality_interval=values.get(t.QUALITY_INTERVAL),
    )


def _state(values: Values) -> StateSettings:
    lease = values.get(t.LEADER_LEASE)
    postgres = values.optional(t.STATE_URL)
    if postgres is None:
        if values.is_set(t.STATE_PASSWORD_FILE):
            raise SettingsError("BEM_STATE_PASSWORD_FILE: has no effect without BEM_STATE_URL")
        return StateSettings(lease=lease)
    if values.raw(t.STATE_PATH).source != "default":
        raise SettingsError("BEM_STATE_URL: set together with BEM_STATE_PATH; choose PostgreSQL or SQLite")
    password = postgres.password or values.optional(t.STATE_PASSWORD_FILE) or values.optional(t.PGPASSWORD)
    return StateSettings(url=postgres.url, password=password, lease=lease)


def _canary(values: Values, poll_interval: float) -> CanarySettings:
    interval, timeout = values.get(t.CANARY_INTERVAL), values.get(t.CANARY_TIMEOUT)
    workflow = values.optional(t.CANARY_WORKFLOW)
    if workflow is None:
        if values.is_set(t.CANARY_FILE):
            raise SettingsError("BEM_CANARY_FILE: has no effect without BEM_CANARY_WORKFLOW")
        return CanarySettings(interval=interval, timeout=timeout)
    if not values.is_set(t.CANARY_FILE):
        raise SettingsError("BEM_CANARY_FILE: required with BEM_CANARY_WORKFLOW (the document the canary submits)")
    if timeout <= poll_interval:
        # The canary's call is seen finishing only by a poll: a shorter timeout judges every run a timeout.
        raise SettingsError(
            f"BEM_CANARY_TIMEOUT: {timeout:g}s must be longer than BEM_POLL_INTERVAL ({poll_interval:g}s)"
        )
    file = (values.raw(t.CANARY_FILE).text or "").strip()
    if input_type_of(file) is None:
        # bem needs the document's `inputType`; the canary takes it from the file's extension.
        raise SettingsError(f"BEM_CANARY_FILE: {file}: the extension names no bem input type (e.g. .pdf, .png, .txt)")
    document = values.get(t.CANARY_FILE)
    return CanarySettings(workflow, file, document, interval, timeout)


def _metrics(values: Values) -> MetricsSettings:
    host, port = values.get(t.LISTEN)
    cert, key = _tls(values)
    return MetricsSettings(
        listen_host=host,
        listen_port=port,
        call_buckets=values.get(t.CALL_BUCKETS),
        function_buckets=values.get(t.FUNCTION_BUCKETS),
        allow_workflows=values.optional(t.METRICS_WORKFLOWS) or (),
        allow_functions=values.optional(t.METRICS_FUNCTIONS) or (),
        max_label_values=values.get(t.METRICS_MAX_LABEL_VALUES),
        max_series_per_metric=values.get(t.MAX_SERIES_PER_METRIC),
        max_scrape_samples=values.get(t.MAX_SCRAPE_SAMPLES),
        basic_auth=values.optional(t.METRICS_BASIC_AUTH_FILE),
        tls_cert_file=cert,
        tls_key_file=key,
    )


def _webhooks(values: Values, metrics: MetricsSettings) -> WebhookSettings:
    """The listener needs a secret, or unsigned deliveries allowed explicitly (never both)."""
    secrets = _webhook_secrets(values)
    allow_unsigned = values.get(t.WEBHOOK_ALLOW_UNSIGNED)
    tolerance = values.get(t.WEBHOOK_TOLERANCE)
    listen = values.optional(t.WEBHOOK_LISTEN)
    if listen is None:
        for row in (t.WEBHOOK_SECRET, t.WEBHOOK_SECRET_FILE):
            if values.is_set(row):
                raise SettingsError(f"{row.env}: has no effect without BEM_WEBHOOK_LISTEN")
        return WebhookSettings(tolerance=tolerance)
    if secrets and allow_unsigned:
        raise SettingsError(
            "BEM_WEBHOOK_ALLOW_UNSIGNED: only without BEM_WEBHOOK_SECRET (a secret means every delivery must be signed)"
        )
    if not secrets and not allow_unsigned:
        raise SettingsError(
            "BEM_WEBHOOK_SECRET: required with BEM_WEBHOOK_LISTEN (or BEM_WEBHOOK_SECRET_FILE; "
            "BEM_WEBHOOK_ALLOW_UNSIGNED=true to accept unsigned deliveries)"
        )
    host, port = listen
    if port == metrics.listen_port and port != 0 and _same_host(host, metrics.listen_host):
        raise SettingsError(
            f"BEM_WEBHOOK_LISTEN: {host}:{port} is BEM_LISTEN's address; the webhook listener needs its own port"
        )
    return WebhookSettings(host, port, secrets, allow_unsigned, tolerance)


def _webhook_secrets(values: Values) -> tuple[Secret, ...]:
    """The secret or the secret file, whichever comes from the stronger source (as the API key)."""
    given = [row for row in (t.WEBHOOK_SECRET, t.WEBHOOK_SECRET_FILE) if values.is_set(row)]
    if not given:
        return ()
    return values.get(min(given, key=lambda row: PRECEDENCE.index(values.raw(row).source)))


def _same_host(first: str, second: str) -> bool:
    wildcard = ("", "0.0.0.0", "::")
    return first == second or first in wildcard or second in wildcard


def _tls(values: Values) -> tuple[str | None, str | None]:
    if values.is_set(t.TLS_CERT_FILE) != values.is_set(t.TLS_KEY_FILE):
        raise SettingsError("BEM_TLS_CERT_FILE: TLS needs both BEM_TLS_CERT_FILE and BEM_TLS_KEY_FILE")
    return values.optional(t.TLS_CERT_FILE), values.optional(t.TLS_KEY_FILE)


def _traces(values: Values) -> TraceSettings:
    protocol = values.get(t.OTLP_PROTOCOL)
    endpoint, configured = _otlp_endpoint(values, protocol)
    resource = values.optional(t.RESOURCE_ATTRIBUTES) or ()
    return TraceSettings(
        exporter=values.get(t.TRACES_EXPORTER),
        endpoint=endpoint,
        endpoint_configured=configured,
        protocol=protocol,
        headers=values.optional(t.OTLP_HEADERS) or (),
        timeout=values.get(t.OTLP_TIMEOUT),
        insecure=values.optional(t.OTLP_INSECURE),
        service_name=values.optional(t.SERVICE_NAME) or dict(resource).get("service.name") or "bem",
        resource_attributes=resource,
        error_messages=values.get(t.EXPORT_ERROR_MESSAGES),
        genai_conventions=_genai(values),
        max_backlog=values.get(t.SPAN_BACKLOG),
        max_request_bytes=values.get(t.OTLP_MAX_REQUEST_BYTES),
    )


def _genai(values: Values) -> bool:
    categories: tuple[str, ...] = values.optional(t.SEMCONV_STABILITY_OPT_IN) or ()
    return opted_in(categories)


def _otlp_endpoint(values: Values, protocol: str) -> tuple[str, bool]:
    """Per the specification, the signal-specific variable is used as is, and the generic one
    gets `/v1/traces` appended for http/protobuf."""
    if (specific := values.optional(t.OTLP_TRACES_ENDPOINT)) is not None:
        return specific, True
    if (generic := values.optional(t.OTLP_ENDPOINT)) is not None:
        return (generic if protocol == "grpc" else generic.rstrip("/") + "/v1/traces"), True
    return ("http://localhost:4317" if protocol == "grpc" else "http://localhost:4318/v1/traces"), False

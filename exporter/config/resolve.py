"""From sources to values: precedence, provenance, and the redacted view of what was resolved.

Precedence: flag > environment > config file > default. A source that gives a setting as
blank resets it to its default (an empty `BEM_WORKFLOWS=` means all workflows, whatever the
config file says).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from exporter.config.model import ResolvedSetting, Source
from exporter.config.parse import SettingsError, shown_url
from exporter.config.table import BY_KEY, ROWS, Row, Setting
from exporter.redact import MASK

log = logging.getLogger("exporter.config")

T = TypeVar("T")
PRECEDENCE: tuple[Source, ...] = ("flag", "environment", "file", "default")


@dataclass(frozen=True)
class Raw:
    """A setting's raw text (None: unset) and the source and name that gave it."""

    name: str
    text: str | None
    source: Source


def load_config_file(path: str) -> dict[str, str]:
    """A TOML file of the table's keys, returned under their environment names."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise SettingsError(f"--config: cannot read {path!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"--config: {path!r} is not valid TOML ({error})") from None
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in BY_KEY:
            raise SettingsError(f"--config: unknown key {key!r} in {path!r}")
        values[BY_KEY[key].env] = _toml_text(path, key, value)
    return values


def _toml_text(path: str, key: str, value: object) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise SettingsError(f"--config: key {key!r} in {path!r} must be a string, number, boolean or list")


def resolve(flags: Mapping[str, str], environ: Mapping[str, str], file: Mapping[str, str]) -> dict[str, Raw]:
    """Every row's raw value from the first source that gives it."""
    return {row.env: _resolve_row(row, flags, environ, file) for row in ROWS}


def _resolve_row(row: Row, flags: Mapping[str, str], environ: Mapping[str, str], file: Mapping[str, str]) -> Raw:
    if row.env in flags:
        return _given(row, row.env, flags[row.env], "flag")
    present = [name for name in row.names if name in environ]
    if present:
        chosen = next((name for name in present if environ[name].strip()), present[0])
        return _given(row, chosen, environ[chosen], "environment")
    if row.env in file:
        return _given(row, row.env, file[row.env], "file")
    return Raw(row.env, row.default, "default")


def _given(row: Row, name: str, text: str, source: Source) -> Raw:
    """A blank value unsets the setting at its level: lower levels are not consulted."""
    return Raw(name, text, source) if text.strip() else Raw(row.env, row.default, "default")


class Values:
    """Typed access to the resolved raw values: parsing happens here, once per read."""

    def __init__(self, raws: Mapping[str, Raw]) -> None:
        self._raws = dict(raws)

    def raw(self, row: Row) -> Raw:
        return self._raws[row.env]

    def is_set(self, row: Row) -> bool:
        return self._raws[row.env].text is not None

    def get(self, setting: Setting[T]) -> T:
        value = self.optional(setting)
        if value is None:
            raise SettingsError(f"{setting.env}: required")
        return value

    def optional(self, setting: Setting[T]) -> T | None:
        raw = self._raws[setting.env]
        if raw.text is None:
            return None
        try:
            return setting.parse(raw.name, raw.text)
        except SettingsError as error:
            if not setting.spec:
                raise
            return self._fall_back(setting, error)

    def _fall_back(self, setting: Setting[T], error: SettingsError) -> T | None:
        """Per the OpenTelemetry specification: warn, and use the default."""
        log.warning("%s; using the default", error)
        self._raws[setting.env] = Raw(setting.env, setting.default, "default")
        return None if setting.default is None else setting.parse(setting.env, setting.default)

    def resolved(self) -> tuple[ResolvedSetting, ...]:
        return tuple(_shown(row, self._raws[row.env]) for row in ROWS)


def _shown(row: Row, raw: Raw) -> ResolvedSetting:
    return ResolvedSetting(raw.name, "" if raw.text is None else _redacted(row, raw.text.strip()), raw.source)


def _redacted(row: Row, text: str) -> str:
    if row.shown == "secret":
        return MASK
    if row.shown == "url":
        return shown_url(text)
    if row.shown == "pairs":
        keys = (item.partition("=")[0].strip() for item in text.split(","))
        return ",".join(f"{key}={MASK}" for key in keys if key)
    return text

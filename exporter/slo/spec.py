"""SLOs from the command line's flags or from a TOML file, validated.

Every refusal is a `SettingsError` of one line naming the value (the CLI exits 2 with it).

    service = "bem"             # sloth_service (default bem)
    period = "30d"              # or "28d": Sloth's google windows (default 30d)
    call_buckets = "1,2.5,..."  # the exporter's BEM_CALL_BUCKETS, if changed there

    [[slo]]
    name = "invoice-availability"
    workflow = "invoice-intake" # none: all workflows
    objective = 99.5

    [[slo]]
    name = "invoice-latency"
    workflow = "invoice-intake"
    latency = "2m"              # a latency SLO: calls within 2 minutes
    objective = 95
    labels = { team = "documents" }

    [[slo]]
    name = "archive-canary"
    workflow = "archive-export" # the workflow BEM_CANARY_WORKFLOW calls
    source = "canary"           # availability of the canary's runs, not of all calls
    objective = 99

A `[windows]` table replaces `period` with custom windows in the shape of Sloth's
`AlertWindows` (`period`, then `page_quick`, `page_slow`, `ticket_quick`, `ticket_slow`, each
`{ budget_percent = 2, short = "5m", long = "1h" }`), for experiments and tests.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar, cast, get_args

from exporter.config import SettingsError, parse_duration
from exporter.config.table import CALL_BUCKETS
from exporter.slo.model import SLO, SloSet, Source
from exporter.slo.rules import number
from exporter.slo.windows import PERIODS, AlertWindows, Window, prom_duration

T = TypeVar("T")

DEFAULT_OBJECTIVE = "99"
"""The availability objective without `--objective` (docs/slo.md): the shipped SLO's."""
DEFAULT_SERVICE = "bem"
NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]$")
"""Sloth's names (`pkg/common/conventions`): alphanumerics at both ends, `.`, `_`, `-` between."""
NAME_START = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
"""What may begin a name that `-availability` or `-latency-30s` completes."""
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESERVED_LABELS = ("severity", "workflow_name")
FILE_KEYS = ("service", "period", "call_buckets", "windows", "slo")
SLO_KEYS = ("name", "objective", "workflow", "latency", "labels", "source")
SOURCES: tuple[Source, ...] = get_args(Source)
ALERT_WINDOWS = ("page_quick", "page_slow", "ticket_quick", "ticket_slow")
WINDOW_KEYS = ("budget_percent", "short", "long")


# --- values ---------------------------------------------------------------------------------------


def objective(where: str, raw: object) -> Decimal:
    """A percentage strictly between 0 and 100: `99.9`, `"99.9"`, `"99.9%"`."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise SettingsError(f"{where}: {raw!r} is not a percentage (e.g. 99.9)")
    try:
        value = Decimal(str(raw).strip().removesuffix("%"))
    except InvalidOperation:
        raise SettingsError(f"{where}: {raw!r} is not a percentage (e.g. 99.9)") from None
    if not value.is_finite() or not 0 < value < 100:
        raise SettingsError(f"{where}: {raw!r} is not a percentage between 0 and 100, both excluded (e.g. 99.9)")
    return value


def name(where: str, raw: object) -> str:
    if not isinstance(raw, str) or not NAME.match(raw):
        raise SettingsError(
            f"{where}: {raw!r} is not a name (letters, digits, '.', '_', '-', starting and ending "
            "with a letter or digit)"
        )
    return raw


def text(where: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise SettingsError(f"{where}: {raw!r} is not a non-empty string")
    return raw


def threshold(where: str, raw: str, buckets: Sequence[float]) -> float:
    """A latency threshold: a bucket boundary of `bem_call_duration_seconds`, or a refusal that
    names the nearest boundaries and the setting that would add it."""
    seconds = parse_duration(where, raw)
    for bound in buckets:
        if math.isclose(bound, seconds, rel_tol=1e-9):
            return bound
    nearest = [b for b in buckets if b < seconds][-1:] + [b for b in buckets if b > seconds][:1]
    raise SettingsError(
        f"{where}: {raw} ({seconds:g} s) is not a bucket boundary of bem_call_duration_seconds; the nearest are "
        f"{' and '.join(f'{b:g} s' for b in nearest)}; to use {seconds:g} s, add {seconds:g} to "
        f"{CALL_BUCKETS.env} (the exporter's, and {CALL_BUCKETS.flag_name} here)"
    )


def call_buckets(flag: str | None, in_file: object = None) -> tuple[float, ...]:
    """The bounds of `bem_call_duration_seconds`: flag > environment > file > the exporter's default."""
    if flag is not None:
        return CALL_BUCKETS.parse(CALL_BUCKETS.flag_name or "", flag)
    if (env := os.environ.get(CALL_BUCKETS.env)) is not None:
        return CALL_BUCKETS.parse(CALL_BUCKETS.env, env)
    if in_file is not None:
        return CALL_BUCKETS.parse("call_buckets", text("call_buckets", in_file))
    assert CALL_BUCKETS.default is not None
    return CALL_BUCKETS.parse(CALL_BUCKETS.env, CALL_BUCKETS.default)


def period(where: str, raw: object) -> AlertWindows:
    if raw not in PERIODS:
        raise SettingsError(f"{where}: {raw!r} is not a supported SLO period ({' or '.join(PERIODS)})")
    return PERIODS[str(raw)]


def milliseconds(where: str, raw: object) -> int:
    return round(parse_duration(where, text(where, raw)) * 1000)


# --- from flags -----------------------------------------------------------------------------------


def from_flags(
    objective_flag: str | None,
    workflows: Sequence[str],
    latencies: Sequence[str],
    period_flag: str,
    buckets: str | None,
) -> SloSet:
    """`--objective`, `--workflow` (repeatable), `--latency DURATION:PERCENT` (repeatable),
    `--period`: an availability SLO (and one per latency) per workflow, or over all of them."""
    windows = period("--period", period_flag)
    availability = objective("--objective", DEFAULT_OBJECTIVE if objective_flag is None else objective_flag)
    bounds = call_buckets(buckets) if latencies else ()
    slos: list[SLO] = []
    scopes: list[str | None] = [*workflows] or [None]
    for workflow in scopes:
        base = "calls" if workflow is None else workflow_base(workflow)
        slos.append(SLO(f"{base}-availability", "availability", availability, workflow))
        for latency in latencies:
            seconds, percent = latency_flag(latency, bounds)
            slos.append(SLO(f"{base}-latency-{threshold_name(seconds)}", "latency", percent, workflow, seconds))
    return checked(SloSet(DEFAULT_SERVICE, windows, tuple(slos)), "--workflow")


def workflow_base(workflow: str) -> str:
    if not NAME_START.match(workflow):
        raise SettingsError(
            f"--workflow: {workflow!r} cannot be part of an SLO name (letters, digits, '.', '_', '-'); "
            "name its SLO in a --config file"
        )
    return workflow


def threshold_name(seconds: float) -> str:
    """`30s`, `5m`, `1h` (Prometheus' way), or `2.5s` for a fraction of a second."""
    return prom_duration(int(seconds * 1000)) if seconds == int(seconds) else f"{seconds:g}s"


def latency_flag(raw: str, buckets: Sequence[float]) -> tuple[float, Decimal]:
    duration, colon, percent = raw.rpartition(":")
    if not colon or not duration:
        raise SettingsError(f"--latency: {raw!r} is not DURATION:PERCENT (e.g. 2m:95)")
    return threshold("--latency", duration, buckets), objective("--latency", percent)


# --- from a file ----------------------------------------------------------------------------------


def from_file(path: str, buckets: str | None) -> SloSet:
    document = read_toml(path)
    known(path, document, FILE_KEYS)
    if "windows" in document and "period" in document:
        raise SettingsError(f"{path}: give either period or [windows] (which has its own period), not both")
    if "windows" in document:
        windows = custom_windows(f"{path}: [windows]", document["windows"])
    else:
        windows = period(f"{path}: period", document.get("period", "30d"))
    service = name(f"{path}: service", document.get("service", DEFAULT_SERVICE))
    entries = document.get("slo")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise SettingsError(f"{path}: no [[slo]] tables")
    bounds = call_buckets(buckets, document.get("call_buckets"))
    slos = tuple(file_slo(f"{path}: [[slo]] {index}", entry, bounds) for index, entry in enumerate(entries, 1))
    return checked(SloSet(service, windows, slos), path)


def read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"--config: cannot read {path!r}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"--config: {path!r} is not valid TOML: {error}") from None


def known(where: str, table: Mapping[str, object], keys: Sequence[str]) -> None:
    for key in table:
        if key not in keys:
            raise SettingsError(f"{where}: unknown key {key!r} (known: {', '.join(keys)})")


def file_slo(where: str, entry: dict[str, Any], buckets: Sequence[float]) -> SLO:
    known(where, entry, SLO_KEYS)
    for key in ("name", "objective"):
        if key not in entry:
            raise SettingsError(f"{where}: {key} is missing")
    slo_name = name(f"{where}: name", entry["name"])
    where = f"{where} ({slo_name})"
    workflow = optional(entry, "workflow", lambda raw: text(f"{where}: workflow", raw))
    latency = optional(
        entry, "latency", lambda raw: threshold(f"{where}: latency", text(f"{where}: latency", raw), buckets)
    )
    source = entry.get("source", "calls")
    if source not in SOURCES or (source == "canary" and latency is not None):
        raise SettingsError(f"{where}: source {source!r} is not calls or (for an availability SLO) canary")
    return SLO(
        slo_name,
        "availability" if latency is None else "latency",
        objective(f"{where}: objective", entry["objective"]),
        workflow,
        latency,
        extra_labels(f"{where}: labels", entry.get("labels", {})),
        cast(Source, source),  # one of SOURCES, checked above
    )


def optional(entry: Mapping[str, object], key: str, parse: Callable[[object], T]) -> T | None:
    return parse(entry[key]) if key in entry else None


def extra_labels(where: str, raw: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: not a table of label names and values")
    for label, value in raw.items():
        if not LABEL.match(label) or label.startswith(("__", "sloth_")) or label in RESERVED_LABELS:
            raise SettingsError(f"{where}: {label!r} is not a label name an SLO may set")
        text(f"{where}: {label}", value)
    return tuple(sorted(raw.items()))


def custom_windows(where: str, raw: object) -> AlertWindows:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: not a table")
    known(where, raw, ("period", *ALERT_WINDOWS))
    for key in ("period", *ALERT_WINDOWS):
        if key not in raw:
            raise SettingsError(f"{where}: {key} is missing")
    period_ms = milliseconds(f"{where}: period", raw["period"])
    windows = [alert_window(f"{where}: {key}", raw[key], period_ms) for key in ALERT_WINDOWS]
    return AlertWindows("custom", period_ms, *windows)


def alert_window(where: str, raw: object, period_ms: int) -> Window:
    if not isinstance(raw, dict):
        raise SettingsError(f'{where}: not a table like {{ budget_percent = 2, short = "5m", long = "1h" }}')
    known(where, raw, WINDOW_KEYS)
    short, long = milliseconds(f"{where}: short", raw.get("short")), milliseconds(f"{where}: long", raw.get("long"))
    if not short < long < period_ms:
        got = f"{prom_duration(short)}, {prom_duration(long)}"
        raise SettingsError(f"{where}: needs short < long < the period, got {got}")
    percent = raw.get("budget_percent")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100:
        raise SettingsError(f"{where}: budget_percent {percent!r} is not a percentage above 0, at most 100")
    return Window(Fraction(str(percent)), short, long)


# --- the set as a whole ---------------------------------------------------------------------------


def checked(slos: SloSet, where: str) -> SloSet:
    seen: set[str] = set()
    for slo in slos.slos:
        if slo.name in seen:
            raise SettingsError(f"{where}: two SLOs named {slo.name!r}")
        seen.add(slo.name)
    return slos


def unreachable(slos: SloSet) -> list[str]:
    """Alert windows that can never fire: their factor times the error budget is 100% or more
    (an objective of 90% leaves 10%, and 14.4 x 10% of calls cannot fail)."""
    found = []
    for slo in slos.slos:
        for severity, quick, slow in slos.windows.alerts():
            for window in (quick, slow):
                factor = slos.windows.factor(window)
                if factor * Fraction(slo.error_budget) >= 1:
                    found.append(
                        f"SLO {slo.name}: with an objective of {number(slo.objective)}% the {severity} alert's "
                        f"{prom_duration(window.long_ms)} window (burn rate {number(factor)}) can never fire"
                    )
    return found

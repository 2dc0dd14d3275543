"""Prometheus rule groups for SLOs, in Sloth's shape and names.

Per SLO three groups, named as Sloth names them (`sloth-slo-sli-recordings-<id>`,
`sloth-slo-meta-recordings-<id>`, `sloth-slo-alerts-<id>`), with Sloth's recording rules
(`slo:sli_error:ratio_rate<window>`, `slo:objective:ratio`, `slo:error_budget:ratio`,
`slo:time_period:days`, `slo:current_burn_rate:ratio`, `slo:period_burn_rate:ratio`,
`slo:period_error_budget_remaining:ratio`, `sloth_slo_info`), labels (`sloth_id`,
`sloth_service`, `sloth_slo`, `sloth_window`) and alert expressions, so that Sloth's Grafana
dashboards and anything else written for Sloth's rules read them unchanged.

One difference, on purpose: Sloth computes each window's ratio from the raw counters and the
period's ratio as the average of the 5-minute ratios. Here the shortest window's error and
total events per second are recorded once (`slo:sli_error_events:rate<w>`,
`slo:sli_total_events:rate<w>`, HA-safe, see `sli`) and every longer window's ratio is
`sum_over_time(errors) / sum_over_time(total)` of those. That weights each moment by its
traffic (a night of a few calls does not count as much as a busy batch, which an average of
ratios would do), stays right across replica restarts and rollouts (a raw `rate()` over days,
deduplicated with `max` across replicas, would see only the longest-lived pod), and reads a
few thousand recorded samples instead of days of raw counters.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

from exporter.slo import sli
from exporter.slo.model import ALERT_NAMES, SLO, SloSet
from exporter.slo.windows import MS_PER, Severity, Window, prom_duration

Rule = dict[str, Any]
Group = dict[str, Any]

ERROR_EVENTS = "slo:sli_error_events:rate"
TOTAL_EVENTS = "slo:sli_total_events:rate"
SEVERITY_LABEL: dict[Severity, str] = {"page": "critical", "ticket": "warning"}
"""The project's `severity` of each Sloth severity (docs/alerts.md)."""


def number(value: Decimal | Fraction) -> str:
    """A ratio or factor as PromQL reads it: `0.999`, `14.4`, `0.9333333333333333`."""
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return repr(float(value)) if value.denominator != 1 else str(value.numerator)


def rule_groups(slos: SloSet) -> list[Group]:
    groups: list[Group] = []
    for slo in slos.slos:
        groups += [sli_group(slos, slo), meta_group(slos, slo), alert_group(slos, slo)]
    return groups


# --- shared pieces --------------------------------------------------------------------------------


def ids(slos: SloSet, slo: SLO) -> dict[str, str]:
    return {"sloth_id": slos.sloth_id(slo), "sloth_service": slos.service, "sloth_slo": slo.name}


def labels(slos: SloSet, slo: SLO, **more: str) -> dict[str, str]:
    return dict(sorted({**slo.rule_labels(), **ids(slos, slo), **more}.items()))


def ids_filter(slos: SloSet, slo: SLO) -> str:
    """Sloth's filter on an SLO's ids: `{sloth_id="...", sloth_service="...", sloth_slo="..."}`."""
    return "{" + ", ".join(f"{name}={sli.promql_string(value)}" for name, value in ids(slos, slo).items()) + "}"


def record(name: str, expr: str, rule_labels: dict[str, str]) -> Rule:
    return {"record": name, "expr": expr, "labels": rule_labels}


# --- the SLI --------------------------------------------------------------------------------------


def sli_group(slos: SloSet, slo: SLO) -> Group:
    windows = [*slos.windows.sli_windows(), slos.windows.period_ms]
    base = prom_duration(windows[0])
    errors, total = sli.events(slo, base)
    rules = [
        record(ERROR_EVENTS + base, errors + "\n", labels(slos, slo, sloth_window=base)),
        record(TOTAL_EVENTS + base, total + "\n", labels(slos, slo, sloth_window=base)),
    ]
    rules += [ratio_rule(slos, slo, base, prom_duration(ms)) for ms in windows]
    return {"name": f"sloth-slo-sli-recordings-{slos.sloth_id(slo)}", "rules": rules}


def ratio_rule(slos: SloSet, slo: SLO, base: str, window: str) -> Rule:
    """`slo:sli_error:ratio_rate<window>`: absent, not NaN, while the window saw no call."""
    where = ids_filter(slos, slo)
    errors, total = f"{ERROR_EVENTS}{base}{where}", f"{TOTAL_EVENTS}{base}{where}"
    if window == base:
        expr = f"{errors}\n/\n({total} > 0)\n"
    else:
        expr = f"sum_over_time({errors}[{window}])\n/\n(sum_over_time({total}[{window}]) > 0)\n"
    return record(f"slo:sli_error:ratio_rate{window}", expr, labels(slos, slo, sloth_window=window))


# --- metadata, as Sloth records it (its dashboards read these) ------------------------------------


def meta_group(slos: SloSet, slo: SLO) -> Group:
    where = ids_filter(slos, slo)
    base = prom_duration(slos.windows.sli_windows()[0])
    period = prom_duration(slos.windows.period_ms)
    by_budget = f"\n/ on(sloth_id, sloth_slo, sloth_service) group_left\nslo:error_budget:ratio{where}\n"
    own = labels(slos, slo)
    rules = [
        record("slo:objective:ratio", f"vector({number(slo.ratio)})", own),
        record("slo:error_budget:ratio", f"vector({number(slo.error_budget)})", own),
        record("slo:time_period:days", f"vector({number(Fraction(slos.windows.period_ms, MS_PER['d']))})", own),
        record("slo:current_burn_rate:ratio", f"slo:sli_error:ratio_rate{base}{where}{by_budget}", own),
        record("slo:period_burn_rate:ratio", f"slo:sli_error:ratio_rate{period}{where}{by_budget}", own),
        record("slo:period_error_budget_remaining:ratio", f"1 - slo:period_burn_rate:ratio{where}", own),
        record("sloth_slo_info", "vector(1)", info_labels(slos, slo)),
    ]
    return {"name": f"sloth-slo-meta-recordings-{slos.sloth_id(slo)}", "rules": rules}


def info_labels(slos: SloSet, slo: SLO) -> dict[str, str]:
    return labels(
        slos,
        slo,
        sloth_mode="cli-gen-prom",
        sloth_objective=number(slo.objective),
        sloth_spec="prometheus/v1",
        sloth_version="bem-exporter",
    )


# --- alerts ---------------------------------------------------------------------------------------


def alert_group(slos: SloSet, slo: SLO) -> Group:
    rules = [alert(slos, slo, severity, quick, slow) for severity, quick, slow in slos.windows.alerts()]
    return {"name": f"sloth-slo-alerts-{slos.sloth_id(slo)}", "rules": rules}


def alert(slos: SloSet, slo: SLO, severity: Severity, quick: Window, slow: Window) -> Rule:
    name = ALERT_NAMES[slo.kind]
    expr = f"(\n{both_windows(slos, slo, quick)}\n)\nor\n(\n{both_windows(slos, slo, slow)}\n)\n"
    return {
        "alert": name,
        "expr": expr,
        # The ids are the expression's labels anyway; as static labels they tell apart the
        # alerts of several SLOs of one kind (promtool's duplicate-rule lint).
        "labels": {**ids(slos, slo), "severity": SEVERITY_LABEL[severity], "sloth_severity": severity},
        "annotations": {
            "summary": SUMMARIES[slo.kind][severity],
            "description": description(slos, slo, quick, slow),
            "runbook_url": f"docs/alerts.md#{name.lower()}",
        },
    }


def both_windows(slos: SloSet, slo: SLO, window: Window) -> str:
    """Sloth's condition: the short and the long window both burn faster than the factor."""
    threshold = f"({number(slos.windows.factor(window))} * {number(slo.error_budget)})"
    where = ids_filter(slos, slo)
    lines = [
        f"    max(slo:sli_error:ratio_rate{prom_duration(ms)}{where} > {threshold}) without (sloth_window)"
        for ms in (window.short_ms, window.long_ms)
    ]
    return "\n    and\n".join(lines)


SUMMARIES: dict[str, dict[Severity, str]] = {
    "availability": {
        "page": "bem calls fail fast enough to spend an SLO's error budget within days.",
        "ticket": "bem calls fail fast enough to spend an SLO's error budget before its period ends.",
    },
    "latency": {
        "page": "bem calls are slow often enough to spend an SLO's error budget within days.",
        "ticket": "bem calls are slow often enough to spend an SLO's error budget before its period ends.",
    },
}


def period_text(ms: int) -> str:
    """`30d`, `28d` (not Prometheus' `4w`): how people name SLO periods."""
    days, rest = divmod(ms, MS_PER["d"])
    return f"{days}d" if days and not rest else prom_duration(ms)


def description(slos: SloSet, slo: SLO, quick: Window, slow: Window) -> str:
    bad = "failed" if slo.kind == "availability" else f"took longer than {slo.threshold:g} s"
    scope = f"workflow {slo.workflow}" if slo.workflow is not None else "all workflows"
    calls = "finished calls"
    if slo.source == "canary":
        calls, bad = "canary's calls", "failed or timed out"
    burns = " or ".join(
        f"{number(slos.windows.factor(w))}x over {prom_duration(w.long_ms)} (and {prom_duration(w.short_ms)})"
        for w in (quick, slow)
    )
    return (
        f"{{{{ $value | humanizePercentage }}}} of the {calls} of SLO {{{{ $labels.sloth_slo }}}} ({scope}) "
        f"{bad} in the alert's short window. The objective is {number(slo.objective)}% over "
        f"{period_text(slos.windows.period_ms)}, so the error budget is {number(slo.error_budget * 100)}% of calls; "
        f"it burns faster than {burns}."
    )

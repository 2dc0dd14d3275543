"""The SLIs in PromQL: error and total events per second over a window, from the exporter's
own counters.

Replicas sharing their state serve the same call series, told apart only by `instance` (and
`pod`): every rate is taken per replica first and then the max over the replicas, before
summing, as in `prometheus/rules/bem-recording.yaml` (whose header says why), so two replicas
never double a ratio and the death of one loses no increment.

A canary SLI counts the synthetic canary's judged runs (`success`, `failure`, `timeout`; a
create request that failed, `submit_error`, is the exporter's or the key's problem as often as
bem's, and BemApiErrors covers it), the bad ones being `failure` and `timeout`.

The error side of an availability SLI falls back to 0 (`or vector(0)`, as Pyrra does) so that
an SLO whose calls all completed still has an error ratio of 0 rather than none. The total side
does not: without a finished call there is no ratio, hence no alert and no division by zero.
"""

from __future__ import annotations

import json

from exporter.metrics.store import le_labels
from exporter.slo.model import SLO

CALLS = "bem_calls_total"
DURATION = "bem_call_duration_seconds"
CANARY_RUNS = "bem_canary_runs_total"


def promql_string(value: str) -> str:
    """A PromQL string literal (JSON's escapes are a subset of Go's, which PromQL uses)."""
    return json.dumps(value, ensure_ascii=False)


def selector(metric: str, matchers: dict[str, str]) -> str:
    """`metric{name="value",...}`; a name ending in `~` matches its value as a regular expression."""
    inside = ",".join(
        f"{name[:-1]}=~{promql_string(value)}" if name.endswith("~") else f"{name}={promql_string(value)}"
        for name, value in matchers.items()
    )
    return f"{metric}{{{inside}}}" if inside else metric


def ha_rate(metric: str, matchers: dict[str, str], window: str) -> str:
    """Events per second over `window`, each replica's rate taken once."""
    return f"sum(max without (instance, pod) (rate({selector(metric, matchers)}[{window}])))"


def le_label(threshold: float) -> str:
    """The `le` value of the bucket bounded by `threshold`, as the exporter writes it (`30.0`)."""
    return le_labels([threshold])[0]


def events(slo: SLO, window: str) -> tuple[str, str]:
    """(error events, total events) per second over `window`."""
    where = {"workflow_name": slo.workflow} if slo.workflow is not None else {}
    if slo.source == "canary":
        total = ha_rate(CANARY_RUNS, {**where, "result~": "success|failure|timeout"}, window)
        return f"{ha_rate(CANARY_RUNS, {**where, 'result~': 'failure|timeout'}, window)} or vector(0)", total
    if slo.kind == "availability":
        total = ha_rate(CALLS, where, window)
        return f"{ha_rate(CALLS, {**where, 'status': 'failed'}, window)} or vector(0)", total
    assert slo.threshold is not None, "a latency SLO has a threshold"
    total = ha_rate(f"{DURATION}_count", where, window)
    within = ha_rate(f"{DURATION}_bucket", {**where, "le": le_label(slo.threshold)}, window)
    return f"{total}\n-\n{within}", total

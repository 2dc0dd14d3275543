"""What an SLO is here: an objective for one kind of SLI, over one workflow or all of them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from exporter.slo.windows import AlertWindows

SliKind = Literal["availability", "latency"]
"""availability: the share of finished calls that completed; latency: the share of finished
calls (completed or failed) whose duration is within a threshold."""

Source = Literal["calls", "canary"]
"""What an availability SLI counts: every finished call, or the synthetic canary's runs (the
SLI of a workflow with too few calls of its own to judge, docs/slo.md)."""

Format = Literal["rules", "prometheusrule"]
FORMATS: tuple[Format, ...] = ("rules", "prometheusrule")
"""What `slo-rules` prints: a Prometheus rule file, or a Kubernetes PrometheusRule."""

ALERT_NAMES: dict[SliKind, str] = {"availability": "BemAvailabilitySLO", "latency": "BemLatencySLO"}
"""The alert of each kind (DESIGN.md 1.2), in two severities told apart by `sloth_severity`."""


@dataclass(frozen=True)
class SLO:
    name: str
    """Sloth's SLO name (`sloth_slo`): letters, digits, `.`, `_`, `-`."""
    kind: SliKind
    objective: Decimal
    """Percent of good events, 0 < objective < 100 (e.g. 99.9)."""
    workflow: str | None = None
    """The workflow it is about; None: all workflows together."""
    threshold: float | None = None
    """Latency SLOs: seconds, a bucket boundary of `bem_call_duration_seconds`."""
    labels: tuple[tuple[str, str], ...] = ()
    """Further labels of every rule (and so of the alerts), e.g. a team to route to."""
    source: Source = "calls"

    @property
    def ratio(self) -> Decimal:
        return self.objective / 100

    @property
    def error_budget(self) -> Decimal:
        return 1 - self.ratio

    def rule_labels(self) -> dict[str, str]:
        """The labels the SLO adds to its rules besides Sloth's ids."""
        labels = dict(self.labels)
        if self.workflow is not None:
            labels["workflow_name"] = self.workflow
        return labels


@dataclass(frozen=True)
class SloSet:
    """The SLOs of one rule file: Sloth's service, the alert windows, the SLOs."""

    service: str
    windows: AlertWindows
    slos: tuple[SLO, ...]

    def sloth_id(self, slo: SLO) -> str:
        return f"{self.service}-{slo.name}"

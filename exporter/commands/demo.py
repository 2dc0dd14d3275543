"""`bem-exporter demo`: the simulator on loopback and the exporter against it."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources

from exporter.app import bem_client
from exporter.bem.subscriptions import create_subscription, list_functions, list_subscriptions
from exporter.commands.run import run
from exporter.commands.subscribe import plan
from exporter.config import ApiSettings, CanarySettings, PollSettings, Secret, Settings, WebhookSettings
from exporter.pipeline import FinishedCall, SpanExporter
from exporter.traces.tree import render_tree
from exporter.webhooks.listener import PATH as WEBHOOK_PATH

TREES_PER_BATCH = 2
"""Trees printed per export batch: a sample a terminal can follow, not every call."""


class TreePrinter:
    """The demo's span exporter when no OTLP endpoint is set: a sample of calls as trees on stdout."""

    def __init__(self, per_batch: int = TREES_PER_BATCH) -> None:
        self._per_batch = per_batch

    def export(self, batch: Sequence[FinishedCall]) -> int | None:
        for item in batch[: self._per_batch]:
            print(render_tree(item), flush=True)
        return sum(len(item.trace.function_calls) + 1 for item in batch)

    def shutdown(self) -> None:
        pass


async def demo(settings: Settings, simulator_rate: float, prefill: int) -> int:
    from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer, Webhooks

    settings = replace(settings, webhooks=demo_webhooks(settings))
    signing = settings.webhooks.secrets[0].get() if settings.webhooks.secrets else None
    config = SimulatorConfig(
        seed=7, arrival_rate=simulator_rate, prefill=prefill, history=1800.0, webhooks=Webhooks(secret=signing)
    )
    simulator = Simulator(config)
    simulator.config.quality.start_drift(DEMO_DRIFT_FUNCTION, DEMO_DRIFT_PER_HOUR, time.time())
    with SimulatorServer(simulator) as sim_url:
        settings = replace(settings, api=replace(settings.api, url=sim_url, key=_sim_key()))
        if not settings.canary.enabled:
            settings = replace(settings, canary=demo_canary())
        settings = demo_quality(settings)
        spans: SpanExporter | None = None
        if settings.traces.exporter == "otlp" and not settings.traces.endpoint_configured:
            spans = TreePrinter()
        host = settings.metrics.listen_host
        shown = _shown(host)
        hook = f"http://{_shown(settings.webhooks.listen_host or host)}:{settings.webhooks.listen_port}{WEBHOOK_PATH}"
        subscribed = await subscribe_simulator(settings.api, hook)
        print(
            f"bem-exporter demo: simulated bem API at {sim_url}\n"
            f"  metrics:   http://{shown}:{settings.metrics.listen_port}/metrics\n"
            f"  readiness: http://{shown}:{settings.metrics.listen_port}/readyz\n"
            f"  status:    http://{shown}:{settings.metrics.listen_port}/status\n"
            f"  webhooks:  {hook} ({subscribed} subscriptions of the simulated bem deliver there, signed)\n"
            + (
                f"  traces:    a sample printed below as trees ({TREES_PER_BATCH} per batch of finished calls; "
                "every call is counted); set OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 "
                "to send all of them to Tempo, Jaeger or a Collector\n"
                if spans is not None
                else f"  traces:    {settings.traces.protocol} {settings.traces.endpoint}\n"
            )
            + f"  canary:    a call of {settings.canary.workflow} every {settings.canary.interval:g}s\n"
            + _quality_line(settings)
            + "  stop with Ctrl-C",
            flush=True,
        )
        return await run(settings, spans)


def demo_webhooks(settings: Settings) -> WebhookSettings:
    """The demo runs with webhooks on: the listener the settings name, or one beside the
    metrics listener (its port plus one, or any free one) with the simulator's secret."""
    from exporter.simulator import DEMO_WEBHOOK_SECRET

    if settings.webhooks.enabled:
        return settings.webhooks
    host, port = settings.metrics.listen_host, settings.metrics.listen_port
    chosen = _free_port(host, port + 1 if port else 0)
    return replace(settings.webhooks, listen_host=host, listen_port=chosen, secrets=(Secret(DEMO_WEBHOOK_SECRET),))


async def subscribe_simulator(api: ApiSettings, url: str) -> int:
    """What `bem-exporter subscribe --url URL --apply` does, quietly: every function's output
    and errors delivered to `url`; how many subscriptions deliver there."""
    async with bem_client(api) as client:
        functions = await list_functions(client, api.workflows)
        existing = await list_subscriptions(client)
        wanted = plan(functions.records, existing.records, url)
        for missing in wanted.missing:
            await create_subscription(client, missing.name, missing.type, missing.function.name, url)
    return len(wanted.missing) + len(wanted.present)


def _free_port(host: str, preferred: int) -> int:
    """`preferred` if it can be bound on `host` now, else a port the system picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise OSError(f"BEM_WEBHOOK_LISTEN: no port free on {host}")


def _shown(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


DEMO_DRIFT_FUNCTION = "extract-invoice"
DEMO_DRIFT_PER_HOUR = 0.6
"""The demo's quiet failure: this function's accuracy falls by 0.01 a minute, so that the
Quality dashboard shows it sliding and BemFunctionAccuracyDropped fires within half an hour."""
DEMO_QUALITY_INTERVAL = 30.0
"""Quality reads every 30 s in the demo (unless set), so that the drift shows within minutes."""


def demo_quality(settings: Settings) -> Settings:
    """Read the simulated quality metrics often, unless the user chose an interval (or off)."""
    if settings.poll.quality_interval != PollSettings().quality_interval:
        return settings
    return replace(settings, poll=replace(settings.poll, quality_interval=DEMO_QUALITY_INTERVAL))


def _quality_line(settings: Settings) -> str:
    interval = settings.poll.quality_interval
    if not interval:
        return "  quality:   off (BEM_QUALITY_INTERVAL=0)\n"
    return (
        f"  quality:   bem's function metrics read every {interval:g}s; {DEMO_DRIFT_FUNCTION}'s accuracy "
        f"drifts down {DEMO_DRIFT_PER_HOUR * 100 / 60:g} point a minute (bem_function_accuracy_ratio)\n"
    )


def _sim_key() -> Secret | None:
    from exporter.simulator import SimulatorConfig

    key = SimulatorConfig().api_key
    return Secret(key) if key else None


DEMO_CANARY_WORKFLOW = "invoice-intake"
"""A workflow of the simulator's catalogue that reads PDFs."""


def demo_canary() -> CanarySettings:
    """The demo's canary: one call a minute with the one-page PDF shipped in the package."""
    document = resources.files("exporter.simulator").joinpath("canary.pdf")
    return CanarySettings(DEMO_CANARY_WORKFLOW, str(document), document.read_bytes(), interval=60.0)

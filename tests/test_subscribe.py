"""`bem-exporter subscribe` (the real CLI, a subprocess) against the simulator over real HTTP:
a dry run changes nothing, `--apply` twice creates each subscription once, subscriptions it
did not make are left exactly as they were, and what it creates makes the simulated bem
deliver every function call's events, the last event of each call among them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import SIM_KEY, Clock
from processes import ROOT
from test_simulator_webhooks import functions_of, ms, run_clock, settled
from webhook_receiver import WebhookReceiver

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.catalog import FUNCTIONS_BY_NAME
from exporter.simulator.config import DEMO_WEBHOOK_SECRET

URL = "https://exporter.example.com/webhook"
FOREIGN = [
    # someone's own: the same function, type and URL bem-exporter wants (so it is already there)
    {"name": "ops: invoice errors", "type": "error", "functionName": "extract-invoice", "webhookURL": URL},
    # someone's own elsewhere, disabled
    {"name": "ops: archive", "type": "transform", "functionName": "send-archive", "disabled": True,
     "webhookURL": "https://ops.example.com/h"},
    # an S3 sync: no URL at all
    {"name": "lake", "type": "transform", "functionName": "extract-receipt", "s3Bucket": "lake", "s3FilePath": "bem/"},
]  # fmt: skip


@contextmanager
def account(clock: Clock | None = None) -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimulatorConfig(seed=5, arrival_rate=0, speed=40, failure_rate=0.3), clock=clock or Clock())
    for body in FOREIGN:
        sim.subscriptions.create(body, sim.now_ms())
    with SimulatorServer(sim) as url:
        yield sim, url


def subscribe(api_url: str, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BEM_", "OTEL_"))},
        "BEM_API_KEY": SIM_KEY,
        "BEM_API_URL": api_url,
        **env,
    }
    command = [sys.executable, "-m", "exporter", "subscribe", *flags]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False)


def docs(sim: Simulator) -> list[dict[str, Any]]:
    return [s.doc() for s in sim.subscriptions.page(limit=100)]


def wanted_count(functions: list[str]) -> int:
    """Each function's output type (every simulated function has one) and its errors."""
    return 2 * len(functions)


def test_a_dry_run_shows_the_plan_and_changes_nothing() -> None:
    with account() as (sim, url):
        before = docs(sim)
        done = subscribe(url, "--url", URL)
        after = docs(sim)
    assert done.returncode == 0, done.stdout + done.stderr
    assert after == before
    missing = wanted_count(sorted(FUNCTIONS_BY_NAME)) - 1  # extract-invoice's errors are there
    assert f"to create ({missing}):" in done.stdout
    assert "already delivered to this URL (1):" in done.stdout and "made by someone else" in done.stdout
    assert "dry run: nothing changed" in done.stdout
    assert "BEM_WEBHOOK_SECRET" in done.stdout and "the account has one" in done.stdout
    for secret in (DEMO_WEBHOOK_SECRET, SIM_KEY):
        assert secret not in done.stdout + done.stderr


def test_apply_twice_creates_each_subscription_once_and_leaves_the_others_alone() -> None:
    with account() as (sim, url):
        foreign = docs(sim)
        first = subscribe(url, "--url", URL, "--apply")
        second = subscribe(url, "--url", URL, "--apply")
        after = docs(sim)
        moved = subscribe(url, "--url", "https://new.example.com/webhook")
    assert first.returncode == 0 and second.returncode == 0, first.stdout + second.stdout
    assert after[: len(foreign)] == foreign, "what it did not make is exactly as it was"
    made = after[len(foreign) :]
    wanted = wanted_count(sorted(FUNCTIONS_BY_NAME))
    assert len(made) == wanted - 1
    assert all(s["name"] == f"bem-exporter {s['type']} {s['functionName']}" for s in made)
    assert {s["webhookURL"] for s in made} == {URL} and not any(s["disabled"] for s in made)
    covered = Counter((s["functionName"], s["type"]) for s in after if s.get("webhookURL") == URL)
    assert set(covered.values()) == {1} and len(covered) == wanted
    assert {kind for _, kind in covered} >= {"transform", "route", "split_collection", "join", "enrich", "error"}
    assert f"subscribe: {wanted} of {wanted} subscriptions deliver" in first.stdout
    assert "to create (0):" in second.stdout and "creating" not in second.stdout
    assert f"made by bem-exporter for another URL, left as they are ({wanted - 1}):" in moved.stdout


def test_workflows_restrict_the_functions() -> None:
    with account() as (sim, url):
        done = subscribe(url, "--url", URL, "--apply", BEM_WORKFLOWS="receipt-extract,email-router")
        made = docs(sim)[len(FOREIGN) :]
    assert done.returncode == 0, done.stdout
    assert sorted({s["functionName"] for s in made}) == functions_of("receipt-extract", "email-router")


def test_what_it_creates_delivers_every_function_call_and_the_end_of_every_call() -> None:
    clock = Clock(1_800_000_000.0)
    workflows = ("invoice-intake", "claims-triage", "contract-review", "receipt-extract", "email-router")
    with WebhookReceiver() as receiver, account(clock) as (sim, url):
        done = subscribe(url, "--url", receiver.url, "--apply")
        assert done.returncode == 0, done.stdout
        calls = [sim.create_call(name)["callID"] for _ in range(4) for name in workflows]
        calls += [sim.create_call(function_name=name)["callID"] for name in ("render-letter", "classify-document")]
        run_clock(clock, lambda: all(sim.status(c) in ("completed", "failed") for c in calls))
        run_clock(clock, lambda: settled(sim) and len(receiver.received()) > 0)
        run_clock(clock, lambda: settled(sim), limit=60)
        received = receiver.received()
        traces = {call_id: sim.trace(call_id) for call_id in calls}
    delivered = {r.doc["functionCallID"] for r in received}
    event_ids = {r.event_id for r in received}
    for trace in traces.values():
        assert {fc["functionCallID"] for fc in trace["functionCalls"]} <= delivered, "every function call"
        last = max(ms(event["createdAt"]) for event in trace["events"])
        assert any(e["eventID"] in event_ids for e in trace["events"] if ms(e["createdAt"]) == last), "the end"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (("--url", "ftp://x.example/webhook"), "bem-exporter: error: --url: not an http(s) URL with a host"),
        ((), "bem-exporter: error: the following arguments are required: --url (see --help)"),
    ],
)
def test_a_bad_url_exits_2_with_one_line(flags: tuple[str, ...], line: str) -> None:
    done = subscribe("http://127.0.0.1:9", *flags)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(line)


def test_a_rejected_key_fails_saying_so_and_an_account_without_secret_is_told_how() -> None:
    with account() as (sim, url):
        refused = subscribe(url, "--url", URL, BEM_API_KEY="wrong-key")
        sim.config.webhooks.secret = None
        unsigned = subscribe(url, "--url", URL)
    assert refused.returncode == 1 and "the API key was rejected" in refused.stdout
    assert "wrong-key" not in refused.stdout + refused.stderr
    assert unsigned.returncode == 0 and "the account has none" in unsigned.stdout
    assert "POST /v3/webhook-secret" in unsigned.stdout

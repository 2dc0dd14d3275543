"""The simulator's webhooks over real HTTP: subscriptions, the signing secret, and delivery to a
real receiver (tests/webhook_receiver.py), which checks bem's signature with its own code.

The first tests run on the real clock with a fast workload and look at the simulator at the
moment each delivery arrives (an event never before the trace shows it; the call's last event
when the call is finished or about to be). The knob tests move a hand-held clock instead, so
they take seconds whatever the machine's load, and compare with the simulator's delivery log.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

import httpx
import pytest
from conftest import Clock
from processes import ROOT, wait_until
from test_rate_cli import simulate
from webhook_receiver import ABORT, HANG, Received, WebhookReceiver, verify

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.catalog import FUNCTIONS_BY_NAME as FUNCTIONS
from exporter.simulator.config import DEMO_WEBHOOK_SECRET, Webhooks
from exporter.simulator.functions import USED_IN
from exporter.simulator.subscriptions import SUBSCRIPTION_TYPES
from exporter.simulator.webhooks import TICK_SECONDS, WRONG_SECRET_SUFFIX

KEY = {"x-api-key": "sim-key"}
START = 1_800_000_000.0
JSON = dict[str, Any]
SUBSCRIBED = ("invoice-intake", "claims-triage")
"""Workflows whose functions the tests subscribe to: split, join, classify, enrich, send..."""
ELSEWHERE = "email-router"
"""A workflow none of whose functions is subscribed to (it shares none with SUBSCRIBED)."""
REQUIRED = (
    "eventID",
    "eventType",
    "callID",
    "functionCallID",
    "functionName",
    "workflowName",
    "referenceID",
    "createdAt",
    "functionCallTryNumber",
)


def ms(stamp: str) -> int:
    return round(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def functions_of(*workflows: str) -> list[str]:
    return sorted(name for name, used in USED_IN.items() if any(w.name in workflows for w in used))


def subscribe(url: str, receiver_url: str, functions: list[str], types: tuple[str, ...] = SUBSCRIPTION_TYPES) -> None:
    """Every function to every type: each of its events is then delivered exactly once."""
    with httpx.Client(base_url=url, headers=KEY) as api:
        for function in functions:
            for kind in types:
                body = {"name": f"test {kind} {function}", "type": kind, "functionName": function}
                answer = api.post("/v3/subscriptions", json={**body, "webhookURL": receiver_url})
                assert answer.status_code == 200, answer.text


@dataclass
class Served:
    sim: Simulator
    url: str
    receiver: WebhookReceiver
    clock: Callable[[], float]


@contextmanager
def served(
    clock: Callable[[], float] = time.time,
    answer: Callable[[Received], int] | None = None,
    on_receive: Callable[[Simulator, Received], Any] | None = None,
    **knobs: Any,
) -> Iterator[Served]:
    """A simulator with no arrivals of its own (tests create the calls) and a receiver."""
    config = SimulatorConfig(seed=11, arrival_rate=0, speed=40, failure_rate=0.3, webhooks=Webhooks(**knobs))
    sim = Simulator(config, clock=clock)
    seen = None if on_receive is None else (lambda received: on_receive(sim, received))
    with WebhookReceiver(answer, seen) as receiver, SimulatorServer(sim) as url:
        yield Served(sim, url, receiver, clock)


def create_calls(sim: Simulator, per_workflow: int, workflows: tuple[str, ...] = (*SUBSCRIBED, ELSEWHERE)) -> list[str]:
    return [sim.create_call(name)["callID"] for _ in range(per_workflow) for name in workflows]


def finished(sim: Simulator, call_ids: list[str]) -> bool:
    return all(sim.status(call_id) in ("completed", "failed") for call_id in call_ids)


def expected_events(sim: Simulator, call_ids: list[str]) -> dict[str, JSON]:
    """eventID -> event of every call of a subscribed workflow, as its final trace shows it."""
    events: dict[str, JSON] = {}
    for call_id in call_ids:
        if sim.call(call_id).get("workflowName") in SUBSCRIBED:
            events.update((event["eventID"], event) for event in sim.trace(call_id)["events"])
    return events


def run_clock(clock: Clock, done: Callable[[], bool], step: float = 1.0, limit: float = 7200.0) -> None:
    """Move the hand-held clock `step` simulated seconds at a time until `done()`; the
    dispatcher ticks every 20 ms, so each step gets a few ticks of real time."""
    for _ in range(int(limit / step)):
        if done():
            return
        clock.advance(step)
        time.sleep(0.02)
    raise AssertionError(f"not done after {limit} simulated seconds")


def settled(sim: Simulator) -> bool:
    counts = sim.deliveries.counts()
    return counts.get("scheduled", 0) == counts.get("delivered", 0) + counts.get("given_up", 0)


def idle(sim: Simulator) -> bool:
    """The dispatcher has ticked at the clock's present reading and every delivery it scheduled
    was answered: while the hand-held clock stands still, nothing is left to send."""
    return sim.deliveries.handed_over_ms >= sim.now_ms() and settled(sim)


def wait_idle(sim: Simulator) -> None:
    """A busy machine's dispatcher lags the hand-held clock: wait until it is idle, and again a
    few ticks later (the first look may fall inside a tick that is still scheduling)."""
    for _ in range(2):
        wait_until(lambda: idle(sim), 60, what="the dispatcher idle at the clock's reading")
        time.sleep(5 * TICK_SECONDS)


def all_delivered(s: Served, call_ids: list[str]) -> bool:
    """The calls finished, each of their subscribed events received, and nothing in flight. A
    finished call is not enough: its last events are scheduled at the dispatcher's next tick,
    which a busy machine delays (settled would then hold with them still unscheduled)."""
    if not finished(s.sim, call_ids):
        return False
    received = {r.event_id for r in s.receiver.received()}
    return received >= set(expected_events(s.sim, call_ids)) and settled(s.sim)


# -- delivery on the real clock ----------------------------------------------------------------


def at_receipt(sim: Simulator, received: Received) -> tuple[bool, str]:
    """Whether the trace shows the event yet, and the call's status, when it arrives."""
    call_id = str(received.doc["callID"])
    shown = {event["eventID"] for event in sim.trace(call_id)["events"]}
    return received.event_id in shown, sim.status(call_id)


def test_every_event_of_subscribed_functions_arrives_once_signed_and_not_before_the_trace_shows_it() -> None:
    with served(on_receive=at_receipt) as s:
        subscribe(s.url, s.receiver.url, functions_of(*SUBSCRIBED))
        calls = create_calls(s.sim, 4)
        wait_until(lambda: all_delivered(s, calls), 120, what="the calls finished, delivered")
        expected = expected_events(s.sim, calls)
        received = s.receiver.received()

    assert Counter(r.event_id for r in received) == Counter(expected.keys()), "each event exactly once, no other"
    for r in received:
        event = expected[r.event_id]
        assert r.doc == event, "the body is the event as the trace shows it"
        assert verify(r.headers.get("bem-signature"), r.body, [DEMO_WEBHOOK_SECRET], r.received_at) == "valid"
        assert r.headers["content-type"] == "application/json"
        assert all(r.doc.get(name) is not None for name in REQUIRED), r.doc
        shown, _ = r.seen
        assert shown, "delivered no earlier than the trace endpoint shows the event"
    function_calls = {fc["functionCallID"] for c in calls for fc in s.sim.trace(c)["functionCalls"]}
    subscribed_calls = {e["functionCallID"] for e in expected.values()}
    assert subscribed_calls <= function_calls and subscribed_calls, "every function call of the subscribed workflows"
    assert all(r.doc["workflowName"] in SUBSCRIBED for r in received), f"nothing of {ELSEWHERE}"


def test_the_last_event_of_a_call_arrives_when_the_call_is_finished_or_about_to_be() -> None:
    speed = 40
    with served(on_receive=at_receipt) as s:
        subscribe(s.url, s.receiver.url, functions_of(*SUBSCRIBED))
        calls = create_calls(s.sim, 3, SUBSCRIBED)
        wait_until(lambda: all_delivered(s, calls), 120, what="the calls finished, delivered")
        received = {r.event_id: r for r in s.receiver.received()}
        for call_id in calls:
            call, events = s.sim.call(call_id), s.sim.trace(call_id)["events"]
            last = received[max(events, key=lambda e: ms(e["createdAt"]))["eventID"]]
            _, status = last.seen
            # the call finalizes 0.02..0.4 s (at speed 1) after its last event is created
            lead = ms(call["finishedAt"]) / 1000 - last.received_at
            assert status in ("running", "completed", "failed")
            assert lead <= 0.4 / speed + 0.002, "the call reads finished within its finalizing time"


def last_event_of_first_call(workflow: str) -> tuple[str, int, int]:
    """(callID, last event's createdAt, finishedAt) of the first call `served` creates, read
    from a twin simulator (same seed) run to the end."""
    twin_clock = Clock(START)
    twin = Simulator(SimulatorConfig(seed=11, arrival_rate=0, speed=40, failure_rate=0.3), clock=twin_clock)
    call_id = twin.create_call(workflow)["callID"]
    twin_clock.advance(3600)
    last = max(ms(event["createdAt"]) for event in twin.trace(call_id)["events"])
    return call_id, last, ms(twin.call(call_id)["finishedAt"])


@pytest.mark.parametrize("lead", [None, 0.0])
def test_final_event_lead_says_whether_the_last_event_may_precede_the_finished_status(lead: float | None) -> None:
    def status(sim: Simulator, received: Received) -> str:
        # what a reader of /v3/calls?callIDs= sees at that moment
        return str(api.get("/v3/calls", params={"callIDs": received.doc["callID"]}).json()["calls"][0]["status"])

    call_id, last_ms, finish_ms = last_event_of_first_call("claims-triage")
    assert last_ms < finish_ms
    clock = Clock(START)
    with served(clock, on_receive=status, final_event_lead=lead) as s, httpx.Client(base_url=s.url, headers=KEY) as api:
        subscribe(s.url, s.receiver.url, functions_of("claims-triage"))
        assert s.sim.create_call("claims-triage")["callID"] == call_id
        clock.now = last_ms / 1000  # the last event is created; the call is still running
        others = [e["eventID"] for e in s.sim.trace(call_id)["events"] if ms(e["createdAt"]) < last_ms]
        wait_until(lambda: {r.event_id for r in s.receiver.received()} >= set(others), 60, what="the earlier events")
        if lead is None:
            wait_until(lambda: len(s.receiver.received()) > len(others), 60, what="the last event")
            assert s.receiver.received()[-1].seen == "running", "delivered while the call reads running"
            return
        assert len(s.receiver.received()) == len(others), "held: popped in the same tick as the others, not sent"
        clock.now = finish_ms / 1000
        wait_until(lambda: len(s.receiver.received()) > len(others), 60, what="the last event")
        assert s.receiver.received()[-1].seen in ("completed", "failed")


def test_a_hanging_receiver_slows_deliveries_not_the_api() -> None:
    with served(answer=lambda _: HANG, senders=2, queue_size=2, timeout=60) as s:
        subscribe(s.url, s.receiver.url, functions_of(*SUBSCRIBED))
        calls = create_calls(s.sim, 3, SUBSCRIBED)
        wait_until(lambda: finished(s.sim, calls), 120, what="the calls finished")
        wait_until(lambda: len(s.receiver.received()) >= 2, 30, what="both senders held by the receiver")
        with httpx.Client(base_url=s.url, headers=KEY) as api:
            for _ in range(20):
                assert api.get("/v3/calls", params={"limit": 100}).status_code == 200
                assert api.get(f"/v3/calls/{calls[0]}/trace").status_code == 200
        assert len(s.receiver.received()) == 2, "no sender is free, none blocks the API"
        counts = s.sim.deliveries.counts()
        assert counts.get("scheduled", 0) > 2 and "given_up" not in counts, "the rest wait in the schedule, none lost"


def test_a_server_started_again_goes_on_delivering_without_repeating() -> None:
    clock = Clock(START)
    sim = Simulator(SimulatorConfig(seed=11, arrival_rate=0, speed=40, failure_rate=0.3), clock=clock)
    server = SimulatorServer(sim)
    with WebhookReceiver() as receiver:
        url = server.start()
        subscribe(url, receiver.url, functions_of(*SUBSCRIBED))
        calls = create_calls(sim, 4, SUBSCRIBED)
        run_clock(clock, lambda: len(receiver.received()) > 10 and settled(sim), step=0.05)
        wait_idle(sim)  # no delivery under way: one cut off by the stop would be lost
        server.stop()  # an outage of bem: calls go on, nothing is delivered
        clock.advance(0.2)
        before = len(receiver.received())
        server.start()
        try:
            run_clock(clock, lambda: finished(sim, calls))
            expected = expected_events(sim, calls)
            run_clock(clock, lambda: len(receiver.received()) >= len(expected) and settled(sim))
        finally:
            server.stop()
        received = Counter(r.event_id for r in receiver.received())
    assert 10 < before < len(expected), "some events delivered before the outage, some after"
    assert received == Counter(expected.keys()), "every event once: none lost, none repeated"


# -- knobs, on a hand-held clock ---------------------------------------------------------------


Answering = Callable[[Clock], Callable[[Received], int]]
"""What the receiver answers, given the simulated clock."""


@contextmanager
def knob_run(answering: Answering | None = None, **knobs: Any) -> Iterator[tuple[Served, dict[str, JSON]]]:
    """Calls of every workflow, all subscribed functions; the clock runs until every delivery
    is answered or given up. Yields the run and the events expected."""
    clock = Clock(START)
    with served(clock, None if answering is None else answering(clock), **knobs) as s:
        subscribe(s.url, s.receiver.url, functions_of(*SUBSCRIBED))
        calls = create_calls(s.sim, 8)
        run_clock(clock, lambda: finished(s.sim, calls))
        expected = expected_events(s.sim, calls)
        run_clock(clock, lambda: fanned_out(s.sim, expected) and settled(s.sim))
        yield s, expected


def fanned_out(sim: Simulator, expected: dict[str, JSON]) -> bool:
    counts = sim.deliveries.counts()
    made = counts.get("scheduled", 0) - counts.get("duplicated", 0) + counts.get("dropped", 0)
    return made == len(expected)


def verdicts(s: Served) -> Counter[str]:
    return Counter(
        verify(r.headers.get("bem-signature"), r.body, [DEMO_WEBHOOK_SECRET], s.clock()) for r in s.receiver.received()
    )


def test_drop_rate_loses_that_share_and_nothing_else() -> None:
    with knob_run(drop_rate=0.3) as (s, expected):
        received = Counter(r.event_id for r in s.receiver.received())
        dropped = s.sim.deliveries.counts()["dropped"]
    assert set(received) <= set(expected) and max(received.values()) == 1
    assert len(received) + dropped == len(expected)
    assert 0.2 < dropped / len(expected) < 0.4, (dropped, len(expected))


def test_duplicate_rate_sends_that_share_twice() -> None:
    with knob_run(duplicate_rate=0.2) as (s, expected):
        received = Counter(r.event_id for r in s.receiver.received())
        duplicated = s.sim.deliveries.counts()["duplicated"]
    assert set(received) == set(expected)
    assert sorted(set(received.values())) == [1, 2]
    assert sum(n - 1 for n in received.values()) == duplicated
    assert 0.1 < duplicated / len(expected) < 0.3, (duplicated, len(expected))


def test_delay_holds_every_delivery_that_long_after_its_event() -> None:
    with knob_run(delay=30.0) as (s, expected):
        attempts = s.sim.deliveries.attempts()
    assert {a.event_id for a in attempts} == set(expected)
    for attempt in attempts:
        assert attempt.sent_at * 1000 >= ms(expected[attempt.event_id]["createdAt"]) + 30_000


def inversions(received: list[Received]) -> int:
    """Deliveries that arrived after one created later."""
    created = [ms(r.doc["createdAt"]) for r in received]
    return sum(1 for a, b in itertools.pairwise(created) if b < a)


def test_reorder_lets_later_events_overtake() -> None:
    # one sender: without the knob, deliveries leave exactly in creation order
    with knob_run(senders=1) as (s, expected):
        assert inversions(s.receiver.received()) == 0
    with knob_run(senders=1, reorder_rate=0.5, reorder_window=30.0) as (s, expected):
        received = s.receiver.received()
        reordered = s.sim.deliveries.counts()["reordered"]
    assert Counter(r.event_id for r in received) == Counter(expected.keys()), "reordered, not lost"
    assert 0.3 < reordered / len(expected) < 0.7
    assert inversions(received) > len(received) / 10


def reject_unverified(clock: Clock) -> Callable[[Received], int]:
    """A receiver that checks signatures as the exporter does: 401 for a bad or stale one."""

    def answer(received: Received) -> int:
        ok = verify(received.headers.get("bem-signature"), received.body, [DEMO_WEBHOOK_SECRET], clock())
        return 200 if ok == "valid" else 401

    return answer


def test_wrong_secret_rate_forges_that_share_of_attempts_which_bem_then_retries() -> None:
    with knob_run(reject_unverified, wrong_secret_rate=0.4, max_attempts=30, retry_base=1.0) as (s, expected):
        verdict = verdicts(s)
        attempts = s.sim.deliveries.attempts()
        accepted = Counter(r.event_id for r in s.receiver.answered(200))
        forged = [r for r in s.receiver.received() if r.status == 401]
    assert accepted == Counter(expected.keys()), "every event accepted once in the end"
    assert set(verdict) == {"valid", "bad_signature"}
    assert 0.25 < verdict["bad_signature"] / verdict.total() < 0.55
    assert {a.signing for a in attempts if a.status == 401} == {"wrong_secret"}
    for r in forged:  # a real signature, of another secret
        secret = DEMO_WEBHOOK_SECRET + WRONG_SECRET_SUFFIX
        assert verify(r.headers["bem-signature"], r.body, [secret], s.clock()) == "valid"


def test_stale_rate_dates_that_share_of_signatures_in_the_past() -> None:
    with knob_run(reject_unverified, stale_rate=0.4, stale_seconds=900, max_attempts=30) as (s, expected):
        verdict = verdicts(s)
        attempts = {(a.event_id, a.copy, a.attempt): a for a in s.sim.deliveries.attempts()}
        accepted = Counter(r.event_id for r in s.receiver.answered(200))
    assert accepted == Counter(expected.keys())
    assert set(verdict) == {"valid", "stale"}
    assert 0.25 < verdict["stale"] / verdict.total() < 0.55
    stale = [a for a in attempts.values() if a.signing == "stale"]
    assert stale and all(a.status == 401 for a in stale)


def first_tries_fail(received: Received) -> int:
    """500 to an event's first delivery, no answer at all to its second, 200 to the third."""
    tries = first_tries_fail.seen  # type: ignore[attr-defined]
    tries[received.event_id] += 1
    return {1: 500, 2: ABORT}.get(tries[received.event_id], 200)


def test_failed_attempts_are_retried_with_exponential_backoff() -> None:
    first_tries_fail.seen = Counter()  # type: ignore[attr-defined]
    with knob_run(lambda _: first_tries_fail, retry_base=2.0) as (s, expected):
        received = Counter(r.event_id for r in s.receiver.received())
        attempts = s.sim.deliveries.attempts()
        counts = s.sim.deliveries.counts()
    assert received == Counter({event_id: 3 for event_id in expected})
    assert counts["delivered"] == len(expected) and counts["retried"] == 2 * len(expected)
    by_event: dict[str, list[Any]] = {}
    for attempt in attempts:
        by_event.setdefault(attempt.event_id, []).append(attempt)
    for tries in by_event.values():
        tries.sort(key=lambda a: a.attempt)
        assert [(a.attempt, a.status) for a in tries] == [(1, 500), (2, None), (3, 200)]
        assert tries[1].sent_at - tries[0].sent_at >= 2.0, "the first retry after retry_base"
        assert tries[2].sent_at - tries[1].sent_at >= 4.0, "the next after twice as long"


def test_retries_are_bounded() -> None:
    with knob_run(lambda _: lambda _: 503, max_attempts=3, retry_base=1.0) as (s, expected):
        per_event = Counter(r.event_id for r in s.receiver.received())
        counts = s.sim.deliveries.counts()
    assert per_event == Counter({event_id: 3 for event_id in expected})
    assert counts["given_up"] == len(expected) and "delivered" not in counts


def test_without_a_secret_deliveries_are_unsigned() -> None:
    with knob_run(secret=None) as (s, expected):
        received = s.receiver.received()
    assert len(received) == len(expected)
    assert all("bem-signature" not in r.headers for r in received)


# -- the account endpoints, through bem's own SDK ----------------------------------------------

bem = pytest.importorskip("bem")

from bem.types.unwrap_webhook_event import UnwrapWebhookEvent  # noqa: E402
from pydantic import BaseModel  # noqa: E402

WEBHOOK_EVENT_CLASSES: dict[str, type[BaseModel]] = {
    get_args(cls.model_fields["event_type"].annotation)[0].__args__[0]: cls
    for cls in get_args(get_args(UnwrapWebhookEvent)[0])
}
"""eventType -> bem-sdk's model of that webhook delivery."""


@contextmanager
def sdk(strict: bool = True) -> Iterator[tuple[Simulator, Any]]:
    sim = Simulator(SimulatorConfig(seed=3, arrival_rate=0))
    with (
        SimulatorServer(sim) as url,
        bem.Bem(base_url=url, api_key="sim-key", max_retries=0, _strict_response_validation=strict) as client,
    ):
        yield sim, client


def test_the_sdk_manages_subscriptions() -> None:
    with sdk() as (_, client):
        made = [
            client.subscriptions.create(
                name=f"n{k}", type="transform", function_name="extract-invoice", webhook_url="https://example.com/h"
            )
            for k in range(3)
        ]
        other = client.subscriptions.create(
            name="o", type="error", function_id=FUNCTIONS["send-to-erp"].id, disabled=True
        )
        assert other.function_name == "send-to-erp" and other.disabled is True and other.webhook_url is None
        listed = client.subscriptions.list(limit=2)
        assert [s.subscription_id for s in listed] == [s.subscription_id for s in made[:2]]
        after = client.subscriptions.list(starting_after=made[1].subscription_id)
        assert [s.subscription_id for s in after] == [made[2].subscription_id, other.subscription_id]
        before = client.subscriptions.list(ending_before=other.subscription_id, limit=1)
        assert [s.subscription_id for s in before] == [made[2].subscription_id]
        assert len(client.subscriptions.list(function_names=["send-to-erp"])) == 1
        changed = client.subscriptions.update(
            made[0].subscription_id, disabled=True, webhook_url="https://example.com/g"
        )
        assert (changed.disabled, changed.webhook_url, changed.name) == (True, "https://example.com/g", "n0")
        assert client.subscriptions.retrieve(made[0].subscription_id) == changed
        client.subscriptions.delete(made[1].subscription_id)
        assert len(client.subscriptions.list()) == 3
        with pytest.raises(bem.NotFoundError):
            client.subscriptions.retrieve(made[1].subscription_id)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"type": "transform", "functionName": "extract-invoice"}, 400, "name"),
        ({"name": "n", "type": "extract", "functionName": "extract-invoice"}, 400, "type"),
        ({"name": "n", "type": "transform"}, 400, "functionName"),
        (
            {"name": "n", "type": "transform", "functionName": "extract-invoice", "webhookURL": "ftp://x"},
            400,
            "webhookURL",
        ),
        ({"name": "n", "type": "transform", "functionName": "no-such-function"}, 404, None),
        ({"name": "n", "type": "collection_processing", "collectionName": "c"}, 404, None),
    ],
)
def test_a_bad_subscription_is_refused_with_what_is_wrong(body: JSON, status: int, field: str | None) -> None:
    with served() as s:
        answer = httpx.post(f"{s.url}/v3/subscriptions", headers=KEY, json=body)
        assert answer.status_code == status
        assert answer.json().get("details", {}).get("field") == field
        assert len(s.sim.subscriptions) == 0
        assert httpx.post(f"{s.url}/v3/subscriptions", json=body).status_code == 401, "the key is required"


def test_the_sdk_reads_generates_and_revokes_the_signing_secret() -> None:
    with sdk() as (sim, client):
        assert client.webhook_secret.retrieve().secret == DEMO_WEBHOOK_SECRET
        fresh = client.webhook_secret.create().secret
        assert fresh != DEMO_WEBHOOK_SECRET and sim.config.webhooks.secret == fresh
        assert client.webhook_secret.retrieve().secret == fresh
        client.webhook_secret.revoke()
        assert sim.config.webhooks.secret is None
        with pytest.raises(bem.NotFoundError):
            client.webhook_secret.retrieve()


def test_the_sdk_lists_the_functions_of_workflows_page_by_page() -> None:
    # route-email is of bem's legacy type `route`, which bem-sdk's Function union lacks:
    # its workflow is left out of the strictly validated listing
    modelled = ("invoice-intake", "claims-triage", "contract-review", "receipt-extract")
    with sdk() as (_, client):
        wanted = list(client.functions.list(workflow_names=list(modelled), limit=4))
        assert sorted(f.function_name for f in wanted) == functions_of(*modelled)
        assert {w.workflow_name for f in wanted for w in f.used_in_workflows or []} >= set(modelled)
    with sdk(strict=False) as (_, client):
        every = {f.function_name: f.type for f in client.functions.list(limit=5)}
    assert every == {name: function.type for name, function in FUNCTIONS.items()}


def test_deliveries_are_the_sdks_webhook_events() -> None:
    with knob_run() as (s, expected):
        received = s.receiver.received()
    validated = Counter()
    for r in received:
        cls = WEBHOOK_EVENT_CLASSES.get(r.doc["eventType"])
        if cls is not None:
            cls.model_validate(r.doc)
            validated[r.doc["eventType"]] += 1
    assert len(received) == len(expected)
    assert {"extract", "classify", "split_collection", "join", "enrich", "send", "error"} <= set(validated)


# -- `bem-exporter simulate` -------------------------------------------------------------------


def test_simulate_takes_the_webhook_knobs_as_flags() -> None:
    flags = ("--rate", "5", "--speed", "50", "--webhook-secret", "flag-secret", "--webhook-duplicate-rate", "1")
    with WebhookReceiver() as receiver, simulate(*flags) as url:
        subscribe(url, receiver.url, sorted(FUNCTIONS))
        wait_until(lambda: len(receiver.received()) >= 40, 60, what="40 deliveries")
        received = receiver.received()
    assert {verify(r.headers.get("bem-signature"), r.body, ["flag-secret"], time.time()) for r in received} == {"valid"}
    assert max(Counter(r.event_id for r in received).values()) == 2, "every delivery made twice"


def test_simulate_refuses_a_knob_out_of_range_naming_its_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "simulate", "--webhook-drop-rate", "1.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "bem-exporter: error: simulate: --webhook-drop-rate must be within 0..1, got 1.5"
    ]

"""Webhooks end to end: signed deliveries over real HTTP to `bem-exporter run` (the CLI as a
subprocess) against the simulator, with a 60 s poll interval.

Deliveries are signed here, as bem signs them, carrying the events of calls the simulator
really runs (its trace events are bem's webhook event shapes). The simulator's clock is moved
by hand, so a call finishes exactly when a test says. That a call was counted "from webhooks
alone" is shown without a clock: the exporter's poll cycles (`bem_exporter_poll_duration_seconds`
count) did not move between the call's finishing and its being counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import Clock
from processes import ExporterProcess, free_port, wait_until
from replicas import differences, served, truth
from webhook_helpers import SECRET, body_of, deliver, deliver_all, events_of, signed

from exporter.simulator import Simulator

WORKFLOW = "invoice-intake"
RUN_OUT = 400.0
"""Seconds of simulator clock after which any call created before has finished (runs are
capped at 300 s, queues are short)."""


def webhook_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "BEM_POLL_INTERVAL": "60s",
        "BEM_WEBHOOK_LISTEN": f"127.0.0.1:{port}",
        "BEM_WEBHOOK_SECRET": f"old-secret-being-rotated,{SECRET}",
        **extra,
    }


def cycles(exporter: ExporterProcess) -> float:
    return exporter.samples("bem_exporter_poll_duration_seconds_count")[()]


def first_poll_done(exporter: ExporterProcess, calls: int) -> None:
    """Wait for the first poll cycle to end, having counted the `calls` already finished (its
    counts are visible from its commit, a moment before the cycle ends)."""
    wait_until(lambda: cycles(exporter) >= 1 and counted(exporter) == calls, 30, what="the first poll")


def received(exporter: ExporterProcess) -> dict[str, float]:
    samples = exporter.samples("bem_exporter_webhooks_received_total")
    return {dict(labels)["result"]: value for labels, value in samples.items()}


def counted(exporter: ExporterProcess) -> int:
    return sum(exporter.calls_total().values())


def status(exporter: ExporterProcess) -> Any:
    return httpx.get(f"{exporter.url}/status.json", timeout=10).json()


def create(simulator: Simulator, count: int) -> list[str]:
    return [str(simulator.create_call(WORKFLOW)["callID"]) for _ in range(count)]


def settled_simulator(sim_factory: Any, clock: Clock, prefill: int) -> tuple[Simulator, str]:
    """A simulator with no new arrivals whose `prefill` calls (made 20 minutes ago) have all
    finished: what the exporter's first poll counts."""
    clock.advance(-1200.0)
    simulator, api = sim_factory(arrival_rate=0.0, prefill=prefill, history=300.0)
    clock.advance(1200.0)
    return simulator, api


@contextmanager
def hooked_run(
    tmp_path: Path, sim_factory: Any, clock: Clock, prefill: int, **env: str
) -> Iterator[tuple[Simulator, ExporterProcess, str]]:
    """`run` with webhooks on against a settled simulator, past its first poll: the simulator,
    the exporter and its webhook URL."""
    simulator, api = settled_simulator(sim_factory, clock, prefill)
    port = free_port()
    with ExporterProcess(api, tmp_path / "state.sqlite", env=webhook_env(port, **env)) as exporter:
        first_poll_done(exporter, prefill)
        yield simulator, exporter, f"http://127.0.0.1:{port}/webhook"


def early_event(simulator: Simulator, call_id: str, number: int) -> dict[str, Any]:
    """An event of a call that has emitted none yet (bem may deliver one before the call shows
    it): the shape of a real event of another call, naming this one."""
    template = next(event for cid in simulator.call_ids() for event in events_of(simulator, cid))
    return {**template, "eventID": f"ev_early_{number}_{call_id}", "callID": call_id}


def test_finished_calls_are_counted_from_webhooks_alone(tmp_path: Path, sim_factory: Any, clock: Clock) -> None:
    with hooked_run(tmp_path, sim_factory, clock, 3) as (simulator, exporter, hook):
        before = cycles(exporter)
        # Delivered before they finish: read, seen running, read again on the backoff.
        early = create(simulator, 4)
        for number, call_id in enumerate(early):
            assert deliver(hook, early_event(simulator, call_id, number)).status_code == 200
        wait_until(lambda: status(exporter)["webhooks"]["read"] >= len(early), 30, what="the early reads")
        assert counted(exporter) == 3
        # Delivered after they finished: every event of each call, as bem sends them.
        late = create(simulator, 4)
        clock.advance(RUN_OUT)
        for call_id in late:
            for event in events_of(simulator, call_id):
                assert deliver(hook, event).status_code == 200
        wait_until(lambda: counted(exporter) == 11, 30, what="every finished call counted")
        assert cycles(exporter) == before, "a poll cycle ran: the calls were not counted from webhooks alone"
        assert not differences(served(exporter), truth(simulator))
        assert exporter.samples("bem_exporter_webhook_counted_calls_total")[()] == 8
        assert received(exporter)["accepted"] > len(early) + len(late)
        document = status(exporter)
        assert document["webhooks"]["counted"] == 8 and document["webhooks"]["handover"] == "memory"
        assert document["webhooks"]["url"] == hook
        shown = exporter.metrics() + json.dumps(document) + exporter.log()
        assert SECRET not in shown and "old-secret-being-rotated" not in shown


def test_a_thousand_deliveries_for_one_call_cost_a_handful_of_requests(
    tmp_path: Path, sim_factory: Any, clock: Clock
) -> None:
    with hooked_run(tmp_path, sim_factory, clock, 1, BEM_POLL_INTERVAL="10m") as (simulator, exporter, hook):
        [call_id] = create(simulator, 1)
        clock.advance(RUN_OUT)
        event = events_of(simulator, call_id)[-1]
        # The same delivery 1,000 times (bem retrying, or a replay): one hint.
        before = dict(simulator.requests)
        assert asyncio.run(deliver_all(hook, [event] * 1000)) == [200] * 1000
        wait_until(lambda: counted(exporter) == 2, 30, what="the call counted")
        wait_until(lambda: spent(simulator, before) >= 3, 10, what="the early listing")
        time.sleep(1.5)  # nothing more comes
        assert spent_by_endpoint(simulator, before) == {"GET /v3/calls": 2, "GET /v3/calls/{callID}/trace": 1}
        assert received(exporter)["duplicate"] == 999
        # 1,000 distinct events naming the counted call: no read of it, and at most one early
        # listing per second (the contract's coalescing).
        before = dict(simulator.requests)
        started = time.monotonic()
        flood = [{**event, "eventID": f"{event['eventID']}-{n}"} for n in range(1000)]
        assert asyncio.run(deliver_all(hook, flood)) == [200] * 1000
        time.sleep(1.5)
        elapsed = time.monotonic() - started
        listings = spent_by_endpoint(simulator, before).get("GET /v3/calls", 0)
        assert spent_by_endpoint(simulator, before).keys() <= {"GET /v3/calls"}
        assert 1 <= listings <= elapsed + 1, f"{listings} listings in {elapsed:.1f} s"
        assert received(exporter)["accepted"] == 1001 and counted(exporter) == 2


def spent_by_endpoint(simulator: Simulator, before: dict[str, int]) -> dict[str, int]:
    now = dict(simulator.requests)
    return {key: now[key] - before.get(key, 0) for key in now if now[key] != before.get(key, 0)}


def spent(simulator: Simulator, before: dict[str, int]) -> int:
    return sum(spent_by_endpoint(simulator, before).values())


def test_refused_deliveries_change_nothing_and_a_replay_is_acted_on_once(
    tmp_path: Path, sim_factory: Any, clock: Clock
) -> None:
    with hooked_run(tmp_path, sim_factory, clock, 1, BEM_POLL_INTERVAL="10m") as (simulator, exporter, hook):
        [call_id] = create(simulator, 1)
        clock.advance(RUN_OUT)
        event = events_of(simulator, call_id)[-1]
        body = body_of(event)
        before, polls = dict(simulator.requests), cycles(exporter)
        refused = {
            "forged": httpx.post(hook, content=body, headers=signed(body, "not-the-secret"), timeout=10),
            "tampered": httpx.post(hook, content=body.replace(b"}", b',"x":1}', 1), headers=signed(body), timeout=10),
            "stale": httpx.post(hook, content=body, headers=signed(body, at=time.time() - 600), timeout=10),
            "unsigned": httpx.post(hook, content=body, timeout=10),
            "oversize": httpx.post(
                hook, content=body_of({**event, "pad": "x" * 2**20}), headers=signed(body), timeout=10
            ),
            "malformed": httpx.post(hook, content=b'{"callID": "' + call_id.encode() + b'"}', timeout=10,
                                    headers=signed(b'{"callID": "' + call_id.encode() + b'"}')),
        }  # fmt: skip
        assert {name: response.status_code for name, response in refused.items()} == {
            "forged": 401, "tampered": 401, "stale": 401, "unsigned": 401, "oversize": 413, "malformed": 400,
        }  # fmt: skip
        assert httpx.get(hook.replace("/webhook", "/metrics"), timeout=10).status_code == 404
        time.sleep(1.5)  # anything they could have started would have started
        assert spent_by_endpoint(simulator, before) == {} and counted(exporter) == 1
        assert received(exporter) == {
            "accepted": 0, "duplicate": 0, "bad_signature": 2, "stale": 1, "unsigned": 1, "malformed": 1,
            "too_large": 1,
        }  # fmt: skip
        # An accepted delivery, then the same bytes again (a replay within the tolerance).
        headers = signed(body)
        assert httpx.post(hook, content=body, headers=headers, timeout=10).status_code == 200
        wait_until(lambda: counted(exporter) == 2, 30, what="the call counted")
        replay = httpx.post(hook, content=body, headers=headers, timeout=10)
        assert (replay.status_code, replay.text) == (200, "duplicate\n")
        assert received(exporter)["accepted"] == 1 and received(exporter)["duplicate"] == 1
        assert cycles(exporter) == polls and counted(exporter) == 2
        assert not differences(served(exporter), truth(simulator))
        log = exporter.log()
        assert SECRET not in log and "not-the-secret" not in log and event["eventID"] not in log


def test_dropped_duplicated_and_reordered_deliveries_leave_every_count_exact(
    tmp_path: Path, sim_factory: Any, clock: Clock
) -> None:
    with hooked_run(tmp_path, sim_factory, clock, 5, BEM_POLL_INTERVAL="5s") as (simulator, exporter, hook):
        rng = random.Random(21)
        calls = create(simulator, 30)
        clock.advance(RUN_OUT)
        calls += create(simulator, 10)  # still pending or running when their (few) events come
        clock.advance(5.0)
        deliveries = []
        for call_id in calls:
            for event in events_of(simulator, call_id):
                roll = rng.random()
                if roll < 0.3:
                    continue  # dropped
                deliveries += [event, event] if roll < 0.4 else [event]  # 10 % duplicated
        rng.shuffle(deliveries)  # the rest out of order
        assert set(asyncio.run(deliver_all(hook, deliveries))) == {200}
        polls = cycles(exporter)
        wait_until(lambda: cycles(exporter) >= polls + 1, 30, what="the next poll")
        assert not differences(served(exporter), truth(simulator))
        clock.advance(RUN_OUT)  # the rest finish: the poll (and webhooks) count them once too
        polls = cycles(exporter)
        wait_until(lambda: cycles(exporter) >= polls + 2, 60, what="two more polls")
        assert not differences(served(exporter), truth(simulator))
        assert counted(exporter) == 45


def test_a_slow_loris_on_the_webhook_port_delays_neither_metrics_nor_deliveries(
    tmp_path: Path, sim_factory: Any, clock: Clock
) -> None:
    simulator, api = settled_simulator(sim_factory, clock, 1)
    port = free_port()
    hook = f"http://127.0.0.1:{port}/webhook"
    with ExporterProcess(api, tmp_path / "state.sqlite", env=webhook_env(port)) as exporter:
        first_poll_done(exporter, 1)
        [call_id] = create(simulator, 1)
        clock.advance(RUN_OUT)

        async def scenario() -> tuple[list[bool], int, int]:
            lorises = [await _slow_request(port) for _ in range(60)]
            async with httpx.AsyncClient(timeout=30) as client:
                scrape = await client.get(f"{exporter.url}/metrics")
                body = body_of(events_of(simulator, call_id)[-1])
                delivery = await client.post(hook, content=body, headers=signed(body))
            still_open = [not reader.at_eof() for reader, _ in lorises]
            closed = await asyncio.gather(*(_closed(reader) for reader, _ in lorises))
            for _, task in lorises:
                task.cancel()
            assert all(closed), "the guard closes slow requests"
            return still_open, scrape.status_code, delivery.status_code

        still_open, scrape, delivery = asyncio.run(scenario())
        assert (scrape, delivery) == (200, 200)
        assert sum(still_open) >= 50, "answered while the slow requests held their connections"
        wait_until(lambda: counted(exporter) == 2, 30, what="the delivered call counted")


async def _slow_request(port: int) -> tuple[asyncio.StreamReader, asyncio.Task[None]]:
    """A POST whose headers come one byte every 0.2 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def trickle() -> None:
        try:
            while True:
                await asyncio.sleep(0.2)
                writer.write(b"a")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return reader, asyncio.create_task(trickle())


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout=60) == b""
    except ConnectionResetError:
        return True

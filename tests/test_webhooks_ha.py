"""Webhooks with replicas: every delivery sent to the standby, counted on the leader through
the hint the standby stored in the shared PostgreSQL state (no poll cycle in between), and a
delivery answered 503 while that state is down, then accepted when bem retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from conftest import Clock
from postgres_server import PostgresServer
from processes import ExporterProcess, wait_until
from replicas import Replicas, differences, listening_pair, served, truth
from test_webhooks_cli import (
    RUN_OUT,
    counted,
    create,
    cycles,
    first_poll_done,
    received,
    settled_simulator,
    status,
)
from webhook_helpers import SECRET, body_of, deliver, events_of, signed


def test_deliveries_to_the_standby_are_counted_on_the_leader_through_the_shared_state(
    tmp_path: Path, sim_factory: Any, clock: Clock, postgres_server: PostgresServer, postgres_url: str
) -> None:
    simulator, api = settled_simulator(sim_factory, clock, 3)
    common = {"BEM_POLL_INTERVAL": "60s", "BEM_LEADER_LEASE": "3s", "BEM_WEBHOOK_SECRET": SECRET}
    replicas = Replicas(api, postgres_url, tmp_path, common)
    try:
        leader, standby, hooks = listening_pair(replicas)
        hook = hooks[standby]
        wait_until(lambda: httpx.get(hook, timeout=5).status_code == 405, 30, what="the standby's listener")
        first_poll_done(leader, 3)
        polls = cycles(leader)

        calls = create(simulator, 5)
        clock.advance(RUN_OUT)
        for call_id in calls:
            for event in events_of(simulator, call_id):
                assert deliver(hook, event).status_code == 200
        wait_until(lambda: counted(leader) == 8, 30, what="the calls counted on the leader")
        assert cycles(leader) == polls, "a poll cycle ran: the calls were not counted through the hints"
        assert not differences(served(leader), truth(simulator))
        assert leader.samples("bem_exporter_webhook_counted_calls_total")[()] == 5
        assert received(standby)["accepted"] == sum(len(events_of(simulator, c)) for c in calls)
        assert status(standby)["webhooks"]["handover"] == "postgres" and status(standby)["role"] == "standby"
        # A repeat of an event the standby handed over, sent to the leader: a duplicate there
        # too (the shared state knows the event), acted on once.
        repeat = events_of(simulator, calls[0])[0]
        assert deliver(hooks[leader], repeat).text == "duplicate\n"

        # The shared state down: the hint cannot be made safe, so 503 (bem retries); the
        # retry after it is back is accepted and the call counted.
        [late] = create(simulator, 1)
        clock.advance(RUN_OUT)
        event = events_of(simulator, late)[-1]
        body = body_of(event)
        postgres_server.stop("immediate")
        try:
            answer = httpx.post(hook, content=body, headers=signed(body), timeout=30)
            assert answer.status_code == 503
        finally:
            postgres_server.start()
        wait_until(lambda: _accepted(hook, body), 60, interval=1.0, what="the retried delivery accepted")
        wait_until(lambda: counted(_leader(replicas)) == 9, 60, what="the retried call counted")
        assert not differences(served(_leader(replicas)), truth(simulator))
        assert all(SECRET not in replica.log() for replica in replicas.live)
    finally:
        replicas.stop_all()


def _accepted(hook: str, body: bytes) -> bool:
    return httpx.post(hook, content=body, headers=signed(body), timeout=30).status_code == 200


def _leader(replicas: Replicas) -> ExporterProcess:
    return replicas.wait_leader(60)

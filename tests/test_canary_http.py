"""The create request (`BemClient.create_call`, shapes in exporter/bem/create.py) and the canary
against the simulator, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.bem.client import BemClient, ClientHooks
from exporter.bem.create import CreatedCall, CreateError, CreateRequest, input_type_of
from exporter.bem.decode import decode_call_page, decode_trace
from exporter.canary.driver import RECORDER, CanaryDriver, canary_of
from exporter.canary.judge import Canary, is_canary_reference
from exporter.config import CanarySettings
from exporter.pipeline import FinishedCall
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.state.sqlite import SqliteStore
from exporter.state.store import Stored
from exporter.status import StatusBoard

KEY = "sim-key"
DOCUMENT = b"%PDF-1.7 SECRET-CANARY-DOCUMENT"
V3 = "POST /v3/workflows/{workflowName}/call"
V2 = "POST /v2/calls"


class ManualClock:
    def __init__(self, t: float = 1_764_480_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@contextmanager
def simulator(**config: Any) -> Iterator[tuple[Simulator, SimulatorServer, ManualClock]]:
    clock = ManualClock()
    sim = Simulator(SimulatorConfig(arrival_rate=0, **config), clock=clock)
    server = SimulatorServer(sim)
    server.start()
    try:
        yield sim, server, clock
    finally:
        server.stop()


def request(reference: str = "bem-exporter-canary-t1", workflow: str = "invoice-intake") -> CreateRequest:
    return CreateRequest(workflow, reference, DOCUMENT, "pdf")


def client(url: str, version: str = "v3", key: str = KEY, hooks: ClientHooks | None = None) -> BemClient:
    return BemClient(
        url,
        key,
        "v2" if version == "v2" else "v3",
        timeout=5,
        max_concurrency=2,
        max_rps=100,
        max_attempts=4,
        hooks=hooks,
    )


def create(
    url: str, req: CreateRequest, version: str = "v3", key: str = KEY, hooks: ClientHooks | None = None
) -> CreatedCall:
    async def go() -> CreatedCall:
        async with client(url, version, key, hooks) as api:
            return await api.create_call(req)

    return asyncio.run(go())


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_the_created_call_is_listed_with_its_reference(version: str) -> None:
    with simulator() as (sim, server, _clock):
        created = create(server.url, request(), version)
        assert created.reference_id == "bem-exporter-canary-t1"
        assert sim.call_ids() == [created.call_id]
        assert sim.requests[V3 if version == "v3" else V2] == 1
        again = create(server.url, request(), version)
        assert again == created and len(sim) == 1  # the reference makes a repeat harmless


def test_429_and_5xx_are_retried_honouring_retry_after() -> None:
    with simulator() as (sim, server, _clock):
        faults = sim.config.faults
        faults.canary_reject, faults.retry_after = 429, 1
        throttled: list[float] = []

        def answered(endpoint: str, code: str, _seconds: float) -> None:
            # between the tries: a 429 is followed by a 500, then bem accepts the call
            faults.canary_reject = 500 if code == "429" else None

        hooks = ClientHooks(request=answered, throttled=throttled.append)
        created = create(server.url, request(), hooks=hooks)
        assert throttled == [1.0]  # the 429's Retry-After was honoured
        assert sim.responses[(V3, 429)] == 1 and sim.responses[(V3, 500)] == 1 and sim.responses[(V3, 202)] == 1
        assert sim.call_ids() == [created.call_id]


def test_retries_end_in_a_create_error() -> None:
    with simulator() as (sim, server, _clock):
        sim.config.faults.canary_reject = 503
        with pytest.raises(CreateError) as failed:
            create(server.url, request())
        assert failed.value.status == 503 and "after 4 attempts" in str(failed.value)
        assert sim.requests[V3] == 4 and len(sim) == 0


@pytest.mark.parametrize(("status", "words"), [(401, "API key"), (400, "refused")])
def test_a_refusal_is_final(status: int, words: str) -> None:
    with simulator() as (sim, server, _clock):
        sim.config.faults.canary_reject = status
        with pytest.raises(CreateError) as failed:
            create(server.url, request(), key=KEY)
        assert failed.value.status == status and words in str(failed.value)
        assert sim.requests[V3] == 1


def test_a_wrong_key_or_workflow_and_an_unreachable_api() -> None:
    with simulator() as (_sim, server, _clock):
        url = server.url
        with pytest.raises(CreateError) as wrong_key:
            create(url, request(), key="not-the-key")
        with pytest.raises(CreateError) as no_workflow:
            create(url, request(workflow="no-such-workflow"))
    assert wrong_key.value.status == 401 and "not-the-key" not in str(wrong_key.value)
    assert no_workflow.value.status == 404 and "BEM_CANARY_WORKFLOW" in str(no_workflow.value)
    with pytest.raises(CreateError) as unreachable:
        create(url, request())
    assert unreachable.value.status is None and "cannot connect" in str(unreachable.value)
    for error in (wrong_key.value, no_workflow.value, unreachable.value):
        assert "SECRET-CANARY-DOCUMENT" not in str(error) and KEY not in str(error)
    assert "SECRET" not in repr(request())


def test_input_type_of_a_file_name() -> None:
    assert [input_type_of(n) for n in ("a.PDF", "scan.jpg", "notes.txt", "x.exe", "README")] == [
        "pdf",
        "jpeg",
        "text",
        None,
        None,
    ]


def finished_canary_calls(http: httpx.Client, reference: str) -> list[FinishedCall]:
    """The canary's call as the poll path would hand it on: listed, finished, with its trace."""
    page = decode_call_page(http.get("/v3/calls", params={"referenceIDs": reference}).content)
    return [
        FinishedCall(call, decode_trace(http.get(f"/v3/calls/{call.call_id}/trace").content))
        for call in page.calls
        if call.finished
    ]


@pytest.mark.parametrize(("outcome", "result"), [("normal", "success"), ("fail", "failure")])
def test_a_canary_call_is_created_and_judged_when_it_finishes(outcome: str, result: str) -> None:
    with simulator(failure_rate=0.0) as (sim, server, clock):
        sim.config.faults.canary_outcome = outcome  # type: ignore[assignment]
        canary = Canary("invoice-intake", 300.0, 600.0)
        committed: list[bytes] = []

        async def commit(snapshot: bytes) -> None:
            committed.append(snapshot)

        async def tick() -> None:
            async with client(server.url) as http:

                async def submit(reference: str) -> str:
                    return (await http.create_call(request(reference))).call_id

                await canary.tick(clock, submit, commit)

        asyncio.run(tick())
        flight = canary.in_flight
        assert flight is not None and flight.call_id is not None and is_canary_reference(flight.reference_id)
        with httpx.Client(base_url=server.url, headers={"x-api-key": KEY}) as http:
            assert finished_canary_calls(http, flight.reference_id) == []
            clock.t += 550
            batch = finished_canary_calls(http, flight.reference_id)
        assert [f.call.call_id for f in batch] == [flight.call_id]
        committed.append(canary.stage(batch))
        canary.publish()
        assert canary.view().last_result == result and canary.in_flight is None
        restored = Canary("invoice-intake", 300.0, 600.0)
        restored.restore(committed[-1])
        assert restored.snapshot() == canary.snapshot()
        assert all(b"SECRET-CANARY-DOCUMENT" not in snapshot for snapshot in committed)


def test_a_hanging_canary_call_times_out_once() -> None:
    with simulator() as (sim, server, clock):
        sim.config.faults.canary_outcome = "hang"
        canary = Canary("invoice-intake", 300.0, 600.0)
        staged = canary.stage_submission(clock())
        assert staged is not None
        canary.publish()
        created = create(server.url, request(staged[0].reference_id))
        canary.stage_created(created.call_id, clock())
        canary.publish()
        clock.t += 600
        with httpx.Client(base_url=server.url, headers={"x-api-key": KEY}) as http:
            assert finished_canary_calls(http, staged[0].reference_id) == []
        assert canary.stage_timeout(clock()) is not None
        canary.publish()
        assert canary.stage_timeout(clock() + 600) is None
        assert canary.view().last_result == "timeout" and sim.status(created.call_id) == "running"


def test_only_the_leader_creates_and_each_step_is_committed_to_the_state(tmp_path: Path) -> None:
    """The wiring's CanaryDriver with a real SQLite state and the simulator: a standby creates
    nothing; the leader's submission and creation are in the state a restart loads, and /status
    shows them."""
    leader = False
    board = StatusBoard("test")
    settings = CanarySettings("invoice-intake", "canary.pdf", DOCUMENT, interval=300.0, timeout=600.0)

    async def go(url: str) -> Stored:
        nonlocal leader
        store = await SqliteStore.open(str(tmp_path / "state.sqlite"))
        try:
            async with client(url) as api:
                canary = canary_of(settings)
                assert canary is not None
                driver = CanaryDriver(canary, settings, api, store, board=board, is_leader=lambda: leader)
                await driver.tick()
                assert canary.in_flight is None
                leader = True
                await driver.tick()
                await driver.tick()  # one in flight: nothing more to send
            return await store.load()
        finally:
            await store.close()

    with simulator() as (sim, server, _clock):
        stored = asyncio.run(go(server.url))
        assert sim.requests[V3] == 1 and len(sim) == 1
        (call_id,) = sim.call_ids()
    restored = Canary("invoice-intake", 300.0, 600.0)
    restored.restore(stored.snapshots[RECORDER])
    assert restored.in_flight is not None and restored.in_flight.call_id == call_id
    summary = board.snapshot().canary
    assert summary is not None and (summary.workflow, summary.in_flight, summary.last_result) == (
        "invoice-intake",
        True,
        None,
    )
    assert b"SECRET-CANARY-DOCUMENT" not in stored.snapshots[RECORDER]

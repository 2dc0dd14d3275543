"""The canary's decisions, judgements, snapshot and metrics, with real records and a clock the
test moves (no HTTP here: tests/test_canary_http.py runs it against the simulator)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.bem.create import CreateError
from exporter.bem.models import Call, Trace
from exporter.canary.judge import REFERENCE_PREFIX, RESULTS, Canary, is_canary_reference, new_reference
from exporter.pipeline import FinishedCall

T0 = 1_764_480_000.0
INTERVAL = 300.0
TIMEOUT = 600.0
WORKFLOW = "canary-workflow"


def finished(call_id: str, status: str, finished_at: float, reference: str | None = None) -> FinishedCall:
    call = Call(
        call_id=call_id,
        status=status,
        created_at=datetime.fromtimestamp(T0, UTC),
        finished_at=datetime.fromtimestamp(finished_at, UTC),
        reference_id=reference,
        workflow_name=WORKFLOW,
        call_type="workflow",
    )
    return FinishedCall(call, Trace())


def samples(canary: Canary) -> dict[str, float]:
    """The canary's exposition as `name{labels}` -> value."""
    registry = CollectorRegistry()
    registry.register(canary)
    values: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def runs(canary: Canary) -> dict[str, float]:
    values = samples(canary)
    return {r: values[f'bem_canary_runs_total{{result="{r}",workflow_name="{WORKFLOW}"}}'] for r in RESULTS}


def make() -> Canary:
    return Canary(WORKFLOW, INTERVAL, TIMEOUT, reference=lambda now: f"{REFERENCE_PREFIX}{int(now)}")


def submitted(canary: Canary, now: float = T0, call_id: str = "cl_1") -> None:
    staged = canary.stage_submission(now)
    assert staged is not None
    canary.publish()
    canary.stage_created(call_id, now + 1)
    canary.publish()


def test_all_results_start_at_zero_and_nothing_else_is_shown() -> None:
    canary = make()
    assert runs(canary) == dict.fromkeys(RESULTS, 0.0)
    values = samples(canary)
    assert values[f'bem_canary_duration_seconds_count{{workflow_name="{WORKFLOW}"}}'] == 0
    assert not any(name.startswith(("bem_canary_success", "bem_canary_last_success")) for name in values)


def test_one_call_in_flight_and_the_interval_counts_from_the_previous_submission() -> None:
    canary = make()
    assert canary.due(T0)
    staged = canary.stage_submission(T0)
    assert staged is not None
    flight, _snapshot = staged
    assert flight.reference_id == f"{REFERENCE_PREFIX}{int(T0)}" and flight.submitted_at == T0
    assert canary.in_flight is None  # not visible before the commit
    canary.publish()
    assert canary.in_flight == flight and canary.unsent() == flight
    assert canary.stage_submission(T0 + 10 * INTERVAL) is None  # never two in flight
    canary.stage_created("cl_1", T0 + 1)
    canary.publish()
    assert canary.unsent() is None and canary.in_flight is not None and canary.in_flight.call_id == "cl_1"
    canary.stage(finished_batch := [finished("cl_1", "completed", T0 + 30)])
    canary.publish()
    assert finished_batch and canary.in_flight is None
    assert not canary.due(T0 + INTERVAL - 1) and canary.due(T0 + INTERVAL)


def test_success_counts_the_duration_from_submission_to_finish() -> None:
    canary = make()
    submitted(canary)
    other = finished("cl_other", "failed", T0 + 5)
    canary.stage([other])
    canary.publish()
    assert runs(canary)["failure"] == 0  # someone else's call
    canary.stage([other, finished("cl_1", "completed", T0 + 42.5)])
    canary.publish()
    values = samples(canary)
    label = f'{{workflow_name="{WORKFLOW}"}}'
    assert runs(canary) == {"success": 1, "failure": 0, "timeout": 0, "submit_error": 0}
    assert values[f"bem_canary_duration_seconds_sum{label}"] == 42.5
    assert values[f'bem_canary_duration_seconds_bucket{{le="30.0",workflow_name="{WORKFLOW}"}}'] == 0
    assert values[f'bem_canary_duration_seconds_bucket{{le="60.0",workflow_name="{WORKFLOW}"}}'] == 1
    assert values[f"bem_canary_success{label}"] == 1
    assert values[f"bem_canary_last_success_timestamp_seconds{label}"] == T0 + 42.5
    assert canary.view().last_result == "success"


def test_failure_sets_success_to_zero_and_keeps_the_last_success() -> None:
    canary = make()
    submitted(canary)
    canary.stage([finished("cl_1", "completed", T0 + 20)])
    canary.publish()
    submitted(canary, T0 + INTERVAL, "cl_2")
    canary.stage([finished("cl_2", "failed", T0 + INTERVAL + 20)])
    canary.publish()
    values = samples(canary)
    assert runs(canary)["failure"] == 1 and runs(canary)["success"] == 1
    assert values[f'bem_canary_success{{workflow_name="{WORKFLOW}"}}'] == 0
    assert values[f'bem_canary_last_success_timestamp_seconds{{workflow_name="{WORKFLOW}"}}'] == T0 + 20
    assert values[f'bem_canary_duration_seconds_count{{workflow_name="{WORKFLOW}"}}'] == 2


def test_timeout_is_judged_once_and_a_later_finish_is_not_a_second_result() -> None:
    canary = make()
    submitted(canary)
    assert canary.stage_timeout(T0 + TIMEOUT - 1) is None
    assert canary.stage_timeout(T0 + TIMEOUT) is not None
    canary.publish()
    assert canary.stage_timeout(T0 + 2 * TIMEOUT) is None
    canary.stage([finished("cl_1", "completed", T0 + TIMEOUT + 5)])
    canary.publish()
    assert runs(canary) == {"success": 0, "failure": 0, "timeout": 1, "submit_error": 0}
    assert "bem_canary_success" not in str(samples(canary))
    assert canary.due(T0 + TIMEOUT)  # judged, and the interval has passed


def test_a_discarded_stage_changes_nothing() -> None:
    canary = make()
    submitted(canary)
    before = canary.snapshot()
    canary.stage([finished("cl_1", "completed", T0 + 9)])
    canary.discard()
    assert canary.snapshot() == before and runs(canary)["success"] == 0
    assert canary.stage_timeout(T0 + TIMEOUT) is not None
    canary.discard()
    assert canary.in_flight is not None


def test_a_call_created_but_not_yet_known_is_matched_by_its_reference() -> None:
    canary = make()
    staged = canary.stage_submission(T0)
    assert staged is not None
    canary.publish()
    canary.stage([finished("cl_9", "completed", T0 + 3, reference=staged[0].reference_id)])
    canary.publish()
    assert runs(canary)["success"] == 1


class Store:
    """The durable state: what was committed, as a kill -9 would leave it."""

    def __init__(self) -> None:
        self.snapshots: list[bytes] = []
        self.fail = False

    async def commit(self, snapshot: bytes) -> None:
        if self.fail:
            raise OSError("disk full")
        self.snapshots.append(snapshot)


class Creator:
    def __init__(self, *answers: str | BaseException) -> None:
        self.answers = list(answers)
        self.references: list[str] = []

    async def __call__(self, reference_id: str) -> str:
        self.references.append(reference_id)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def tick(canary: Canary, clock: Clock, create: Creator, store: Store) -> None:
    asyncio.run(canary.tick(clock, create, store.commit))


def test_tick_submits_when_due_and_counts_a_submit_error() -> None:
    canary, clock, store = make(), Clock(), Store()
    create = Creator(CreateError("POST /v2/calls: HTTP 500 (after 4 attempts)", 500), "cl_2")
    tick(canary, clock, create, store)
    assert runs(canary)["submit_error"] == 1 and canary.in_flight is None
    assert len(store.snapshots) == 2  # the submission, then its judgement
    clock.t += INTERVAL - 1
    tick(canary, clock, create, store)
    assert len(create.references) == 1  # not due yet
    clock.t += 1
    tick(canary, clock, create, store)
    assert canary.in_flight is not None and canary.in_flight.call_id == "cl_2"
    assert len(set(create.references)) == 2


def test_a_failed_commit_advances_nothing() -> None:
    canary, clock, store = make(), Clock(), Store()
    store.fail = True
    with pytest.raises(OSError):
        tick(canary, clock, Creator("cl_1"), store)
    assert canary.in_flight is None and canary.due(T0) and canary.snapshot() == make().snapshot()


def test_after_kill_9_the_same_submission_is_sent_again_and_judged_once() -> None:
    first, clock, store = make(), Clock(), Store()

    class Killed(BaseException):
        pass

    with pytest.raises(Killed):
        tick(first, clock, Creator(Killed()), store)  # dies after committing the submission
    reference = first.in_flight.reference_id if first.in_flight else ""
    clock.t += 30
    second = make()
    second.restore(store.snapshots[-1])
    create = Creator("cl_1")
    tick(second, clock, create, store)
    assert create.references == [reference]  # no second call for the same interval
    restarted = make()
    restarted.restore(store.snapshots[-1])
    restarted.stage([finished("cl_1", "completed", T0 + 60)])
    restarted.publish()
    again = make()
    again.restore(restarted.snapshot())
    again.stage([finished("cl_1", "completed", T0 + 60)])
    again.publish()
    assert runs(again)["success"] == 1
    assert samples(again)[f'bem_canary_duration_seconds_sum{{workflow_name="{WORKFLOW}"}}'] == 60


def test_an_unreadable_snapshot_starts_afresh(caplog: pytest.LogCaptureFixture) -> None:
    canary = make()
    submitted(canary)
    canary.restore(b"{not json")
    assert canary.in_flight is not None  # kept what it had
    fresh = make()
    fresh.restore(b"\x00garbage")
    assert fresh.in_flight is None and "unreadable" in caplog.text


def test_a_snapshot_of_another_workflow_is_not_taken_over() -> None:
    canary = make()
    submitted(canary)
    canary.stage([finished("cl_1", "completed", T0 + 9)])
    canary.publish()
    other = Canary("another-workflow", INTERVAL, TIMEOUT)
    other.restore(canary.snapshot())
    assert other.due(T0) and other.view().last_result is None
    assert samples(other)['bem_canary_runs_total{result="success",workflow_name="another-workflow"}'] == 0


def test_references_are_fresh_and_recognisable() -> None:
    references = {new_reference(T0) for _ in range(50)}
    assert len(references) == 50
    assert all(is_canary_reference(r) and r.startswith("bem-exporter-canary-20251130T") for r in references)
    assert not is_canary_reference("INV-2024-000001") and not is_canary_reference(None)


@pytest.mark.parametrize(("interval", "timeout"), [(0.0, 60.0), (60.0, -1.0)])
def test_interval_and_timeout_must_be_positive(interval: float, timeout: float) -> None:
    with pytest.raises(ValueError, match="interval and timeout"):
        Canary(WORKFLOW, interval, timeout)

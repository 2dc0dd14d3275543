"""The synthetic canary: one call of a dedicated workflow every interval, judged once.

It decides when a canary call is due, names it (`callReferenceID` `bem-exporter-canary-...`),
and judges it: `success` or `failure` when the poll path hands it on finished, `timeout` when
it has not finished `timeout` seconds after it was submitted (a later finish is then an
ordinary call, not a second result), `submit_error` when the create request failed after its
retries. Its metrics (`bem_canary_*`) are those judgements; it is their Collector.

Exactly once across kill -9: everything the canary knows (the call in flight, the last
submission time, the counts) is one snapshot, committed with the durable state before it
becomes visible, with the handshake of `exporter.pipeline` (stage, commit, publish or
discard). In a batch, the canary is a `CallRecorder` whose snapshot is committed with the
batch that finishes its call. Outside batches (a submission, its creation, its failure, a
timeout) `tick()` stages, commits through the given callable, then publishes.

The submission is committed *before* the create request is sent, with its reference: if the
process dies before the answer is committed, the next start sends the same reference again,
and bem answers with the call it already created; so a restart never creates a second call
for the same interval.

Stages do not nest: the batch commit and `tick()` must not interleave their stage -> commit ->
publish. `tick()` holds `commit_lock` for each of its own; a batch commit that may run while a
tick is under way takes it too.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

import msgspec
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from exporter.bem.create import CreateError
from exporter.bem.models import Call
from exporter.pipeline import FinishedCall

log = logging.getLogger(__name__)

Result = Literal["success", "failure", "timeout", "submit_error"]
RESULTS: Final[tuple[Result, ...]] = get_args(Result)
REFERENCE_PREFIX: Final = "bem-exporter-canary-"
DURATION_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0)

RUNS: Final = "bem_canary_runs_total"
DURATION: Final = "bem_canary_duration_seconds"
SUCCESS: Final = "bem_canary_success"
LAST_SUCCESS: Final = "bem_canary_last_success_timestamp_seconds"


def is_canary_reference(reference_id: str | None) -> bool:
    """Whether a call was created by a canary (its spans carry `bem.synthetic=true`)."""
    return reference_id is not None and reference_id.startswith(REFERENCE_PREFIX)


def new_reference(now: float) -> str:
    """A fresh `callReferenceID`: the prefix, the submission time (UTC) and random hex."""
    return f"{REFERENCE_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}-{secrets.token_hex(4)}"


class InFlight(msgspec.Struct, frozen=True):
    """The canary call not yet judged. `call_id` is None until its creation is committed."""

    reference_id: str
    submitted_at: float
    """When the create request was first sent (our clock): the start of its duration and timeout."""
    call_id: str | None = None
    created_at: float | None = None
    """When bem's answer to the create request was received (our clock)."""


class _State(msgspec.Struct, frozen=True):
    """All the canary knows; the snapshot is this, as JSON."""

    version: int = 1
    workflow_name: str = ""
    last_submitted_at: float | None = None
    in_flight: InFlight | None = None
    runs: dict[str, int] = msgspec.field(default_factory=dict)
    bucket_counts: tuple[int, ...] = ()
    """Non-cumulative counts of the duration buckets; the last one is +Inf."""
    duration_sum: float = 0.0
    last_finished_ok: bool | None = None
    last_success_at: float | None = None
    """finishedAt of the last canary call that completed."""
    last_result: Result | None = None
    last_duration: float | None = None
    """Seconds from the submission to the finishedAt of the last canary call that finished."""


_encode = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(_State).decode


@dataclass(frozen=True, slots=True)
class CanaryView:
    """What `/status` shows of the canary."""

    workflow_name: str
    in_flight: InFlight | None
    last_result: Result | None
    last_success_at: float | None
    next_due_at: float | None
    last_duration: float | None


class Canary:
    """The canary of one workflow: a `CallRecorder` of its own metrics, and the decisions."""

    def __init__(
        self,
        workflow_name: str,
        interval: float,
        timeout: float,
        *,
        buckets: tuple[float, ...] = DURATION_BUCKETS,
        reference: Callable[[float], str] = new_reference,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("the canary's interval and timeout must be > 0")
        self.workflow_name = workflow_name
        self.interval = interval
        self.timeout = timeout
        self._buckets = buckets
        self._reference = reference
        self._published = self._empty()
        self._pending: _State | None = None
        self.commit_lock = asyncio.Lock()

    def _empty(self) -> _State:
        return _State(
            workflow_name=self.workflow_name,
            runs=dict.fromkeys(RESULTS, 0),
            bucket_counts=(0,) * (len(self._buckets) + 1),
        )

    # --- what is due -----------------------------------------------------------------------------

    @property
    def in_flight(self) -> InFlight | None:
        return self._published.in_flight

    def next_due_at(self) -> float | None:
        """When the next canary call may be submitted; None while one is in flight."""
        state = self._published
        if state.in_flight is not None:
            return None
        return 0.0 if state.last_submitted_at is None else state.last_submitted_at + self.interval

    def due(self, now: float) -> bool:
        due_at = self.next_due_at()
        return due_at is not None and now >= due_at

    def unsent(self) -> InFlight | None:
        """A submission committed but whose creation never was (the process stopped): send its
        reference again."""
        flight = self._published.in_flight
        return flight if flight is not None and flight.call_id is None else None

    def view(self) -> CanaryView:
        state = self._published
        return CanaryView(
            self.workflow_name,
            state.in_flight,
            state.last_result,
            state.last_success_at,
            self.next_due_at(),
            state.last_duration,
        )

    # --- events outside batches: each returns the snapshot to commit, then publish() or discard()

    def stage_submission(self, now: float) -> tuple[InFlight, bytes] | None:
        """A new canary call, when one is due: the submission to send and the snapshot to
        commit before sending it."""
        if not self.due(now):
            return None
        flight = InFlight(self._reference(now), now)
        return flight, self._stage(msgspec.structs.replace(self._published, in_flight=flight, last_submitted_at=now))

    def stage_created(self, call_id: str, now: float) -> bytes:
        """bem created the call in flight."""
        flight = self._require_in_flight()
        created = msgspec.structs.replace(flight, call_id=call_id, created_at=now)
        return self._stage(msgspec.structs.replace(self._published, in_flight=created))

    def stage_submit_error(self) -> bytes:
        """The create request of the call in flight failed after its retries."""
        self._require_in_flight()
        return self._stage(self._judged(self._published, "submit_error"))

    def stage_timeout(self, now: float) -> bytes | None:
        """The call in flight, when it has not finished `timeout` after its submission."""
        flight = self._published.in_flight
        if flight is None or flight.call_id is None or now < flight.submitted_at + self.timeout:
            return None
        return self._stage(self._judged(self._published, "timeout"))

    def _require_in_flight(self) -> InFlight:
        flight = self._published.in_flight
        if flight is None:
            raise RuntimeError("no canary call is in flight")
        return flight

    # --- CallRecorder ------------------------------------------------------------------------------

    def stage(self, batch: Sequence[FinishedCall]) -> bytes:
        """Judge the call in flight if the batch finishes it."""
        state = self._published
        flight = state.in_flight
        if flight is not None:
            for finished in batch:
                if _is_the_call(finished.call, flight):
                    state = self._finished(state, flight, finished.call)
                    break
        return self._stage(state)

    def publish(self) -> None:
        if self._pending is not None:
            self._published, self._pending = self._pending, None

    def discard(self) -> None:
        self._pending = None

    def restore(self, snapshot: bytes) -> None:
        """Start from a snapshot committed by an earlier process. An unreadable one is logged and
        ignored: the canary then starts afresh."""
        self._pending = None
        if not snapshot:
            return
        try:
            state = _decode_state(snapshot)
        except msgspec.DecodeError:
            log.error("the canary's saved state is unreadable; the canary starts afresh")
            return
        if state.workflow_name != self.workflow_name:
            # its counts and its call in flight belong to another workflow's series
            log.warning("the canary's workflow changed; its counts start at zero")
            self._published = self._empty()
            return
        if len(state.bucket_counts) != len(self._buckets) + 1:
            log.warning("the canary's duration buckets changed; its duration histogram restarts at zero")
            state = msgspec.structs.replace(state, bucket_counts=self._empty().bucket_counts, duration_sum=0.0)
        self._published = msgspec.structs.replace(state, runs={**dict.fromkeys(RESULTS, 0), **state.runs})

    def snapshot(self) -> bytes:
        """The published state (what a restart would restore)."""
        return _encode(self._published)

    # --- driving it ------------------------------------------------------------------------------

    async def tick(
        self,
        now: Callable[[], float],
        create: Callable[[str], Awaitable[str]],
        commit: Callable[[bytes], Awaitable[None]],
    ) -> None:
        """One step outside the batches: judge a timeout, then submit the call that is due (or
        the one a previous process never saw created). `create(reference_id)` returns the new
        call's id or raises CreateError (after its own retries); `commit(snapshot)` persists a snapshot or
        raises, in which case nothing advances."""
        timed_out = self.stage_timeout(now())
        if timed_out is not None:
            await self._commit(timed_out, commit)
        flight = self.unsent()
        if flight is None:
            staged = self.stage_submission(now())
            if staged is None:
                return
            flight, snapshot = staged
            await self._commit(snapshot, commit)
        try:
            call_id = await create(flight.reference_id)
        except CreateError as error:
            log.warning("canary: the call could not be created: %s", error, extra={"workflow": self.workflow_name})
            await self._commit(self.stage_submit_error(), commit)
            return
        await self._commit(self.stage_created(call_id, now()), commit)
        log.info("canary: call created", extra={"workflow": self.workflow_name, "call_id": call_id})

    async def _commit(self, snapshot: bytes, commit: Callable[[bytes], Awaitable[None]]) -> None:
        async with self.commit_lock:
            try:
                await commit(snapshot)
            except BaseException:
                self.discard()
                raise
            self.publish()

    # --- judging -----------------------------------------------------------------------------------

    def _stage(self, state: _State) -> bytes:
        if self._pending is not None:
            log.debug("canary: an unpublished stage was replaced (neither published nor discarded)")
        self._pending = state
        return _encode(state)

    def _judged(self, state: _State, result: Result, **changes: object) -> _State:
        runs = dict(state.runs)
        runs[result] = runs.get(result, 0) + 1
        log.info("canary: %s", result, extra={"workflow": self.workflow_name})
        return msgspec.structs.replace(state, in_flight=None, runs=runs, last_result=result, **changes)

    def _finished(self, state: _State, flight: InFlight, call: Call) -> _State:
        completed = call.status == "completed"
        changes: dict[str, object] = {"last_finished_ok": completed}
        if call.finished_at is not None:
            finished_at = call.finished_at.timestamp()
            changes.update(self._observed(state, max(finished_at - flight.submitted_at, 0.0)))
            if completed:
                changes["last_success_at"] = finished_at
        return self._judged(state, "success" if completed else "failure", **changes)

    def _observed(self, state: _State, seconds: float) -> dict[str, object]:
        index = next((k for k, bound in enumerate(self._buckets) if seconds <= bound), len(self._buckets))
        counts = list(state.bucket_counts)
        counts[index] += 1
        return {"bucket_counts": tuple(counts), "duration_sum": state.duration_sum + seconds, "last_duration": seconds}

    # --- Collector ---------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        state = self._published
        labels = [self.workflow_name]
        runs = CounterMetricFamily(
            RUNS, "Canary calls judged, by result, each exactly once.", labels=["workflow_name", "result"]
        )
        for result in RESULTS:
            runs.add_metric([*labels, result], state.runs.get(result, 0))
        yield runs
        yield self._duration_family(state, labels)
        if state.last_finished_ok is not None:
            gauge = GaugeMetricFamily(
                SUCCESS, "1 if the last finished canary call completed, else 0.", labels=["workflow_name"]
            )
            gauge.add_metric(labels, 1.0 if state.last_finished_ok else 0.0)
            yield gauge
        if state.last_success_at is not None:
            stamp = GaugeMetricFamily(
                LAST_SUCCESS, "finishedAt of the last canary call that completed.", labels=["workflow_name"]
            )
            stamp.add_metric(labels, state.last_success_at)
            yield stamp

    def _duration_family(self, state: _State, labels: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            DURATION,
            "Canary calls that finished: from the create request to the call's finishedAt.",
            labels=["workflow_name"],
        )
        cumulative, total = [], 0
        for bound, count in zip((*self._buckets, float("inf")), state.bucket_counts, strict=True):
            total += count
            cumulative.append((_le(bound), float(total)))
        family.add_metric(labels, cumulative, state.duration_sum)
        return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _is_the_call(call: Call, flight: InFlight) -> bool:
    if flight.call_id is not None:
        return call.call_id == flight.call_id
    return call.reference_id == flight.reference_id

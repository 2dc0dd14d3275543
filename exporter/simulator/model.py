"""The simulator's model: every call, indexed for the Calls API's queries, rendered at the clock.

No HTTP here. Every public method first lets the clock act (new arrivals, calls that finished),
so what it returns is the state at the current clock. Thread-safe: the HTTP server runs in its
own thread while tests and benchmarks read the ground truth.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from .catalog import FUNCTIONS_BY_ID, FUNCTIONS_BY_NAME, WORKFLOWS_BY_ID, WORKFLOWS_BY_NAME, Function, Workflow
from .config import CanaryOutcome, SimulatorConfig
from .query import ListQuery, QueryError
from .subscriptions import Subscriptions
from .webhook_log import DeliveryLog
from .workload import JSON, CallHeader, Plan, PlanEvent, Workload, build_plan, call_doc, iso, trace_doc, v2_call_doc

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

REQUEST_STARTS_KEPT = 200_000
"""Arrival times the simulator keeps (a few minutes at the highest rates benchmarked)."""
_COUNTABLE = frozenset({"statuses", "workflow_names", "workflow_ids", "call_types", "function_names", "function_ids"})
"""Filters whose totalCount comes from the per-group counters instead of a scan."""
_KEYED = ("call_types", "workflow_names", "workflow_ids", "function_names", "function_ids")


class UnknownTargetError(LookupError):
    """No workflow or function of that name or ID (answered 404)."""


class _Group:
    """Calls sharing callType and workflow/function identity; counts of the finished ones."""

    __slots__ = ("completed", "failed", "sample")

    def __init__(self, sample: CallHeader) -> None:
        self.sample = sample
        self.completed = 0
        self.failed = 0


@dataclass(frozen=True, slots=True)
class Timeline:
    """What webhook delivery needs of one call: its events (by creation time) and finishedAt."""

    finish_ms: int
    events: list[PlanEvent]


class _Rendered:
    """Encoded JSON of a finished call (which no longer changes)."""

    __slots__ = ("call", "size", "trace", "v2_full", "v2_list")

    def __init__(self, call: bytes, trace: bytes) -> None:
        self.call = call
        self.trace = trace
        self.v2_list: bytes | None = None
        self.v2_full: bytes | None = None
        self.size = len(call) + len(trace)


def _merged(lists: list[list[int]]) -> list[int]:
    """Ascending lists of disjoint positions, merged."""
    return lists[0] if len(lists) == 1 else list(heapq.merge(*lists))


def _group_key(h: CallHeader) -> tuple[str, str, str]:
    if h.workflow is not None:
        return (h.call_type, "w", h.workflow.name)
    assert h.function is not None
    return (h.call_type, "f", h.function.name)


class Simulator:
    """A seeded bem account whose calls arrive, run and finish with the clock."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        config.validate()
        self.config = config
        self._clock = clock
        self._lock = threading.RLock()
        self._workload = Workload(config)
        self._headers: list[CallHeader] = []
        self._positions: dict[str, int] = {}
        self._by_reference: dict[str, list[int]] = {}
        self._by_key: dict[tuple[str, str], list[int]] = {}
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._inflight: list[int] = []
        """Positions of the calls not yet finished, ascending."""
        self._finishing: list[tuple[int, int]] = []
        """Heap of (finish_ms, position) of the calls not yet finished."""
        self._live_plans: dict[int, Plan] = {}
        self._rendered: dict[int, _Rendered] = {}
        self._rendered_bytes = 0
        self._cache_budget = config.cache_mb * 1024 * 1024
        self.requests: Counter[str] = Counter()
        """API requests received per endpoint (e.g. `GET /v3/calls`), faulted ones included."""
        self.responses: Counter[tuple[str, int]] = Counter()
        """Responses per (endpoint, HTTP status); status 0 = connection dropped (`Faults.down`)."""
        self.request_starts: deque[float] = deque(maxlen=REQUEST_STARTS_KEPT)
        """Monotonic arrival times of the latest requests (to count requests per second)."""
        self.plans_built = 0
        self.subscriptions = Subscriptions(config.seed)
        """The account's webhook subscriptions (`/v3/subscriptions`)."""
        self.deliveries = DeliveryLog()
        """Every webhook delivery attempt, and what became of each delivery."""

        began = time.perf_counter()
        now = self.now_ms()
        for created in self._workload.prefill_times(config.prefill, now):
            self._add(self._workload.header(len(self._headers), created), now)
        self._next_arrival_ms = now + self._workload.next_gap_ms()
        if config.prefill:
            log.debug("prefilled %d calls in %.2fs", config.prefill, time.perf_counter() - began)

    # -- clock ----------------------------------------------------------------------------------

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def tick(self) -> None:
        """Create the calls whose arrival time has come and retire those that finished."""
        with self._lock:
            self._tick(self.now_ms())

    def _tick(self, now: int) -> int:
        while self._next_arrival_ms <= now:
            created = int(self._next_arrival_ms)
            self._add(self._workload.header(len(self._headers), created), now)
            self._next_arrival_ms += self._workload.next_gap_ms()
        heap = self._finishing
        while heap and heap[0][0] <= now:
            _, position = heapq.heappop(heap)
            del self._inflight[bisect.bisect_left(self._inflight, position)]
            h = self._headers[position]
            self._count_finished(h)
            plan = self._live_plans.pop(position, None)
            if plan is not None and position not in self._rendered:
                # someone watched it run: its final form is likely wanted next
                self._render_final(h, plan)
        return now

    def _now(self) -> int:
        return self._tick(self.now_ms())

    def _add(self, h: CallHeader, now: int) -> None:
        position = h.index
        self._headers.append(h)
        self._positions[h.call_id] = position
        if h.reference_id is not None:
            self._by_reference.setdefault(h.reference_id, []).append(position)
        by_key = self._by_key
        for key in self._keys(h):
            entry = by_key.get(key)
            if entry is None:
                by_key[key] = [position]
            else:
                entry.append(position)
        group_key = _group_key(h)
        if group_key not in self._groups:
            self._groups[group_key] = _Group(h)
        if h.finish_ms <= now:
            self._count_finished(h)
        else:
            self._inflight.append(position)
            heapq.heappush(self._finishing, (h.finish_ms, position))

    @staticmethod
    def _keys(h: CallHeader) -> Iterator[tuple[str, str]]:
        yield ("call_types", h.call_type)
        if h.workflow is not None:
            yield ("workflow_names", h.workflow.name)
            yield ("workflow_ids", h.workflow.id)
        if h.function is not None:
            yield ("function_names", h.function.name)
            yield ("function_ids", h.function.id)

    def _count_finished(self, h: CallHeader) -> None:
        group = self._groups[_group_key(h)]
        if h.failed:
            group.failed += 1
        else:
            group.completed += 1

    # -- creating calls -------------------------------------------------------------------------

    def create_call(
        self,
        workflow_name: str | None = None,
        reference_id: str | None = None,
        *,
        function_name: str | None = None,
        workflow_id: str | None = None,
        function_id: str | None = None,
        call_type: str | None = None,
        input_type: str | None = None,
        batch: int = 0,
        v2: bool = False,
        outcome: CanaryOutcome = "normal",
    ) -> JSON:
        """Create a call now (pending) and return it as v3 JSON (as the v2 listing shows it if `v2`).

        With no workflow or function named, the workload picks one. A function (by name or ID)
        makes a `direct_function` call (or `adhoc_function` when `call_type` says so).
        `outcome` `fail` makes the call end failed, `hang` makes it never finish.
        Raises UnknownTargetError for a workflow or function that does not exist.
        """
        workflow, function = self.resolve(workflow_name, workflow_id, function_name, function_id)
        with self._lock:
            now = self._now()
            h = self._workload.header(
                len(self._headers),
                now,
                workflow=workflow,
                function=function,
                call_type=call_type,
                reference_id=reference_id,
                input_type=input_type,
                batch=batch,
                failed=True if outcome == "fail" else None,
                hang=outcome == "hang",
            )
            self._add(h, now)
            return v2_call_doc(h, None, now, full=False) if v2 else call_doc(h, None, now)

    def submit(
        self, workflow_name: str | None, reference_id: str | None, *, v2: bool = False, **create: Any
    ) -> tuple[JSON, bool]:
        """What bem's create endpoints do: (the call, True) for a new call; (the existing call,
        False) when a call was already created with this callReferenceID. `create` takes the
        keyword arguments of `create_call`."""
        with self._lock:
            existing = self._by_reference.get(reference_id) if reference_id is not None else None
            if not existing:
                return self.create_call(workflow_name, reference_id, v2=v2, **create), True
            now = self._now()
            h = self._headers[existing[0]]
            encoded = self._v2_bytes(h, now, False) if v2 else self._call_bytes(h, now)
            return _decode(encoded), False

    @staticmethod
    def resolve(
        workflow_name: str | None = None,
        workflow_id: str | None = None,
        function_name: str | None = None,
        function_id: str | None = None,
    ) -> tuple[Workflow | None, Function | None]:
        """The workflow or function named (first given wins); UnknownTargetError if none such exists."""
        if workflow_name is not None:
            if workflow_name not in WORKFLOWS_BY_NAME:
                raise UnknownTargetError(f"workflow {workflow_name!r} not found")
            return WORKFLOWS_BY_NAME[workflow_name], None
        if workflow_id is not None:
            if workflow_id not in WORKFLOWS_BY_ID:
                raise UnknownTargetError(f"workflow {workflow_id!r} not found")
            return WORKFLOWS_BY_ID[workflow_id], None
        if function_name is not None:
            if function_name not in FUNCTIONS_BY_NAME:
                raise UnknownTargetError(f"function {function_name!r} not found")
            return None, FUNCTIONS_BY_NAME[function_name]
        if function_id is not None:
            if function_id not in FUNCTIONS_BY_ID:
                raise UnknownTargetError(f"function {function_id!r} not found")
            return None, FUNCTIONS_BY_ID[function_id]
        return None, None

    # -- rendering ------------------------------------------------------------------------------

    def _plan(self, h: CallHeader) -> Plan:
        self.plans_built += 1
        return build_plan(h, self.config.max_function_calls)

    def _finished(self, h: CallHeader) -> _Rendered:
        rendered = self._rendered.get(h.index)
        if rendered is None:
            rendered = self._render_final(h, self._plan(h))
        return rendered

    def _render_final(self, h: CallHeader, plan: Plan) -> _Rendered:
        now = h.finish_ms
        rendered = _Rendered(_encode(call_doc(h, plan, now)), _encode(trace_doc(h, plan, now)))
        self._remember(h.index, rendered, rendered.size)
        return rendered

    def _remember(self, position: int, rendered: _Rendered, added: int) -> None:
        if position in self._rendered:
            self._rendered_bytes += added
        else:
            self._rendered[position] = rendered
            self._rendered_bytes += rendered.size
        while self._rendered_bytes > self._cache_budget and self._rendered:
            oldest = next(iter(self._rendered))
            self._rendered_bytes -= self._rendered.pop(oldest).size

    def _live_plan(self, h: CallHeader) -> Plan:
        plan = self._live_plans.get(h.index)
        if plan is None:
            plan = self._live_plans[h.index] = self._plan(h)
        return plan

    def _call_bytes(self, h: CallHeader, now: int) -> bytes:
        if now >= h.finish_ms:
            return self._finished(h).call
        return _encode(call_doc(h, None, now))

    def _trace_bytes(self, h: CallHeader, now: int) -> bytes:
        if now >= h.finish_ms:
            return self._finished(h).trace
        if now < h.start_ms:
            return _encode(trace_doc(h, None, now))
        return _encode(trace_doc(h, self._live_plan(h), now))

    def _v2_bytes(self, h: CallHeader, now: int, full: bool) -> bytes:
        if now >= h.finish_ms:
            rendered = self._rendered.get(h.index)
            cached = None if rendered is None else rendered.v2_full if full else rendered.v2_list
            if cached is not None:
                return cached
            plan = self._plan(h)
            if rendered is None:
                rendered = self._render_final(h, plan)
            cached = _encode(v2_call_doc(h, plan, h.finish_ms, full=full))
            if full:
                rendered.v2_full = cached
            else:
                rendered.v2_list = cached
            rendered.size += len(cached)
            self._remember(h.index, rendered, len(cached))
            return cached
        live = self._live_plan(h) if now >= h.start_ms else None
        return _encode(v2_call_doc(h, live, now, full=full))

    def _header(self, call_id: str) -> CallHeader | None:
        position = self._positions.get(call_id)
        return None if position is None else self._headers[position]

    # -- the API's queries (encoded JSON) -------------------------------------------------------

    def call_json(self, call_id: str) -> bytes | None:
        """The v3 call as JSON, or None when no such call exists."""
        with self._lock:
            now = self._now()
            h = self._header(call_id)
            return None if h is None else self._call_bytes(h, now)

    def trace_json(self, call_id: str) -> bytes | None:
        """The v3 trace `{functionCalls, events}` as JSON, or None when no such call exists."""
        with self._lock:
            now = self._now()
            h = self._header(call_id)
            return None if h is None else self._trace_bytes(h, now)

    def v2_call_json(self, call_id: str, *, full: bool = True) -> bytes | None:
        """The v2 call (with `functionCalls`; with `outputs` and `trace` when `full`) as JSON."""
        with self._lock:
            now = self._now()
            h = self._header(call_id)
            return None if h is None else self._v2_bytes(h, now, full)

    def list_calls(self, query: ListQuery, *, v2: bool = False) -> tuple[list[bytes], int]:
        """One page of the listing (each call as JSON) and the listing's totalCount.

        Raises QueryError for a cursor that names no call.
        """
        with self._lock:
            now = self._now()
            positions, total = self._select(query, now)
            headers = self._headers
            if v2:
                return [self._v2_bytes(headers[p], now, False) for p in positions], total
            return [self._call_bytes(headers[p], now) for p in positions], total

    # -- selection ------------------------------------------------------------------------------

    def _checks(self, q: ListQuery, now: int, skip: str | None) -> list[tuple[str, Callable[[CallHeader], bool]]]:
        checks: list[tuple[str, Callable[[CallHeader], bool]]] = []

        def add(name: str, check: Callable[[CallHeader], bool]) -> None:
            if name != skip:
                checks.append((name, check))

        if q.call_ids is not None:
            ids = q.call_ids
            add("call_ids", lambda h: h.call_id in ids)
        if q.reference_ids is not None:
            refs = q.reference_ids
            add("reference_ids", lambda h: h.reference_id in refs)
        if q.call_types is not None:
            types = q.call_types
            add("call_types", lambda h: h.call_type in types)
        if q.workflow_names is not None:
            wf_names = q.workflow_names
            add("workflow_names", lambda h: h.workflow is not None and h.workflow.name in wf_names)
        if q.workflow_ids is not None:
            wf_ids = q.workflow_ids
            add("workflow_ids", lambda h: h.workflow is not None and h.workflow.id in wf_ids)
        if q.function_names is not None:
            fn_names = q.function_names
            add("function_names", lambda h: h.function is not None and h.function.name in fn_names)
        if q.function_ids is not None:
            fn_ids = q.function_ids
            add("function_ids", lambda h: h.function is not None and h.function.id in fn_ids)
        if q.reference_substring is not None:
            sub = q.reference_substring
            add("reference_substring", lambda h: h.reference_id is not None and sub in h.reference_id.lower())
        if q.statuses is not None:
            statuses = q.statuses
            add("statuses", lambda h: h.status_at(now) in statuses)
        return checks

    def _candidates(self, q: ListQuery) -> tuple[Sequence[int], str | None]:
        """Positions (ascending) that may match, and the filter they satisfy exactly (if any)."""
        n = len(self._headers)
        options: list[tuple[int, Callable[[], Sequence[int]], str | None]] = []
        if q.call_ids is not None:
            found = sorted(self._positions[c] for c in q.call_ids if c in self._positions)
            options.append((len(found), lambda: found, "call_ids"))
        if q.reference_ids is not None:
            lists = [self._by_reference.get(r, []) for r in q.reference_ids]
            merged = sorted(p for lst in lists for p in lst)
            options.append((len(merged), lambda: merged, "reference_ids"))
        if q.statuses is not None and q.statuses <= {"pending", "running"}:
            inflight = self._inflight
            exact = "statuses" if len(q.statuses) == 2 else None
            options.append((len(inflight), lambda: inflight, exact))
        for name in _KEYED:
            values: frozenset[str] | None = getattr(q, name)
            if values is None:
                continue
            lists = [self._by_key.get((name, v), []) for v in values]
            size = sum(len(lst) for lst in lists)
            if size <= n // 4:
                options.append((size, partial(_merged, lists), name))
        if not options:
            return range(n), None
        _, make, exact = min(options, key=lambda option: option[0])
        return make(), exact

    def _position(self, call_id: str, parameter: str) -> int:
        position = self._positions.get(call_id)
        if position is None:
            raise QueryError(f"{parameter}: no call with ID {call_id!r}", parameter)
        return position

    def _select(self, q: ListQuery, now: int) -> tuple[list[int], int]:
        candidates, exact = self._candidates(q)
        checks = [check for _, check in self._checks(q, now, skip=exact)]
        headers = self._headers

        def matches(position: int) -> bool:
            h = headers[position]
            return all(check(h) for check in checks)

        forward = not q.descending
        if q.starting_after is not None:
            cursor = self._position(q.starting_after, "startingAfter")
            start = bisect.bisect_right(candidates, cursor) if forward else bisect.bisect_left(candidates, cursor) - 1
            reverse_result = False
        elif q.ending_before is not None:
            cursor = self._position(q.ending_before, "endingBefore")
            # walk away from the cursor towards the start of the listing, then restore listing order
            start = bisect.bisect_left(candidates, cursor) - 1 if forward else bisect.bisect_right(candidates, cursor)
            forward = not forward
            reverse_result = True
        else:
            start = 0 if forward else len(candidates) - 1
            reverse_result = False

        page: list[int] = []
        step = 1 if forward else -1
        i = start
        end = len(candidates)
        while 0 <= i < end and len(page) < q.limit:
            position = candidates[i]
            if not checks or matches(position):
                page.append(position)
            i += step
        if reverse_result:
            page.reverse()
        return page, self._total(q, now, candidates, checks)

    def _total(
        self, q: ListQuery, now: int, candidates: Sequence[int], checks: list[Callable[[CallHeader], bool]]
    ) -> int:
        if not checks:
            return len(candidates)
        used = {name for name, _ in self._checks(q, now, skip=None)}
        headers = self._headers
        if used <= _COUNTABLE:
            identity = [check for name, check in self._checks(q, now, skip="statuses")]
            statuses = q.statuses
            total = 0
            for group in self._groups.values():
                if all(check(group.sample) for check in identity):
                    if statuses is None or "completed" in statuses:
                        total += group.completed
                    if statuses is None or "failed" in statuses:
                        total += group.failed
            every = [check for _, check in self._checks(q, now, skip=None)]
            for position in self._inflight:
                h = headers[position]
                if all(check(h) for check in every):
                    total += 1
            return total
        return sum(1 for position in candidates if all(check(headers[position]) for check in checks))

    # -- webhooks -------------------------------------------------------------------------------

    def webhook_cursor(self, since_ms: int) -> int:
        """The position of the first call still unfinished at `since_ms` (else of the next call):
        where webhook delivery picks up the calls when subscriptions appear. One scan of the
        headers, done when delivery starts, not per tick."""
        with self._lock:
            self._now()
            return next((h.index for h in self._headers if h.finish_ms > since_ms), len(self._headers))

    def timelines(self, cursor: int) -> tuple[list[Timeline], int]:
        """The timeline of every call from position `cursor` on, and the cursor that follows.

        A running call's plan is the one its trace is rendered from (kept until it finishes), so
        delivering its events costs no second plan."""
        with self._lock:
            now = self._now()
            found = [
                Timeline(h.finish_ms, (self._live_plan(h) if now < h.finish_ms else self._plan(h)).events)
                for h in self._headers[cursor:]
            ]
            return found, len(self._headers)

    # -- ground truth ---------------------------------------------------------------------------

    def calls(self) -> list[JSON]:
        """Every call as v3 JSON (outputs and errors included), in creation order."""
        with self._lock:
            now = self._now()
            return [_decode(self._call_bytes(h, now)) for h in self._headers]

    def summaries(self) -> list[JSON]:
        """Every call, light (no outputs, errors or input), in creation order: cheap for 200k calls."""
        with self._lock:
            now = self._now()
            result: list[JSON] = []
            for h in self._headers:
                status = h.status_at(now)
                doc: JSON = {
                    "callID": h.call_id,
                    "callType": h.call_type,
                    "status": status,
                    "createdAt": iso(h.created_ms),
                    "finishedAt": iso(h.finish_ms) if status in ("completed", "failed") else None,
                    "workflowName": h.workflow.name if h.workflow is not None else None,
                    "functionName": h.function.name if h.function is not None else None,
                    "callReferenceID": h.reference_id,
                }
                result.append(doc)
            return result

    def call(self, call_id: str) -> JSON:
        """One call as v3 JSON; KeyError if unknown."""
        data = self.call_json(call_id)
        if data is None:
            raise KeyError(call_id)
        result: JSON = _decode(data)
        return result

    def trace(self, call_id: str) -> JSON:
        """The call's v3 trace `{functionCalls, events}` at the current clock; KeyError if unknown."""
        data = self.trace_json(call_id)
        if data is None:
            raise KeyError(call_id)
        result: JSON = _decode(data)
        return result

    def call_ids(self) -> list[str]:
        """Every callID in creation order (the listing's ascending order)."""
        with self._lock:
            self._now()
            return [h.call_id for h in self._headers]

    def finished_counts(self) -> dict[tuple[str, str], int]:
        """(workflow name or `(none)`, status) -> number of finished calls."""
        with self._lock:
            self._now()
            counts: Counter[tuple[str, str]] = Counter()
            for group in self._groups.values():
                label = group.sample.workflow_label
                if group.completed:
                    counts[(label, "completed")] += group.completed
                if group.failed:
                    counts[(label, "failed")] += group.failed
            return dict(counts)

    def status_counts(self) -> dict[str, int]:
        """status -> number of calls, at the current clock."""
        with self._lock:
            now = self._now()
            counts: Counter[str] = Counter()
            for group in self._groups.values():
                counts["completed"] += group.completed
                counts["failed"] += group.failed
            for position in self._inflight:
                counts[self._headers[position].status_at(now)] += 1
            return {status: count for status, count in counts.items() if count}

    def status(self, call_id: str) -> str:
        """The call's status at the current clock; KeyError if unknown."""
        with self._lock:
            now = self._now()
            h = self._header(call_id)
            if h is None:
                raise KeyError(call_id)
            return h.status_at(now)

    def __len__(self) -> int:
        with self._lock:
            self._now()
            return len(self._headers)

    def stats(self) -> dict[str, Any]:
        """Internal counters, for benchmarks."""
        with self._lock:
            return {
                "calls": len(self._headers),
                "in_flight": len(self._inflight),
                "plans_built": self.plans_built,
                "cached_calls": len(self._rendered),
                "cached_bytes": self._rendered_bytes,
            }

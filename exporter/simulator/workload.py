"""The seeded workload and its time model.

Each call has a *header*, drawn eagerly and cheaply when the call is created (callID, workflow
or function, reference, outcome, created / first-start / last-finish / finished times), and a
*plan*, its full schedule of function calls and events, generated lazily and deterministically
from the header's `detail_seed` whenever it is needed. The plan is built in "natural" seconds
and then mapped monotonically onto the header's run window, so the header's times are exact
without building the plan, which keeps prefilling 200,000 calls cheap.

All times are integer milliseconds since the epoch; what the API shows is a function of the
clock: `pending` before the first function call starts, `running` until `finish_ms` (the trace
grows: only function calls started and events created by then appear), then `completed` or
`failed`.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from .catalog import (
    ADHOC_SHARE,
    CONTENT_MARKER,
    DIRECT_FUNCTIONS,
    DIRECT_SHARE,
    URL_MARKER,
    WORKFLOWS,
    Function,
    Node,
    Workflow,
    random_id,
)
from .config import SimulatorConfig

JSON = dict[str, Any]

RETRY_RATE = 0.06
"""Share of function calls whose first try fails and whose second try succeeds."""
MISSING_KIND_RATE = 0.15
"""Share of error events without a `kind` (historical events pre-date the kind column)."""

_EVENT_TYPE = {
    "transform": "transform",
    "extract": "extract",
    "parse": "parse",
    "analyze": "analyze",
    "enrich": "enrich",
    "payload_shaping": "payload_shaping",
    "send": "send",
    "render": "render",
    "join": "join",
    "classify": "classify",
    "route": "route",
}

_ERRORS: dict[str, tuple[tuple[str, str], ...]] = {
    "extract": (
        ("extraction_timeout", "extraction did not finish within 120s"),
        ("schema_mismatch", "extracted output does not match the output schema: /total is not a number"),
        ("document_unreadable", "the document has no readable text layer"),
    ),
    "transform": (
        ("schema_mismatch", "transformed output does not match the output schema: /lineItems is required"),
        ("extraction_timeout", "transformation did not finish within 120s"),
    ),
    "parse": (
        ("document_unreadable", "the document could not be parsed: encrypted PDF"),
        ("extraction_timeout", "parsing did not finish within 300s"),
    ),
    "analyze": (("schema_mismatch", "analysis output does not match the output schema"),),
    "classify": (("classification_ambiguous", "no class reached the confidence threshold"),),
    "route": (("no_route_matched", "no outlet matched and no default outlet is configured"),),
    "split": (("document_unreadable", "the document could not be split: zero pages"),),
    "join": (("join_timeout", "not all items arrived within the join window"),),
    "enrich": (("enrichment_lookup_failed", "collection lookup returned no match"),),
    "payload_shaping": (("schema_mismatch", "payload shaping expression produced no output"),),
    "send": (("delivery_failed", "webhook answered HTTP 503 after 3 attempts"),),
    "render": (
        ("render_validation", "upstream JSON failed validation against the document schema"),
        ("render_template_fetch", "the template could not be fetched"),
        ("render_exception", "rendering raised an unexpected exception"),
    ),
}
_RETRYABLE = (
    ("extraction_timeout", "attempt timed out, retrying"),
    ("upstream_unavailable", "model provider returned HTTP 529, retrying"),
    ("rate_limited", "model provider rate limit reached, retrying"),
)

_VENDORS = ("Acme Corp", "Globex", "Initech", "Umbrella Ltd", "Stark Industries", "Wayne Enterprises")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August")

_SECOND_CACHE: dict[int, str] = {}
_SECOND_CACHE_LIMIT = 1_000_000
HANG_SECONDS = 365 * 24 * 3600
"""How long a call made to hang keeps running."""


def iso(ms: int) -> str:
    """RFC 3339 UTC timestamp with millisecond precision, e.g. `2024-05-01T12:00:00.123Z`."""
    seconds, millis = divmod(ms, 1000)
    prefix = _SECOND_CACHE.get(seconds)
    if prefix is None:
        if len(_SECOND_CACHE) >= _SECOND_CACHE_LIMIT:
            _SECOND_CACHE.clear()
        prefix = _SECOND_CACHE[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(seconds))
    return f"{prefix}{millis:03d}Z"


def presigned_url(call_id: str, name: str, signature: int) -> str:
    """A presigned-looking S3 URL whose signature carries the URL_MARKER."""
    return (
        f"https://bem-sim-documents.s3.amazonaws.com/{call_id}/{name}"
        f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={URL_MARKER}{signature:024x}"
    )


def _mix(value: int) -> int:
    """A 96-bit scramble of a seed, for signatures derived from it."""
    return (value * 0x9E3779B97F4A7C15F39CC060) % (1 << 96)


class CallHeader:
    """What is known about a call without its plan; one per call, kept for every call."""

    __slots__ = (
        "batch",
        "call_id",
        "call_type",
        "created_ms",
        "detail_seed",
        "failed",
        "finish_ms",
        "function",
        "index",
        "input_type",
        "last_ms",
        "reference_id",
        "start_ms",
        "version",
        "workflow",
    )

    def __init__(
        self,
        *,
        index: int,
        call_id: str,
        call_type: str,
        workflow: Workflow | None,
        function: Function | None,
        version: int,
        reference_id: str | None,
        created_ms: int,
        start_ms: int,
        last_ms: int,
        finish_ms: int,
        failed: bool,
        detail_seed: int,
        input_type: str,
        batch: int,
    ) -> None:
        self.index = index
        self.call_id = call_id
        self.call_type = call_type
        self.workflow = workflow
        self.function = function
        self.version = version
        self.reference_id = reference_id
        self.created_ms = created_ms
        self.start_ms = start_ms
        """When the root function call starts (createdAt + queue delay)."""
        self.last_ms = last_ms
        """When the last function call finishes."""
        self.finish_ms = finish_ms
        """The call's finishedAt."""
        self.failed = failed
        self.detail_seed = detail_seed
        self.input_type = input_type
        self.batch = batch
        """Number of files of a batch input; 0 for a single file."""

    def status_at(self, now_ms: int) -> str:
        if now_ms >= self.finish_ms:
            return "failed" if self.failed else "completed"
        if now_ms >= self.start_ms:
            return "running"
        return "pending"

    @property
    def final_status(self) -> str:
        return "failed" if self.failed else "completed"

    @property
    def workflow_label(self) -> str:
        """The workflow's name, or `(none)` for a function call."""
        return self.workflow.name if self.workflow is not None else "(none)"

    def input_doc(self) -> JSON:
        """The call's `input` (content uploaded to S3: only its type and presigned URL are shown)."""
        if self.batch:
            return {
                "batchFiles": {
                    "inputs": [
                        {
                            "inputType": self.input_type,
                            "itemReferenceID": f"{self.reference_id or self.call_id}-{k + 1}",
                            "s3URL": presigned_url(
                                self.call_id, f"input-{k + 1}.{self.input_type}", _mix(self.detail_seed + k)
                            ),
                        }
                        for k in range(self.batch)
                    ]
                }
            }
        return {
            "singleFile": {
                "inputType": self.input_type,
                "s3URL": presigned_url(self.call_id, f"input.{self.input_type}", _mix(self.detail_seed)),
            }
        }


class Workload:
    """Draws call headers and arrival times from the seeded workload RNG."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._rng = random.Random(f"bem-simulator/workload/{config.seed}")
        self._arrivals = random.Random(f"bem-simulator/arrivals/{config.seed}")
        self._workflow_cum = list(accumulate(w.weight for w in WORKFLOWS))
        self._function_cum = list(accumulate(weight for _, weight in DIRECT_FUNCTIONS))

    def next_gap_ms(self) -> float:
        """Milliseconds until the next arrival of the Poisson process (inf when the rate is 0)."""
        if self._config.arrival_rate <= 0:
            return math.inf
        return self._arrivals.expovariate(self._config.arrival_rate) * 1000.0

    def prefill_times(self, count: int, now_ms: int) -> list[int]:
        """`count` non-decreasing creation times spread over the `history` seconds before `now_ms`."""
        span = self._config.history * 1000.0
        begin = now_ms - span
        step = span / count if count else 0.0
        rng = self._arrivals
        return [int(begin + (k + rng.random()) * step) for k in range(count)]

    def header(
        self,
        index: int,
        created_ms: int,
        *,
        workflow: Workflow | None = None,
        function: Function | None = None,
        call_type: str | None = None,
        reference_id: str | None = None,
        input_type: str | None = None,
        batch: int = 0,
        failed: bool | None = None,
        hang: bool = False,
    ) -> CallHeader:
        """The next call's header. The same draws happen whatever is overridden, so the calls
        after an explicitly created one are the same as if it had been a random one.

        `failed` overrides whether the call fails; `hang` makes it run for HANG_SECONDS, which
        is never within a test or a demo."""
        rng = self._rng
        config = self._config
        call_id = random_id(rng, "cl_")
        kind = rng.random()
        pick = rng.random()
        newest = rng.random() < 0.8
        version_pick = rng.random()
        drawn_failure = rng.random() < config.failure_rate
        failed = drawn_failure if failed is None else failed
        queue = min(max(rng.lognormvariate(0.4, 0.8), 0.05), 60.0)
        spread = rng.lognormvariate(0.0, 0.5)
        finalize = rng.uniform(0.02, 0.4)
        has_reference = rng.random() < 0.9
        reference_number = rng.randrange(1_000_000)
        detail_seed = rng.getrandbits(64)

        if workflow is None and function is None:
            if kind < ADHOC_SHARE + DIRECT_SHARE:
                total = self._function_cum[-1]
                function = DIRECT_FUNCTIONS[bisect.bisect_right(self._function_cum, pick * total)][0]
                if call_type is None:
                    call_type = "adhoc_function" if kind < ADHOC_SHARE else "direct_function"
            else:
                total = self._workflow_cum[-1]
                workflow = WORKFLOWS[min(bisect.bisect_right(self._workflow_cum, pick * total), len(WORKFLOWS) - 1)]
        if workflow is not None:
            call_type = "workflow"
            function = None
            failed = failed or workflow.name in config.failing_workflows
            versions = workflow.versions
            version = versions[-1] if newest else versions[int(version_pick * len(versions))]
            median = workflow.median_seconds
            prefix = workflow.reference_prefix
            default_input = workflow.input_type
        else:
            assert function is not None
            if call_type not in ("direct_function", "adhoc_function"):
                call_type = "direct_function"
            version = function.version
            median = function.median_seconds
            prefix = "DOC"
            default_input = "pdf"
        if reference_id is None and has_reference:
            reference_id = f"{prefix}-2024-{reference_number:06d}"

        speed = config.speed
        run_seconds = min(max(median * spread, 1.0), 300.0)
        start_ms = created_ms + max(1, round(queue * 1000.0 / speed))
        last_ms = start_ms + max(1, round(run_seconds * 1000.0 / speed))
        if hang:
            last_ms = created_ms + HANG_SECONDS * 1000
        finish_ms = last_ms + max(1, round(finalize * 1000.0 / speed))
        return CallHeader(
            index=index,
            call_id=call_id,
            call_type=call_type,
            workflow=workflow,
            function=function,
            version=version,
            reference_id=reference_id,
            created_ms=created_ms,
            start_ms=start_ms,
            last_ms=last_ms,
            finish_ms=finish_ms,
            failed=failed,
            detail_seed=detail_seed,
            input_type=input_type or default_input,
            batch=batch,
        )


# ---------------------------------------------------------------------------------------------
# Plans: the full schedule of one call.


@dataclass(slots=True)
class PlanFunctionCall:
    start_ms: int
    finish_ms: int
    status: str
    """Final status: completed or failed."""
    doc: JSON
    """The function call as shown once finished."""


@dataclass(slots=True)
class PlanEvent:
    created_ms: int
    doc: JSON


@dataclass(slots=True)
class Plan:
    function_calls: list[PlanFunctionCall]
    """Ordered by start time (parents before children)."""
    events: list[PlanEvent]
    """Ordered by creation time."""
    outputs: list[JSON]
    """Terminal non-error events."""
    errors: list[JSON]
    """Terminal error events (the last try of each failed function call)."""


@dataclass(slots=True, eq=False)
class _Ev:
    fc: _Fc
    type: str
    t: float
    try_no: int
    extra: JSON = field(default_factory=dict)
    kind: str | None = None
    message: str = ""
    id: str = ""
    consumed: bool = False
    """Spawned a function call, or was gathered by a join: not a terminal output."""


@dataclass(slots=True, eq=False)
class _Fc:
    seq: int
    node: Node
    label: str | None
    reference_id: str
    item_offset: int | None
    start: float
    finish: float = 0.0
    source: _Ev | None = None
    events: list[_Ev] = field(default_factory=list)
    waits: list[_Fc] = field(default_factory=list)
    failed: bool = False
    removed: bool = False
    id: str = ""


def _subtree_size(node: Node | None) -> int:
    """Function calls a linear node subtree needs at most (split items counted once)."""
    if node is None:
        return 0
    size = 1 + sum(_subtree_size(child) for child in node.next)
    if node.outlets:
        size += max(_subtree_size(outlet.node) for outlet in node.outlets)
    return size + _subtree_size(node.per_item) + _subtree_size(node.join)


class _PlanBuilder:
    def __init__(self, header: CallHeader, max_function_calls: int) -> None:
        self.h = header
        self.rng = random.Random(header.detail_seed)
        self.budget = max_function_calls
        self.fcs: list[_Fc] = []
        self.events: list[_Ev] = []
        self.reference = header.reference_id or header.call_id

    # -- structure, in natural seconds ------------------------------------------------------

    def duration(self, function: Function) -> float:
        return max(0.2, function.median_seconds * self.rng.lognormvariate(0.0, 0.5))

    def dispatch(self) -> float:
        return self.rng.uniform(0.05, 0.6)

    def emit(self, fc: _Fc, type_: str, t: float, try_no: int, **extra: Any) -> _Ev:
        event = _Ev(fc, type_, t, try_no, extra)
        fc.events.append(event)
        self.events.append(event)
        return event

    def run(
        self,
        node: Node,
        t0: float,
        source: _Ev | None,
        label: str | None,
        reference: str,
        item_offset: int | None = None,
    ) -> _Fc | None:
        if self.budget <= 0:
            return None
        self.budget -= 1
        rng = self.rng
        fc = _Fc(len(self.fcs), node, label, reference, item_offset, t0, source=source)
        self.fcs.append(fc)
        if source is not None:
            source.consumed = True
        function = node.function
        dur = self.duration(function)
        t = t0
        try_no = 1
        if rng.random() < RETRY_RATE:
            kind, message = _RETRYABLE[rng.randrange(len(_RETRYABLE))]
            failed_at = t0 + dur * rng.uniform(0.3, 0.7)
            error = self.emit(fc, "error", failed_at, 1)
            error.kind, error.message = kind, message
            t = failed_at + rng.uniform(0.5, 2.0)
            try_no = 2
        done = t + dur

        if function.type == "split":
            self.run_split(fc, node, t, dur, try_no)
        elif node.outlets:
            weights = [outlet.weight for outlet in node.outlets]
            outlet = rng.choices(node.outlets, weights)[0]
            event = self.emit(fc, _EVENT_TYPE.get(function.type, "route"), done, try_no, choice=outlet.label)
            fc.finish = done + rng.uniform(0.01, 0.1)
            self.run(outlet.node, done + self.dispatch(), event, outlet.label, reference)
        else:
            event = self.emit(fc, _EVENT_TYPE.get(function.type, "transform"), done, try_no)
            fc.finish = done + rng.uniform(0.01, 0.1)
            for child in node.next:
                self.run(child, done + self.dispatch(), event, None, reference)
        return fc

    def run_split(self, fc: _Fc, node: Node, t: float, dur: float, try_no: int) -> None:
        rng = self.rng
        low, high = node.items
        wanted = rng.randint(low, high)
        per_item = max(1, _subtree_size(node.per_item))
        room = (self.budget - _subtree_size(node.join)) // per_item
        count = max(1, min(wanted, room))
        t_collection = t + dur * 0.85
        references = [f"{self.reference}-p{k + 1}" for k in range(count)]
        urls = [presigned_url(self.h.call_id, f"item-{k + 1}.pdf", rng.getrandbits(96)) for k in range(count)]
        items = [{"itemOffset": k, "itemReferenceID": references[k], "s3URL": urls[k]} for k in range(count)]
        self.emit(
            fc,
            "split_collection",
            t_collection,
            try_no,
            outputType="print_page",
            printPageOutput={"itemCount": count, "items": items},
            semanticPageOutput={"pageCount": count},
        )
        children: list[_Fc] = []
        t_item = t_collection
        for k in range(count):
            t_item += rng.uniform(0.01, 0.05)
            event = self.emit(
                fc,
                "split_item",
                t_item,
                try_no,
                outputType="print_page",
                printPageOutput={
                    "collectionReferenceID": self.reference,
                    "itemCount": count,
                    "itemOffset": k,
                    "s3URL": urls[k],
                },
            )
            if node.per_item is not None:
                child = self.run(node.per_item, t_item + self.dispatch(), event, None, references[k], k)
                if child is not None:
                    children.append(child)
        fc.finish = t_item + rng.uniform(0.02, 0.1)
        if node.join is None or not children or len(children) < count:
            return
        primaries = [child.events[-1] for child in children]
        last = max(primaries, key=lambda event: event.t)
        join = self.run(node.join, last.t + self.dispatch(), last, None, self.reference)
        if join is not None:
            join.waits = children
            for event in primaries:
                event.consumed = True
            join.events[-1].extra["items"] = [
                {"itemCount": 1, "itemOffset": child.item_offset or 0, "itemReferenceID": child.reference_id}
                for child in children
            ]

    def fail(self) -> None:
        """Make one function call fail: its success events become an error, its descendants vanish."""
        rng = self.rng
        victim = self.fcs[rng.randrange(len(self.fcs))]
        victim.failed = True
        kinds = _ERRORS.get(victim.node.function.type, (("internal_error", "internal error"),))
        kind, message = kinds[rng.randrange(len(kinds))]
        retried = [event for event in victim.events if event.type == "error"]
        successes = [event for event in victim.events if event.type != "error"]
        begin = retried[-1].t if retried else victim.start
        end = successes[0].t if successes else victim.finish
        failed_at = begin + (end - begin) * rng.uniform(0.3, 1.0)
        try_no = retried[-1].try_no + 1 if retried else 1
        victim.events = retried
        error = _Ev(victim, "error", failed_at, try_no)
        error.kind, error.message = kind, message
        victim.events.append(error)
        victim.finish = failed_at + rng.uniform(0.01, 0.1)
        for fc in self.fcs:
            if fc is victim:
                continue
            parent = fc.source.fc if fc.source is not None else None
            if (parent is not None and (parent.removed or parent.failed)) or any(
                w.removed or w.failed for w in fc.waits
            ):
                fc.removed = True
        for fc in self.fcs:
            for event in fc.events:
                event.consumed = False
        self.fcs = [fc for fc in self.fcs if not fc.removed]
        for fc in self.fcs:
            if fc.source is not None:
                fc.source.consumed = True
            if fc.waits:
                for waited in fc.waits:
                    waited.events[-1].consumed = True
        self.events = [event for fc in self.fcs for event in fc.events]

    # -- documents --------------------------------------------------------------------------

    def build(self) -> Plan:
        h = self.h
        if h.workflow is not None:
            root_node = h.workflow.root
        else:
            assert h.function is not None
            root_node = Node(h.function.name, h.function)
        self.run(root_node, 0.0, None, None, self.reference)
        if h.failed:
            self.fail()
        rng = self.rng
        for fc in self.fcs:
            fc.id = random_id(rng, "fc_")
        for event in self.events:
            event.id = random_id(rng, "ev_")

        span = max(fc.finish for fc in self.fcs)
        start = h.start_ms
        scale = (h.last_ms - h.start_ms) / span if span > 0 else 0.0

        def at(t: float) -> int:
            return start + round(t * scale)

        base = self.base_fields()
        function_calls: list[PlanFunctionCall] = []
        for fc in self.fcs:
            start_ms, finish_ms = at(fc.start), at(fc.finish)
            status = "failed" if fc.failed else "completed"
            function_calls.append(
                PlanFunctionCall(start_ms, finish_ms, status, self.function_call_doc(fc, start_ms, finish_ms, status))
            )
        function_calls.sort(key=lambda p: p.start_ms)  # stable: parents (created first) stay first

        events: list[PlanEvent] = []
        outputs: list[JSON] = []
        errors: list[JSON] = []
        for fc in self.fcs:
            fc_start = at(fc.start)
            last_error = fc.events[-1] if fc.failed else None
            for event in fc.events:
                created = at(event.t)
                doc = self.event_doc(event, base, created, fc_start)
                events.append(PlanEvent(created, doc))
                if event.type == "error":
                    if event is last_error:
                        errors.append(doc)
                elif not event.consumed and event.type != "split_collection":
                    outputs.append(doc)
        events.sort(key=lambda p: p.created_ms)
        outputs.sort(key=lambda d: str(d["createdAt"]))
        return Plan(function_calls, events, outputs, errors)

    def base_fields(self) -> JSON:
        h = self.h
        base: JSON = {"callID": h.call_id}
        if h.workflow is not None:
            base["workflowID"] = h.workflow.id
            base["workflowName"] = h.workflow.name
            base["workflowVersionNum"] = h.version
        return base

    def function_call_doc(self, fc: _Fc, start_ms: int, finish_ms: int, status: str) -> JSON:
        h = self.h
        function = fc.node.function
        doc: JSON = {
            "functionCallID": fc.id,
            "functionID": function.id,
            "functionName": function.name,
            "type": function.type,
            "referenceID": fc.reference_id,
            "status": status,
            "functionVersionNum": function.version,
            "activity": [{"displayName": function.display, "status": status}],
            "startedAt": iso(start_ms),
            "finishedAt": iso(finish_ms),
        }
        if fc.source is not None:
            doc["sourceFunctionCallID"] = fc.source.fc.id
            doc["sourceEventID"] = fc.source.id
        doc["workflowCallID"] = h.call_id
        if h.workflow is not None:
            doc["workflowNodeName"] = fc.node.name
        if fc.label is not None:
            doc["incomingDestinationName"] = fc.label
        if fc.source is None and h.batch:
            doc["inputs"] = h.input_doc()["batchFiles"]["inputs"]
        elif fc.source is None:
            doc["inputType"] = h.input_type
            doc["s3URL"] = presigned_url(h.call_id, f"input.{h.input_type}", _mix(h.detail_seed))
        elif fc.item_offset is not None:
            doc["inputs"] = [
                {
                    "inputType": "pdf",
                    "itemReferenceID": fc.reference_id,
                    "s3URL": presigned_url(h.call_id, f"item-{fc.item_offset + 1}.pdf", _mix(h.detail_seed + fc.seq)),
                }
            ]
        return doc

    def content(self, fc: _Fc) -> JSON:
        rng = self.rng
        h = self.h
        return {
            "documentType": fc.node.function.name.split("-", 1)[-1],
            "reference": fc.reference_id,
            "vendor": _VENDORS[rng.randrange(len(_VENDORS))],
            "total": round(rng.uniform(5, 5000), 2),
            "currency": "USD",
            "notes": f"{CONTENT_MARKER}-{h.index}",
        }

    def event_doc(self, event: _Ev, base: JSON, created_ms: int, fc_start_ms: int) -> JSON:
        fc = event.fc
        h = self.h
        rng = self.rng
        function = fc.node.function
        doc: JSON = {
            "eventID": event.id,
            "eventType": event.type,
            "createdAt": iso(created_ms),
            "referenceID": fc.reference_id,
            "functionCallID": fc.id,
            "functionCallTryNumber": event.try_no,
            "functionID": function.id,
            "functionName": function.name,
            "functionVersionNum": function.version,
            **base,
            "metadata": {"durationFunctionToEventSeconds": (created_ms - fc_start_ms) / 1000.0},
        }
        if h.input_type == "email":
            doc["inboundEmail"] = {
                "from": "customer@example.com",
                "to": "inbox@bem-sim.example",
                "deliveredTo": "router@bem-sim.example",
                "subject": self.subject(),
            }
        type_ = event.type
        if type_ == "error":
            doc["message"] = event.message
            if event.kind is not None and rng.random() >= MISSING_KIND_RATE:
                doc["kind"] = event.kind
        elif type_ in ("transform", "extract", "parse"):
            url = presigned_url(h.call_id, f"{fc.id}.{h.input_type}", rng.getrandbits(96))
            doc.update(
                itemCount=1,
                itemOffset=fc.item_offset or 0,
                transformedContent=self.content(fc),
                avgConfidence=round(rng.uniform(0.55, 0.99), 3),
                inputType=h.input_type if h.input_type != "email" else "email",
                s3URL=url,
                inputs=[
                    {
                        "inputType": h.input_type,
                        "inputContent": f"{CONTENT_MARKER}-{h.index}: {self.subject()} {fc.reference_id}",
                        "s3URL": url,
                    }
                ],
                transformationID=random_id(rng, "tr_"),
            )
            if type_ == "extract":
                doc["fieldConfidences"] = {
                    "/total": round(rng.uniform(0.6, 1.0), 3),
                    "/vendor": round(rng.uniform(0.6, 1.0), 3),
                }
        elif type_ == "analyze":
            doc.update(
                transformedContent=self.content(fc),
                invalidProperties=[],
                avgConfidence=round(rng.uniform(0.55, 0.99), 3),
            )
        elif type_ == "join":
            doc.update(
                items=event.extra.get("items", []),
                joinType="standard",
                invalidProperties=[],
                transformedContent=self.content(fc),
                avgConfidence=round(rng.uniform(0.6, 0.99), 3),
            )
        elif type_ == "enrich":
            doc["enrichedContent"] = {**self.content(fc), "policyHolder": "J. Doe", "riskScore": round(rng.random(), 2)}
        elif type_ == "payload_shaping":
            doc["transformedContent"] = self.content(fc)
        elif type_ == "send":
            doc.update(
                deliveryStatus="success",
                destinationType="webhook",
                webhookOutput={"httpStatusCode": 200, "httpResponseBody": '{"ok":true}'},
                deliveredContent=self.content(fc),
            )
        elif type_ == "render":
            doc.update(
                docxRenderSeconds=round(rng.uniform(0.5, 4.0), 3),
                validationSeconds=round(rng.uniform(0.05, 0.5), 3),
                outputDownloadURL=presigned_url(h.call_id, f"{fc.id}.docx", rng.getrandbits(96)),
            )
        elif type_ == "classify":
            doc["choice"] = event.extra.get("choice", "")
            doc["s3URL"] = presigned_url(h.call_id, f"input.{h.input_type}", _mix(h.detail_seed))
        else:
            doc.update(event.extra)
        return doc

    def subject(self) -> str:
        h = self.h
        template = h.workflow.subject if h.workflow is not None else "Document {month}"
        return f"{template.format(month=_MONTHS[h.index % len(_MONTHS)])} [{CONTENT_MARKER}-{h.index}]"


def build_plan(header: CallHeader, max_function_calls: int) -> Plan:
    """The call's full schedule: deterministic for a header and bound."""
    return _PlanBuilder(header, max_function_calls).build()


# ---------------------------------------------------------------------------------------------
# Documents at a point in time.


def _call_head(h: CallHeader, now_ms: int) -> JSON:
    """The fields v2 and v3 calls share: ids, status and times, workflow or function."""
    status = h.status_at(now_ms)
    doc: JSON = {"callID": h.call_id, "callType": h.call_type, "status": status, "createdAt": iso(h.created_ms)}
    if status in ("completed", "failed"):
        doc["finishedAt"] = iso(h.finish_ms)
    _identity(h, doc)
    if h.reference_id is not None:
        doc["callReferenceID"] = h.reference_id
    return doc


def call_doc(h: CallHeader, plan: Plan | None, now_ms: int) -> JSON:
    """The v3 call. `plan` is needed only once the call has finished (for outputs and errors)."""
    doc = _call_head(h, now_ms)
    doc["input"] = h.input_doc()
    finished = now_ms >= h.finish_ms and plan is not None
    doc["outputs"] = plan.outputs if finished and plan is not None else []
    doc["errors"] = plan.errors if finished and plan is not None else []
    doc["url"] = f"/v3/calls/{h.call_id}"
    doc["traceUrl"] = f"/v3/calls/{h.call_id}/trace"
    return doc


def _identity(h: CallHeader, doc: JSON) -> None:
    if h.workflow is not None:
        doc["workflowID"] = h.workflow.id
        doc["workflowName"] = h.workflow.name
        doc["workflowVersionNum"] = h.version
    elif h.function is not None:
        doc["functionID"] = h.function.id
        doc["functionName"] = h.function.name
        doc["functionType"] = h.function.type
        doc["functionVersionNum"] = h.function.version


def function_calls_at(plan: Plan, now_ms: int) -> list[JSON]:
    """The function calls started by `now_ms`; running ones without `finishedAt`."""
    docs: list[JSON] = []
    for fc in plan.function_calls:
        if fc.start_ms > now_ms:
            continue
        if fc.finish_ms <= now_ms:
            docs.append(fc.doc)
        else:
            running = dict(
                fc.doc,
                status="running",
                activity=[{"displayName": fc.doc["activity"][0]["displayName"], "status": "running"}],
            )
            del running["finishedAt"]
            docs.append(running)
    return docs


def trace_doc(h: CallHeader, plan: Plan | None, now_ms: int) -> JSON:
    """The v3 trace `{functionCalls, events}`: what has happened by `now_ms`."""
    if plan is None or now_ms < h.start_ms:
        return {"functionCalls": [], "events": []}
    if now_ms >= h.finish_ms:
        return {"functionCalls": [fc.doc for fc in plan.function_calls], "events": [e.doc for e in plan.events]}
    return {
        "functionCalls": function_calls_at(plan, now_ms),
        "events": [e.doc for e in plan.events if e.created_ms <= now_ms],
    }


def v2_call_doc(h: CallHeader, plan: Plan | None, now_ms: int, *, full: bool) -> JSON:
    """The v2 call: `functionCalls` always; `outputs` (errors included) and `trace` when `full`."""
    doc = _call_head(h, now_ms)
    trace = trace_doc(h, plan, now_ms)
    doc["functionCalls"] = trace["functionCalls"]
    if full:
        finished = now_ms >= h.finish_ms and plan is not None
        doc["outputs"] = (plan.outputs + plan.errors) if finished and plan is not None else []
        doc["trace"] = trace
    doc["input"] = h.input_doc()
    return doc

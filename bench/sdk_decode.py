"""CPU per trace decoded: bem's official SDK (`bem-sdk`, pydantic models) vs the exporter's
own records (msgspec), on the same `GET /v3/calls/{id}/trace` bodies, in the same run.

    python bench/sdk_decode.py [--traces 2000] [--pages 20] [--repeat 5] [--seed 7]

(from the repository root, with the package and its `test` extra installed, e.g. the .venv of
scripts/venv.sh, or with PYTHONPATH=.). About 30 s with the defaults.

The bodies are the simulator's, byte for byte what its HTTP server answers, for finished calls
of 5-10 function calls. Each way of decoding runs over all of them `--repeat` times,
interleaved with the others (so a noisy moment hurts every row alike); the table shows the
median and the best CPU time (`time.process_time`) per trace, the memory the decoded result
keeps per trace (tracemalloc, on a sample) and whether document content or presigned URLs
are among what it keeps. The last two rows are whole client calls over an in-memory httpx
transport (request building, response handling and decoding; no network, no server).
See docs/sdk-decision.md for the figures and what they decided.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, get_args

import bem
from bem._models import construct_type, validate_type
from bem.pagination import SyncCallsPage
from bem.types.call import Call as SdkCall
from bem.types.call_retrieve_trace_response import CallRetrieveTraceResponse
from bem.types.event import Event as SdkEvent
from pydantic import BaseModel, TypeAdapter

from exporter.bem.client import BemClient
from exporter.bem.decode import decode_call_page, decode_trace
from exporter.simulator import CONTENT_MARKER, URL_MARKER, Simulator, SimulatorConfig, SimulatorServer

MIN_FUNCTION_CALLS = 5
MAX_FUNCTION_CALLS = 10
MEMORY_SAMPLE = 200


SIM_KEY = "sim-key"


class FrozenClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def finished_simulator(count: int, seed: int) -> Simulator:
    """A simulator whose prefilled calls (enough for `count` traces) have all finished."""
    clock = FrozenClock(1_760_000_000.0)
    sim = Simulator(
        SimulatorConfig(seed=seed, prefill=count * 3, history=6 * 3600, arrival_rate=0, max_function_calls=10),
        clock=clock,
    )
    clock.t += 3600
    return sim


def trace_bodies(sim: Simulator, count: int) -> list[tuple[str, bytes]]:
    """(callID, trace response body) of `count` finished calls with 5-10 function calls each."""
    bodies: list[tuple[str, bytes]] = []
    for call_id in sim.call_ids():
        trace = sim.trace_json(call_id)
        assert trace is not None
        size = len(json.loads(trace)["functionCalls"])
        if MIN_FUNCTION_CALLS <= size <= MAX_FUNCTION_CALLS:
            bodies.append((call_id, b'{"trace":' + trace + b"}"))  # as the simulator's server sends it
            if len(bodies) == count:
                return bodies
    raise SystemExit(f"only {len(bodies)} traces of {MIN_FUNCTION_CALLS}-{MAX_FUNCTION_CALLS} function calls")


# -- ways of decoding one body ------------------------------------------------------------------

_EVENT_UNION: TypeAdapter[Any] = TypeAdapter(SdkEvent)
_EVENT_CLASSES: dict[str, type[BaseModel]] = {
    get_args(get_args(cls.model_fields["event_type"].annotation)[0])[0]: cls for cls in get_args(get_args(SdkEvent)[0])
}
"""eventType -> the SDK's model of that event (the union's `event_type` literals)."""


def exporter_records(body: bytes) -> object:
    return decode_trace(body)


def sdk_default(body: bytes) -> object:
    """What `client.calls.retrieve_trace()` does by default: no validation (`construct`)."""
    return construct_type(type_=CallRetrieveTraceResponse, value=json.loads(body))


def sdk_default_typed_events(body: bytes) -> object:
    response: CallRetrieveTraceResponse = construct_type(type_=CallRetrieveTraceResponse, value=json.loads(body))
    assert response.trace is not None
    return response, [construct_type(type_=SdkEvent, value=event) for event in response.trace.events]


def sdk_strict(body: bytes) -> object:
    """What the client does with `_strict_response_validation=True`; trace events stay dicts."""
    return validate_type(type_=CallRetrieveTraceResponse, value=json.loads(body))


def sdk_validated_events_by_type(body: bytes) -> object:
    response = CallRetrieveTraceResponse.model_validate_json(body)
    assert response.trace is not None
    events = [_EVENT_CLASSES[event["eventType"]].model_validate(event) for event in response.trace.events]  # type: ignore[index]
    return response, events


def sdk_validated_events_union(body: bytes) -> object:
    response = CallRetrieveTraceResponse.model_validate_json(body)
    assert response.trace is not None
    return response, [_EVENT_UNION.validate_python(event) for event in response.trace.events]


DECODERS: list[tuple[str, Callable[[bytes], object]]] = [
    ("exporter: msgspec records, `decode_trace`", exporter_records),
    ("bem-sdk default: `construct`, events left as dicts", sdk_default),
    ("bem-sdk default + events `construct`ed via the Event union", sdk_default_typed_events),
    ("bem-sdk strict: validated, events left as dicts", sdk_strict),
    ("bem-sdk validated + events validated by eventType", sdk_validated_events_by_type),
    ("bem-sdk validated + events validated via the Event union", sdk_validated_events_union),
]


# -- whole client calls over loopback HTTP to the simulator -------------------------------------


async def _exporter_client(ids: list[str], url: str) -> None:
    async with BemClient(url, SIM_KEY, "v3", timeout=10.0, max_concurrency=1, max_rps=1e9) as client:
        for call_id in ids:
            await client.get_trace(call_id)


async def _sdk_client(ids: list[str], url: str) -> None:
    async with bem.AsyncBem(api_key=SIM_KEY, base_url=url, max_retries=0) as client:
        for call_id in ids:
            await client.calls.retrieve_trace(call_id)


CLIENTS: list[tuple[str, Callable[[list[str], str], Awaitable[None]]]] = [
    ("exporter `BemClient.get_trace`", _exporter_client),
    ("bem-sdk `AsyncBem.calls.retrieve_trace` (default mode)", _sdk_client),
]


# -- list pages ----------------------------------------------------------------------------------


def page_bodies(count: int, seed: int) -> list[bytes]:
    """`count` bodies of `GET /v3/calls?limit=100` (outputs and errors inline), as the server sends them."""
    clock = FrozenClock(1_760_000_000.0)
    sim = Simulator(SimulatorConfig(seed=seed, prefill=count * 100, history=6 * 3600, arrival_rate=0), clock=clock)
    clock.t += 3600
    ids = sim.call_ids()
    pages: list[bytes] = []
    for start in range(0, count * 100, 100):
        records = [sim.call_json(call_id) or b"" for call_id in ids[start : start + 100]]
        pages.append(b'{"calls":[' + b",".join(records) + b'],"totalCount":' + str(len(ids)).encode() + b"}")
    return pages


def exporter_page(body: bytes) -> object:
    return decode_call_page(body)


def sdk_page_default(body: bytes) -> object:
    """What `client.calls.list()` does by default (`construct`; `outputs` become event models)."""
    return construct_type(type_=SyncCallsPage[SdkCall], value=json.loads(body))


def sdk_page_strict(body: bytes) -> object:
    return validate_type(type_=SyncCallsPage[SdkCall], value=json.loads(body))


PAGE_DECODERS: list[tuple[str, Callable[[bytes], object]]] = [
    ("exporter: msgspec records, `decode_call_page`", exporter_page),
    ("bem-sdk default: `construct`", sdk_page_default),
    ("bem-sdk strict: validated", sdk_page_strict),
]


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    seconds: list[float]
    retained: float | None = None
    keeps_content: bool | None = None

    def median(self, n: int) -> float:
        return statistics.median(self.seconds) / n

    def best(self, n: int) -> float:
        return min(self.seconds) / n


def _time(decode: Callable[[bytes], object], bodies: list[bytes]) -> float:
    gc.collect()
    began = time.process_time()
    for body in bodies:
        decode(body)
    return time.process_time() - began


def _retained_bytes(decode: Callable[[bytes], object], bodies: list[bytes]) -> tuple[float, bool]:
    """Memory the decoded results keep, per body, and whether content or presigned URLs are in them."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [decode(body) for body in bodies]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    text = repr(kept)
    return (after - before) / len(bodies), CONTENT_MARKER in text or URL_MARKER in text


def machine() -> list[str]:
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model
        )
    except OSError:
        pass
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("bem-sdk", "pydantic", "pydantic-core", "msgspec", "httpx")
    )
    return [
        f"CPU: {model} (lscpu model name), {len(os.sched_getaffinity(0))} CPUs available",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.machine()}",
        packages,
    ]


def _table(what: str, unit: str, rows: list[Row], n: int, memory: bool) -> None:
    base = rows[0].median(n)
    head = f"| {what} | CPU µs/{unit} (median) | best | x exporter |"
    rule = "| --- | ---: | ---: | ---: |"
    if memory:
        head += f" KiB kept/{unit} | content or URLs kept |"
        rule += " ---: | --- |"
    print(head)
    print(rule)
    for row in rows:
        line = f"| {row.name} | {row.median(n) * 1e6:,.0f} | {row.best(n) * 1e6:,.0f} | {row.median(n) / base:.1f} |"
        if memory:
            assert row.retained is not None
            line += f" {row.retained / 1024:.1f} | {'yes' if row.keeps_content else 'no'} |"
        print(line)
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--pages", type=int, default=20, help="list pages of 100 calls")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    sim = finished_simulator(args.traces, args.seed)
    pairs = trace_bodies(sim, args.traces)
    ids = [call_id for call_id, _ in pairs]
    bodies = [body for _, body in pairs]
    pages = page_bodies(args.pages, args.seed)
    function_calls = sum(len(json.loads(body)["trace"]["functionCalls"]) for body in bodies)
    events = sum(len(json.loads(body)["trace"]["events"]) for body in bodies)

    decoders = [Row(name, []) for name, _ in DECODERS]
    clients = [Row(name, []) for name, _ in CLIENTS]
    listings = [Row(name, []) for name, _ in PAGE_DECODERS]
    for _, decode in DECODERS + PAGE_DECODERS:  # warm up: pydantic builds its validators on first use
        for body in bodies[:50] + pages[:2]:
            with contextlib.suppress(Exception):  # a trace decoder given a page, or the reverse
                decode(body)
    with SimulatorServer(sim) as url:
        for _, run in CLIENTS:
            asyncio.run(run(ids[:50], url))
        for _ in range(args.repeat):
            for row, (_, decode) in zip(decoders, DECODERS, strict=True):
                row.seconds.append(_time(decode, bodies))
            for row, (_, run) in zip(clients, CLIENTS, strict=True):
                gc.collect()
                # The client runs on this thread, the simulator's server on its own: count only ours.
                began = time.thread_time()
                asyncio.run(run(ids, url))
                row.seconds.append(time.thread_time() - began)
            for row, (_, decode) in zip(listings, PAGE_DECODERS, strict=True):
                row.seconds.append(_time(decode, pages))

    for row, (_, decode) in zip(decoders, DECODERS, strict=True):
        row.retained, row.keeps_content = _retained_bytes(decode, bodies[:MEMORY_SAMPLE])
    for row, (_, decode) in zip(listings, PAGE_DECODERS, strict=True):
        row.retained, row.keeps_content = _retained_bytes(decode, pages[:5])

    n = len(bodies)
    print(f"{n} trace bodies: {function_calls / n:.1f} function calls and {events / n:.1f} events per trace, ")
    print(f"{sum(map(len, bodies)) / n / 1024:.1f} KiB per body on average; {len(pages)} list pages of 100 calls, ")
    print(
        f"{sum(map(len, pages)) / len(pages) / 1024:.0f} KiB each; {args.repeat} runs, interleaved; seed {args.seed}."
    )
    for line in machine():
        print(line)
    print()
    print("Decoding one trace body (`GET /v3/calls/{id}/trace`):")
    print()
    _table("decoding", "trace", decoders, n, memory=True)
    print("A whole client call per trace (request, response, decoding; loopback HTTP to the simulator):")
    print()
    _table("client call", "trace", clients, n, memory=False)
    print("Decoding one list page (`GET /v3/calls?limit=100`, outputs and errors inline):")
    print()
    _table("decoding", "page", listings, len(pages), memory=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

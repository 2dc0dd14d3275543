"""Exchange benchmark: CPU per API request through `httpx.AsyncClient` and through the
exporter's exchange (`exporter/bem/exchange.py`), the same transport under both.

    python bench/exchange.py                 # 3,000 GETs of a 10 kB body, 16 in flight, each way twice

An aiohttp server on loopback answers in the same process, so each figure is client and
server together; the difference between the two is the client layer's cost. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.bem.exchange import Exchange  # noqa: E402
from exporter.bem.transport import AsyncioTransport  # noqa: E402

BODY = b'{"functionCalls": [], "events": [], "pad": "' + b"x" * 10_000 + b'"}'
HEADERS = {"x-api-key": "key", "user-agent": "bench", "accept": "application/json"}
IN_FLIGHT = 16


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _answer(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def _timed(send: Callable[[int], Awaitable[None]], requests: int) -> float:
    """CPU µs per request, `IN_FLIGHT` at a time."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(index: int) -> None:
        async with slots:
            await send(index)

    began = _cpu()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return (_cpu() - began) / requests * 1e6


async def _run(requests: int, rounds: int) -> dict[str, Any]:
    app = web.Application()
    app.router.add_get("/v3/calls/{call_id}/trace", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    await web.SockSite(runner, sock).start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    client = httpx.AsyncClient(base_url=base, headers=HEADERS, transport=AsyncioTransport(limits))
    exchange = Exchange(base, HEADERS, timeout=10.0, connections=IN_FLIGHT, max_bytes=1 << 20)

    async def via_client(index: int) -> None:
        async with client.stream("GET", f"v3/calls/c{index}/trace") as response:
            async for _ in response.aiter_bytes():
                pass

    async def via_exchange(index: int) -> None:
        await exchange.send(f"v3/calls/c{index}/trace", None, None)

    figures: dict[str, list[float]] = {"async_client_us": [], "exchange_us": []}
    try:
        for _ in range(rounds):
            figures["async_client_us"].append(round(await _timed(via_client, requests), 1))
            figures["exchange_us"].append(round(await _timed(via_exchange, requests), 1))
    finally:
        await client.aclose()
        await exchange.aclose()
        await runner.cleanup()
    return {"requests": requests, "in_flight": IN_FLIGHT, "body_bytes": len(BODY), **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    result = asyncio.run(_run(args.requests, args.rounds))
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

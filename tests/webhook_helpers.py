"""Signed webhook deliveries for the tests: events shaped like bem's (the simulator's trace
events are bem-sdk's webhook event shapes), signed with HMAC-SHA256 as bem signs them."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from exporter.simulator import Simulator
from exporter.webhooks import SIGNATURE_HEADER, sign

SECRET = "whsec-test-0123456789abcdef"
Event = dict[str, Any]


def events_of(simulator: Simulator, call_id: str) -> list[Event]:
    """The events of a call's trace, as bem delivers them to a subscription."""
    return list(simulator.trace(call_id)["events"])


def body_of(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def signed(body: bytes, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    """The headers of a delivery of `body` signed at `at` (now by default)."""
    timestamp = int(time.time() if at is None else at)
    return {SIGNATURE_HEADER: sign(secret, timestamp, body), "content-type": "application/json"}


def deliver(url: str, event: Event, secret: str = SECRET, at: float | None = None) -> httpx.Response:
    body = body_of(event)
    return httpx.post(url, content=body, headers=signed(body, secret, at), timeout=30)


async def deliver_all(url: str, events: list[Event], connections: int = 20) -> list[int]:
    """Deliver `events` over `connections` keep-alive connections at once; the answers' status
    codes in the events' order. (A worker per connection: httpx's pool slows down with
    thousands of requests queued on it.)"""
    statuses = [0] * len(events)
    todo = iter(range(len(events)))

    async def worker(client: httpx.AsyncClient) -> None:
        for index in todo:
            body = body_of(events[index])
            statuses[index] = (await client.post(url, content=body, headers=signed(body))).status_code

    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(connections)))
    return statuses

"""Signed webhook deliveries for the tests: events shaped like bem's (the simulator's trace
events are bem-sdk's webhook event shapes), signed with HMAC-SHA256 as bem signs them."""

from __future__ import annotations

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


async def deliver_async(
    client: httpx.AsyncClient, url: str, event: Event, secret: str = SECRET
) -> httpx.Response:
    body = body_of(event)
    return await client.post(url, content=body, headers=signed(body, secret))

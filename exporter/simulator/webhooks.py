"""Webhook delivery of the simulated bem: each event of a running call that a subscription
matches is POSTed to the subscription's `webhookURL`, signed, and retried until answered 2xx.

One dispatcher per served app runs in the server's event loop. Every tick it takes the calls
created since the last tick (`Simulator.timelines`), schedules each event at the time it is
created (never earlier than the trace shows it; the call's last event per
`Webhooks.final_event_lead`), and at its time fans it out to the subscriptions that match it
then, applying the knobs (drop, duplicate, delay, reorder). Deliveries go through a bounded
queue to a few sender tasks (one aiohttp session: it costs less CPU per request than httpx,
and the receiver usually shares the machine), which sign each attempt (`bem-signature: t=<unix
seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`) and put a failed one back in the schedule
with exponential backoff, up to `Webhooks.max_attempts`. Nothing is scheduled while no
subscription has a URL, so the simulator costs nothing more without webhooks; a queue that is
full leaves deliveries in the schedule, so a slow receiver delays deliveries, never the API.
When the server stops, the deliveries not yet made are lost with it; started again, it goes on
with the events created from its last tick on (`DeliveryLog.handed_over_ms`), none twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from .webhook_log import Attempt, Signing

if TYPE_CHECKING:
    from .model import Simulator, Timeline
    from .subscriptions import Target

TICK_SECONDS = 0.02
"""How often the dispatcher looks for new calls and due deliveries."""
DUPLICATE_SPREAD = 1.0
"""The second copy of a duplicated delivery leaves up to this many seconds after the first."""
WRONG_SECRET_SUFFIX = "-not-the-account-secret"
USER_AGENT = "bem-webhooks (bem-exporter simulator)"

_encode = msgspec.json.Encoder().encode


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `bem-signature` header value of `body` signed at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True, slots=True)
class _Event:
    doc: dict[str, Any]
    created_ms: int


@dataclass(frozen=True, slots=True)
class _Delivery:
    target: Target
    event_id: str
    event_type: str
    call_id: str | None
    body: bytes
    copy: int = 0
    attempt: int = 1


class Dispatcher:
    """Schedules, fans out and sends the webhooks of one simulator."""

    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator
        self._knobs = simulator.config.webhooks
        self._log = simulator.deliveries
        self._rng = random.Random(f"bem-simulator/webhooks/{simulator.config.seed}")
        self._schedule: list[tuple[int, int, _Event | _Delivery]] = []
        self._order = itertools.count()
        self._cursor: int | None = None
        """Position of the next call to schedule; None while no subscription has a URL."""
        self._since_ms = 0
        """No event created earlier is delivered: when the oldest subscription with a URL was
        created, or when a previous dispatcher of the simulator last scheduled."""

    async def run(self) -> None:
        """Deliver until cancelled."""
        knobs = self._knobs
        queue: asyncio.Queue[_Delivery] = asyncio.Queue(knobs.queue_size)
        connector = aiohttp.TCPConnector(limit=knobs.senders)
        # trust_env stays False: bem's deliveries do not go through the proxy of whoever runs the tests
        async with aiohttp.ClientSession(connector=connector) as client:
            senders = [asyncio.create_task(self._sender(client, queue)) for _ in range(knobs.senders)]
            try:
                while True:
                    self._step(queue)
                    await asyncio.sleep(TICK_SECONDS)
            finally:
                for sender in senders:
                    sender.cancel()
                await asyncio.gather(*senders, return_exceptions=True)

    # -- scheduling ---------------------------------------------------------------------------

    def _step(self, queue: asyncio.Queue[_Delivery]) -> None:
        now = self._sim.now_ms()
        self._pick_up(now)
        schedule = self._schedule
        while schedule and schedule[0][0] <= now and not queue.full():
            _, _, item = heapq.heappop(schedule)
            if isinstance(item, _Event):
                self._fan_out(item, now)
            else:
                queue.put_nowait(item)

    def _push(self, due_ms: int, item: _Event | _Delivery) -> None:
        heapq.heappush(self._schedule, (due_ms, next(self._order), item))

    def _pick_up(self, now: int) -> None:
        """Schedule the events of the calls created since the last tick."""
        since = self._sim.subscriptions.webhooks_since()
        if since is None:
            if self._cursor is not None:
                self._disarm()
            return
        if self._cursor is None:
            self._since_ms = max(since, self._log.handed_over_ms)
            self._cursor = self._sim.webhook_cursor(self._since_ms)
        timelines, self._cursor = self._sim.timelines(self._cursor)
        for timeline in timelines:
            self._schedule_call(timeline)
        self._log.handed_over_ms = now

    def _disarm(self) -> None:
        """No subscription left: forget the events not yet due (deliveries under way go on)."""
        self._cursor = None
        self._schedule = [entry for entry in self._schedule if isinstance(entry[2], _Delivery)]
        heapq.heapify(self._schedule)

    def _schedule_call(self, timeline: Timeline) -> None:
        if not timeline.events:
            return
        last = timeline.events[-1].created_ms
        lead = self._knobs.final_event_lead
        for event in timeline.events:
            if event.created_ms < self._since_ms:
                continue  # created before any subscription could deliver it
            due = event.created_ms
            if lead is not None and event.created_ms == last:
                due = max(due, timeline.finish_ms - round(lead * 1000))
            self._push(due, _Event(event.doc, event.created_ms))

    def _fan_out(self, event: _Event, now: int) -> None:
        """One delivery per matching subscription, as the knobs make it."""
        doc = event.doc
        function_id, event_type = str(doc.get("functionID")), str(doc.get("eventType"))
        targets = self._sim.subscriptions.targets(function_id, event_type, event.created_ms)
        if not targets:
            return
        body = _encode(doc)
        call_id = doc.get("callID")
        for target in targets:
            delivery = _Delivery(target, str(doc["eventID"]), str(doc["eventType"]), call_id, body)
            self._schedule_copies(delivery, now)

    def _schedule_copies(self, delivery: _Delivery, now: int) -> None:
        knobs, rng = self._knobs, self._rng
        if rng.random() < knobs.drop_rate:
            self._log.count("dropped")
            return
        copies = 2 if rng.random() < knobs.duplicate_rate else 1
        if copies == 2:
            self._log.count("duplicated")
        for copy in range(copies):
            wait = knobs.delay + copy * rng.uniform(0.0, DUPLICATE_SPREAD)
            if rng.random() < knobs.reorder_rate:
                wait += rng.uniform(0.0, knobs.reorder_window)
                self._log.count("reordered")
            self._log.count("scheduled")
            self._push(now + round(wait * 1000), replace(delivery, copy=copy))

    # -- sending ------------------------------------------------------------------------------

    async def _sender(self, client: aiohttp.ClientSession, queue: asyncio.Queue[_Delivery]) -> None:
        while True:
            delivery = await queue.get()
            status = await self._attempt(client, delivery)
            self._settle(delivery, status)

    async def _attempt(self, client: aiohttp.ClientSession, delivery: _Delivery) -> int | None:
        """POST one attempt; the status answered, or None when none came in time."""
        sent_at = self._sim.now_ms() / 1000.0
        signing, headers = self._signed(delivery.body, int(sent_at))
        status: int | None = None
        try:
            async with asyncio.timeout(self._knobs.timeout):
                async with client.post(delivery.target.url, data=delivery.body, headers=headers) as response:
                    await response.read()
                    status = response.status
        except (aiohttp.ClientError, TimeoutError):
            pass  # no answer: retried like a non-2xx one
        self._log.record(
            Attempt(
                delivery.event_id,
                delivery.event_type,
                delivery.call_id,
                delivery.target.subscription_id,
                delivery.attempt,
                delivery.copy,
                signing,
                status,
                sent_at,
            )
        )
        return status

    def _signed(self, body: bytes, now: int) -> tuple[Signing, dict[str, str]]:
        """How this attempt is signed, and its headers. Both draws are made whatever the
        knobs, so that changing one knob does not change what the other picks."""
        knobs = self._knobs
        forged = self._rng.random() < knobs.wrong_secret_rate
        stale = self._rng.random() < knobs.stale_rate
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        secret = knobs.secret
        if secret is None:
            return "unsigned", headers
        signing: Signing = "wrong_secret" if forged else "stale" if stale else "valid"
        timestamp = now - round(knobs.stale_seconds) if stale else now
        headers["bem-signature"] = signature(secret + WRONG_SECRET_SUFFIX if forged else secret, timestamp, body)
        return signing, headers

    def _settle(self, delivery: _Delivery, status: int | None) -> None:
        """Done on a 2xx; else retried with exponential backoff, or given up after the last attempt."""
        knobs = self._knobs
        if status is not None and 200 <= status < 300:
            self._log.count("delivered")
        elif delivery.attempt >= knobs.max_attempts:
            self._log.count("given_up")
        else:
            self._log.count("retried")
            wait = min(knobs.retry_cap, knobs.retry_base * 2 ** (delivery.attempt - 1))
            self._push(self._sim.now_ms() + round(wait * 1000), replace(delivery, attempt=delivery.attempt + 1))


def deliver_webhooks(simulator: Simulator) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp `cleanup_ctx` that runs the simulator's dispatcher while the app serves."""

    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(Dispatcher(simulator).run(), name="bem-simulator-webhooks")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return context

"""The webhook listener over real HTTP on loopback: verification in the contract's order,
answers, replays, hand-over failures, the guard against slow requests; and the hint schedule
that keeps a flood of deliveries to a few reads."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from certificates import self_signed
from webhook_helpers import SECRET, body_of, signed

from exporter.config import MetricsSettings, WebhookSettings
from exporter.poll.hints import FIRST_RECHECK, FOLLOW_FOR, LISTING_GAP, STEP_GAP, HintQueue
from exporter.state import StateWriteError
from exporter.webhooks import Hint, Intake, SeenEvents, Verifier, sign
from exporter.webhooks.listener import MAX_BODY, WebhookServer
from exporter.webhooks.verify import parse_signature

EVENT: dict[str, Any] = {
    "eventID": "ev_1",
    "eventType": "extract",
    "callID": "cl_1",
    "functionCallID": "fc_1",
    "functionName": "extract-invoice",
    "referenceID": "INV-1",
    "createdAt": "2024-05-01T10:00:00.000Z",
    "transformedContent": {"total": 12},
}


class Recorder:
    """A hand-over that keeps what it was given; can be made to fail (the shared state down)."""

    def __init__(self) -> None:
        self.hints: list[Hint] = []
        self.failing = False
        self.taken_elsewhere: set[str] = set()

    async def __call__(self, hint: Hint) -> bool:
        if self.failing:
            raise StateWriteError("unavailable", "cannot store a webhook hint: the database is down")
        if hint.event_id in self.taken_elsewhere:
            return False
        self.hints.append(hint)
        return True


class Watched:
    def __init__(self) -> None:
        self.results: list[str] = []
        self.delays: list[float] = []

    def webhook_received(self, result: str, delay: float | None) -> None:
        self.results.append(result)
        if delay is not None:
            self.delays.append(delay)


Scenario = Callable[[str, Recorder, Watched], Awaitable[None]]


def serve(
    scenario: Scenario,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    allow_unsigned: bool = False,
    tls: MetricsSettings | None = None,
    **limits: Any,
) -> None:
    async def main() -> None:
        recorder, watched = Recorder(), Watched()
        verifier = Verifier(secrets, 300.0, allow_unsigned=allow_unsigned, clock=time.time)
        intake = Intake(verifier, recorder, SeenEvents(660.0, time.monotonic), time.time, (watched,))
        settings = WebhookSettings("127.0.0.1", 0, allow_unsigned=allow_unsigned)
        server = WebhookServer(settings, tls or MetricsSettings(), intake, **limits)
        url = await server.start()
        try:
            await scenario(f"{url}/webhook", recorder, watched)
        finally:
            await server.stop()

    asyncio.run(main())


# --- signatures -----------------------------------------------------------------------------------


def test_a_signature_is_checked_against_every_secret_and_its_age() -> None:
    body = body_of(EVENT)
    now = time.time()
    verifier = Verifier(("old-secret", "new-secret"), 300.0, clock=lambda: now)
    assert verifier.refusal(body, sign("old-secret", int(now), body)) is None
    assert verifier.refusal(body, sign("new-secret", int(now) - 299, body)) is None
    assert verifier.refusal(body, sign("other", int(now), body)) == "bad_signature"
    assert verifier.refusal(body + b" ", sign("new-secret", int(now), body)) == "bad_signature"
    assert verifier.refusal(body, sign("new-secret", int(now) - 301, body)) == "stale"
    assert verifier.refusal(body, sign("new-secret", int(now) + 301, body)) == "stale"
    # A stale timestamp with a wrong digest is a bad signature: the time of a forgery means nothing.
    assert verifier.refusal(body, sign("other", int(now) - 3600, body)) == "bad_signature"
    assert verifier.refusal(body, None) == "unsigned"
    digest = sign("new-secret", int(now), body).split("v1=")[1]
    # Several v1 values: one matching is enough (a sender signing with two secrets).
    assert verifier.refusal(body, f"t={int(now)},v1={'0' * 64},v1={digest}") is None


@pytest.mark.parametrize(
    "header", ["", "v1=abc", "t=123", "t=abc,v1=00", "t=1,t=2,v1=00", "t=1;v1=00", "t=1,v1=\u00e9\u00e9", "garbage"]
)
def test_malformed_signature_headers_are_bad_signatures(header: str) -> None:
    verifier = Verifier(("s",), 300.0, clock=time.time)
    assert verifier.refusal(b"{}", header) == "bad_signature"


def test_unsigned_deliveries_pass_only_when_allowed_and_no_secret_is_set() -> None:
    assert Verifier((), 300.0, allow_unsigned=True, clock=time.time).refusal(b"{}", None) is None
    assert Verifier((), 300.0, allow_unsigned=False, clock=time.time).refusal(b"{}", None) == "unsigned"
    with_secret = Verifier(("s",), 300.0, allow_unsigned=True, clock=time.time)
    assert with_secret.refusal(b"{}", None) == "unsigned"
    assert parse_signature("t=5,v1=AB") is not None and parse_signature("t=5,v1=AB").digests == ("ab",)  # type: ignore[union-attr]


# --- answers over HTTP ----------------------------------------------------------------------------


def test_each_kind_of_delivery_gets_the_contract_answer_and_only_accepted_ones_are_handed_over() -> None:
    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        body = body_of(EVENT)
        async with httpx.AsyncClient(timeout=10) as client:

            async def post(content: bytes, headers: dict[str, str]) -> int:
                return (await client.post(url, content=content, headers=headers)).status_code

            assert await post(body, signed(body, "wrong-secret")) == 401
            assert await post(body, signed(body, at=time.time() - 3600)) == 401
            assert await post(body, {"content-type": "application/json"}) == 401
            not_json = b"{not json"
            assert await post(not_json, signed(not_json)) == 400
            no_id = json.dumps({"eventType": "extract", "callID": "cl_1"}).encode()
            assert await post(no_id, signed(no_id)) == 400
            # Order: a forged body is refused for its signature before its JSON is looked at.
            assert await post(not_json, signed(not_json, "wrong-secret")) == 401
            assert recorder.hints == []
            assert await post(body, signed(body)) == 200
            replay = await client.post(url, content=body, headers=signed(body))
            assert (replay.status_code, replay.text) == (200, "duplicate\n")
            assert (await client.get(url)).status_code == 405
            assert (await client.post(url.replace("/webhook", "/metrics"), content=body)).status_code == 404
        assert [hint.call_id for hint in recorder.hints] == ["cl_1"]
        assert watched.results == [
            "bad_signature", "stale", "unsigned", "malformed", "malformed", "bad_signature", "accepted", "duplicate"
        ]  # fmt: skip
        assert len(watched.delays) == 1 and watched.delays[0] > 0

    serve(scenario)


def test_oversize_bodies_are_413_announced_or_streamed_before_their_signature_is_checked() -> None:
    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        big = body_of({**EVENT, "pad": "x" * MAX_BODY})
        async with httpx.AsyncClient(timeout=30) as client:
            announced = await client.post(url, content=big, headers=signed(big))
            assert announced.status_code == 413

            async def chunks() -> Any:
                for start in range(0, len(big), 65536):
                    yield big[start : start + 65536]

            streamed = await client.post(url, content=chunks(), headers=signed(big, "forged"))
            assert streamed.status_code == 413
            just_fits = body_of({**EVENT, "pad": "x" * (MAX_BODY - len(body_of(EVENT)) - 9)})
            assert len(just_fits) == MAX_BODY
            assert (await client.post(url, content=just_fits, headers=signed(just_fits))).status_code == 200
        assert watched.results == ["too_large", "too_large", "accepted"]
        assert len(recorder.hints) == 1

    serve(scenario)


def test_a_chunked_delivery_is_read_whole_and_its_connection_serves_the_next() -> None:
    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for number in range(2):
                body = body_of({**EVENT, "eventID": f"ev_chunked_{number}"})

                async def chunks(data: bytes = body) -> Any:
                    for start in range(0, len(data), 7):
                        yield data[start : start + 7]

                response = await client.post(url, content=chunks(), headers=signed(body))
                assert (response.status_code, response.text) == (200, "accepted\n")
                await asyncio.sleep(0.7)  # idle past the request timeout: the body's end was seen
        assert [hint.event_id for hint in recorder.hints] == ["ev_chunked_0", "ev_chunked_1"]

    serve(scenario, request_timeout=0.5)


def test_a_hand_over_that_cannot_be_made_safe_is_503_and_the_retry_is_accepted() -> None:
    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        body = body_of(EVENT)
        recorder.failing = True
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(url, content=body, headers=signed(body))).status_code == 503
            recorder.failing = False
            retried = await client.post(url, content=body, headers=signed(body))
            assert (retried.status_code, retried.text) == (200, "accepted\n")
            # Another replica took this event first: 2xx, a duplicate, handed over once.
            recorder.taken_elsewhere.add("ev_2")
            other = body_of({**EVENT, "eventID": "ev_2"})
            assert (await client.post(url, content=other, headers=signed(other))).text == "duplicate\n"
        assert [hint.event_id for hint in recorder.hints] == ["ev_1"]
        assert watched.results == ["accepted", "duplicate"]

    serve(scenario)


def test_unsigned_deliveries_are_accepted_when_allowed() -> None:
    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        body = body_of({**EVENT, "callID": None})
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.post(url, content=body)).status_code == 200
        assert recorder.hints[0].call_id is None and watched.results == ["accepted"]

    serve(scenario, secrets=(), allow_unsigned=True)


def test_the_listener_serves_tls_when_the_metrics_listener_does(tmp_path: Path) -> None:
    cert, key = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    tls = MetricsSettings(tls_cert_file=str(tmp_path / "cert.pem"), tls_key_file=str(tmp_path / "key.pem"))

    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        assert url.startswith("https://")
        body = body_of(EVENT)
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        async with httpx.AsyncClient(timeout=10, verify=trust) as client:
            assert (await client.post(url, content=body, headers=signed(body))).status_code == 200
        assert len(recorder.hints) == 1

    serve(scenario, tls=tls)


# --- slow requests --------------------------------------------------------------------------------


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), timeout=60)
    except ConnectionResetError:
        return True
    return data == b""


async def _cut_off(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), timeout=60)
    except ConnectionResetError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def test_a_body_announced_and_never_sent_is_cut_off_while_deliveries_go_through() -> None:
    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        stalled = []
        for part in (b"", b'{"eventID":') * 3:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + part)
            stalled.append((reader, writer))
        body = body_of(EVENT)
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(url, content=body, headers=signed(body))).status_code == 200
        # The stalled requests were still open when the delivery went through, and then closed.
        assert all(not reader.at_eof() for reader, _ in stalled)
        # Closed without an answer to the stalled request (the guard), or with a 408 (the handler).
        assert all(await asyncio.gather(*(_cut_off(reader) for reader, _ in stalled)))
        for _, writer in stalled:
            writer.close()
        assert len(recorder.hints) == 1

    serve(scenario, request_timeout=1.0)


def test_a_keep_alive_connection_carries_several_deliveries() -> None:
    """A body is timed with its request, not as the start of the next one: a connection that
    delivered stays open while idle past the request timeout, and carries the next delivery."""

    async def scenario(url: str, recorder: Recorder, watched: Watched) -> None:
        host, port = url.split("//")[1].split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        for number in range(3):
            body = body_of({**EVENT, "eventID": f"ev_{number}"})
            head = "".join(f"{name}: {value}\r\n" for name, value in signed(body).items())
            request = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n"
            writer.write(request.encode() + body)
            status = await reader.readuntil(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 200")
            await reader.readexactly(len(b"accepted\n"))
            await asyncio.sleep(0.7)  # idle past the 0.5 s request timeout
        writer.close()
        assert len(recorder.hints) == 3

    serve(scenario, request_timeout=0.5)


# --- the hint schedule -----------------------------------------------------------------------------


class Tick:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_hints_for_one_call_is_one_read_per_step() -> None:
    tick = Tick()
    queue = HintQueue(tick)
    for _ in range(1000):
        queue.note("cl_1")
    assert queue.next_due() <= tick.now  # type: ignore[operator]
    due, listing = queue.take_due()
    assert (due, listing) == (["cl_1"], True)
    queue.settled(due)
    for _ in range(1000):
        queue.note("cl_1")  # a settled call costs nothing more
    tick.now += LISTING_GAP
    assert queue.take_due() == ([], True)
    assert queue.next_due() is None


def test_a_call_still_running_is_read_again_on_a_backoff_for_a_bounded_time() -> None:
    tick = Tick()
    queue = HintQueue(tick)
    queue.note("cl_1")
    reads = []
    while (due := queue.next_due()) is not None:
        tick.now = max(tick.now, due)
        ids, _ = queue.take_due()
        if ids:
            reads.append(tick.now - 1000.0)
            queue.running(ids)
    gaps = [later - earlier for earlier, later in itertools.pairwise(reads)]
    assert gaps[0] == pytest.approx(max(FIRST_RECHECK, STEP_GAP)) and gaps == sorted(gaps)
    assert reads[-1] <= FOLLOW_FOR + 2.0 and len(reads) < 15
    # A new event of the call brings its read forward again, at the steps' pace.
    tick.now += 0.05
    queue.note("cl_1")
    assert queue.next_due() == pytest.approx(tick.now - 0.05 + STEP_GAP)


# --- conformance with bem-sdk ---------------------------------------------------------------------


def test_the_hint_agrees_with_bem_sdks_reading_of_every_event_the_simulator_emits() -> None:
    """bem-sdk's `webhooks.unwrap` is the exact statement of a delivery's shape: the fields a
    hint takes are the ones it reads, for every event type the simulator's calls emit."""
    import bem

    from exporter.simulator import Simulator, SimulatorConfig
    from exporter.webhooks.event import parse_event

    sdk = bem.Bem(api_key="unused", base_url="http://127.0.0.1:9")
    simulator = Simulator(SimulatorConfig(seed=5, prefill=60, arrival_rate=0.0, history=3600.0))
    seen: set[str] = set()
    for call_id in simulator.call_ids():
        for event in simulator.trace(call_id)["events"]:
            body = body_of(event)
            hint, typed = parse_event(body), sdk.webhooks.unwrap(body.decode())
            assert (hint.event_id, hint.call_id) == (typed.event_id, typed.call_id)
            if typed.created_at is not None:
                assert hint.created_at == pytest.approx(typed.created_at.timestamp())
            seen.add(event["eventType"])
    assert {"extract", "classify", "error"} <= seen, seen

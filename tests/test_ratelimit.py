"""The adaptive request rate (exporter/bem/ratelimit.py) and the simulator's token bucket,
driven by a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from exporter.bem.ratelimit import FLOOR_RATE, INITIAL_RATE, AdaptiveRate, Ticket
from exporter.bem.simulator.ratelimit import KeyedLimits, TokenBucket, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def paced(start: float) -> Ticket:
    return Ticket(start, paced=True)


def test_starts_conservatively_and_never_exceeds_the_ceiling() -> None:
    clock = Clock()
    rate = AdaptiveRate(40.0, clock=clock)
    assert rate.rate == INITIAL_RATE
    for _ in range(1000):
        clock.now += 0.01
        rate.succeeded(paced(clock.now), latency=0.01)
    assert rate.rate == 40.0
    assert AdaptiveRate(2.0, clock=clock).rate == 2.0


def test_slow_start_doubles_about_every_second_of_requests() -> None:
    clock = Clock()
    rate = AdaptiveRate(1000.0, clock=clock)
    for _ in range(int(INITIAL_RATE)):  # one second's worth of requests at the initial rate
        rate.succeeded(paced(clock.now), latency=0.01)
    assert INITIAL_RATE * 1.5 < rate.rate < INITIAL_RATE * 2.5


def test_unpaced_requests_do_not_raise_the_rate() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, clock=clock)
    for _ in range(100):
        rate.succeeded(Ticket(clock.now, paced=False), latency=0.01)
    assert rate.rate == INITIAL_RATE


def test_a_throttle_cuts_once_for_requests_already_in_flight() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=50.0, clock=clock)
    in_flight = [paced(clock.now - 0.01 * i) for i in range(5)]
    clock.now += 0.05
    for ticket in in_flight:
        rate.throttled(ticket, retry_after=None)
    assert rate.rate == pytest.approx(50.0 * 0.85)
    clock.now += 0.05
    rate.throttled(paced(clock.now), retry_after=None)  # a request started after the cut
    assert rate.rate == pytest.approx(50.0 * 0.85 * 0.85)


def test_after_a_throttle_growth_is_gentle() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=20.0, clock=clock)
    rate.throttled(paced(clock.now), retry_after=None)
    after_cut = rate.rate
    for _ in range(20):  # about one second of requests
        clock.now += 0.05
        rate.succeeded(paced(clock.now), latency=0.01)
    assert after_cut < rate.rate < after_cut * 1.05


def test_retry_after_pauses_every_start(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, clock=clock)
    rate.throttled(paced(clock.now), retry_after=3.0)
    assert rate.paused_for == pytest.approx(3.0)

    async def turn() -> Ticket:
        return await rate.acquire()

    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    ticket = asyncio.run(turn())
    assert ticket.start == pytest.approx(clock.now + 3.0)
    assert slept == [pytest.approx(3.0)]


def test_rising_latency_backs_off_and_the_floor_holds() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=10.0, clock=clock)
    rate.succeeded(paced(clock.now), latency=0.05)
    for _ in range(200):
        clock.now += 0.1
        rate.succeeded(paced(clock.now), latency=3.0)
    assert rate.rate == FLOOR_RATE


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=5.0, burst=3.0, clock=clock)
    assert [bucket.take() for _ in range(3)] == [None, None, None]
    wait = bucket.take()
    assert wait == pytest.approx(0.2)
    clock.now += 0.2
    assert bucket.take() is None
    assert retry_after_header(0.2) == "1"


def test_limits_are_per_key() -> None:
    clock = Clock()
    limits = KeyedLimits(rate=1.0, burst=1.0, clock=clock)
    assert limits.take("a") is None
    assert limits.take("a") is not None
    assert limits.take("b") is None

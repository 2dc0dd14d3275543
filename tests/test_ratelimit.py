"""The adaptive request rate (exporter/bem/ratelimit.py) and the simulator's token bucket,
driven by a clock the test moves."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import SIM_KEY

from exporter.app import client_hooks
from exporter.bem.client import BemClient, ClientHooks, ListQuery
from exporter.bem.overload import CUT_MARGIN, LARGEST_CUT, STORM_HOLD, WINDOW
from exporter.bem.ratelimit import DECISIONS, INITIAL_RATE, AdaptiveRate, RateDecision, Ticket
from exporter.config import MetricsSettings
from exporter.metrics import Metrics
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.ratelimit import KeyedLimits, TokenBucket, retry_after_header


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
        rate.succeeded(paced(clock.now))
    assert rate.rate == 40.0
    assert AdaptiveRate(2.0, clock=clock).rate == 2.0


def test_slow_start_doubles_about_every_second_of_requests() -> None:
    clock = Clock()
    rate = AdaptiveRate(40.0, clock=clock)
    for _ in range(int(INITIAL_RATE)):  # one second's worth of requests at the initial rate
        rate.succeeded(paced(clock.now))
    assert INITIAL_RATE * 1.5 < rate.rate < INITIAL_RATE * 2.5


def test_unpaced_requests_do_not_raise_the_rate() -> None:
    clock = Clock()
    rate = AdaptiveRate(40.0, clock=clock)
    for _ in range(100):
        rate.succeeded(Ticket(clock.now, paced=False))
    assert rate.rate == INITIAL_RATE


def test_the_first_cut_halves_the_rate_once_for_requests_already_in_flight() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=50.0, clock=clock)
    for _ in range(WINDOW - 2):
        rate.succeeded(Ticket(clock.now - 1.0, paced=False))
    in_flight = [paced(clock.now - 0.01 * i) for i in range(5)]
    clock.now += 0.05
    for ticket in in_flight:
        rate.throttled(ticket, retry_after=None)
    assert rate.rate == pytest.approx(50.0 * LARGEST_CUT)  # leaving the start, as TCP leaves slow start
    assert rate.state == "checking"
    clock.now += 0.05
    rate.throttled(paced(clock.now), retry_after=None)  # started after the cut: judged, not cut again
    assert rate.rate == pytest.approx(50.0 * LARGEST_CUT)


def test_a_lone_429_while_starting_is_taken_for_jitter() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=20.0, clock=clock)
    rate.throttled(paced(clock.now), retry_after=None)  # a stall bunched a few requests, say
    assert (rate.rate, rate.state) == (20.0, "starting")
    for _ in range(WINDOW - 1):
        clock.now += 0.05
        rate.succeeded(Ticket(clock.now, paced=False))
    rate.throttled(paced(clock.now), retry_after=None)  # the first one has left the last 20
    assert (rate.rate, rate.state) == (20.0, "starting")
    clock.now += 0.05
    rate.throttled(paced(clock.now), retry_after=None)  # a second among the last 20: a limit
    assert (rate.rate, rate.state) == (10.0, "checking")

    asked = AdaptiveRate(100.0, initial=20.0, clock=clock)
    asked.throttled(paced(clock.now), retry_after=1.0)  # one that asks for a pause is believed
    assert (asked.rate, asked.state) == (10.0, "checking")


def past_the_start(clock: Clock, initial: float, decided: Callable[[RateDecision], None] = print) -> AdaptiveRate:
    """A rate whose first cut (two 429s in the last 20 answers) halved it, and held."""
    rate = AdaptiveRate(1000.0, initial=initial, clock=clock, decided=decided)
    rate.throttled(paced(clock.now), retry_after=None)
    rate.throttled(paced(clock.now), retry_after=None)
    for _ in range(WINDOW):
        clock.now += 0.01
        rate.succeeded(Ticket(clock.now, paced=False))
    assert rate.state == "steady"
    assert rate.rate == pytest.approx(initial * LARGEST_CUT)
    return rate


def test_a_cut_is_as_deep_as_the_share_of_429s_says() -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=40.0, clock=clock)
    rate.throttled(paced(clock.now), retry_after=None)  # the very first answers: refused
    rate.throttled(paced(clock.now), retry_after=None)
    assert rate.rate == pytest.approx(40.0 * LARGEST_CUT)
    for index in range(WINDOW):  # the cut is judged on the next 20 answers: 6 refused
        clock.now += 0.05
        if index % 10 < 3:
            rate.throttled(paced(clock.now), retry_after=None)
        else:
            rate.succeeded(Ticket(clock.now, paced=False))
    assert rate.rate == pytest.approx(20.0 * (1 - 6 / 20) * CUT_MARGIN)

    rate = past_the_start(clock, initial=40.0)  # past the start, one 429 in the last 20: a gentle cut
    clock.now += 0.05
    rate.throttled(paced(clock.now), retry_after=None)
    assert rate.rate == pytest.approx(20.0 * (1 - 1 / 20) * CUT_MARGIN)


def test_after_a_cut_the_rate_climbs_back_lingers_then_probes() -> None:
    clock = Clock()
    decisions: list[RateDecision] = []
    rate = past_the_start(clock, initial=20.0, decided=decisions.append)
    found = 20.0 * (1 - 1 / WINDOW)  # what got through, bar the 429 that drew the cut: about the limit
    assert decisions[-1].limit == pytest.approx(found)

    def one_second() -> None:
        for _ in range(int(rate.rate)):
            clock.now += 1.0 / rate.rate
            rate.succeeded(paced(clock.now))

    one_second()
    assert 10.0 < rate.rate < found  # back towards it, not past it,
    for _ in range(10):
        one_second()
    assert rate.rate > 10.0 + (found - 10.0) / 3  # a third of the way within 11 s
    for _ in range(30):
        one_second()
    assert found * 0.99 < rate.rate <= found  # lingering just under it
    while rate.state == "steady":
        one_second()
    assert decisions[-1].kind == "probe"  # past it without a 429: reported once
    before = rate.rate
    one_second()
    assert before < rate.rate < before * 1.01  # probing gently at first,
    for _ in range(60):
        one_second()
    before = rate.rate
    one_second()
    assert rate.rate > before * 1.015  # faster the longer no 429 comes (a raised limit)
    assert [d.kind for d in decisions] == ["cut", "limit", "probe"]


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
        clock.now += seconds

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    began = clock.now
    ticket = asyncio.run(turn())
    assert ticket.start == pytest.approx(began + 3.0)
    assert slept == [pytest.approx(3.0)]


def test_a_cut_or_a_rise_paces_the_requests_already_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    rate = AdaptiveRate(100.0, initial=10.0, clock=clock)
    for _ in range(WINDOW - 2):
        rate.succeeded(Ticket(clock.now - 1.0, paced=False))
    starts: list[float] = []

    async def virtual_sleep(seconds: float) -> None:
        clock.now += seconds
        if len(starts) == 2:  # two 429s for requests started before: the first cut halves the rate
            rate.throttled(paced(clock.now - 5.0), retry_after=None)
            rate.throttled(paced(clock.now - 5.0), retry_after=None)

    async def queue(count: int) -> None:
        async def one() -> None:
            starts.append((await rate.acquire()).start)

        await asyncio.gather(*(one() for _ in range(count)))

    monkeypatch.setattr(asyncio, "sleep", virtual_sleep)
    asyncio.run(queue(5))
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps[0] == pytest.approx(1 / 10)
    assert gaps[1:] == [pytest.approx(1 / (10 * LARGEST_CUT))] * 3  # all waiting, at the new pace


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


# -- the client's adaptive rate against the simulator's limit, over real HTTP ------------------


class Seen:
    """What the client reported through its hooks, with when (the simulator's clock)."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.throttles: list[tuple[float, float]] = []
        self.cleared: list[float] = []

    def hooks(self) -> ClientHooks:
        return ClientHooks(
            rate=self.rates.append,
            throttled=lambda wait: self.throttles.append((time.monotonic(), wait)),
            throttle_cleared=lambda: self.cleared.append(time.monotonic()),
        )


def fetch_traces(url: str, count: int, max_rps: float, seen: Seen, concurrency: int = 8) -> int:
    """Fetch `count` traces (call ids listed first), all at once; how many came back."""

    async def run() -> int:
        async with BemClient(
            url, SIM_KEY, "v3", timeout=10, max_concurrency=concurrency, max_rps=max_rps, hooks=seen.hooks()
        ) as client:
            page = await client.list_calls(ListQuery(limit=100))
            ids = [call.call_id for call in page.calls]
            traces = await asyncio.gather(*(client.get_trace(ids[i % len(ids)]) for i in range(count)))
            return len(traces)

    return asyncio.run(run())


def most_in_one_second(starts: list[float]) -> int:
    ordered, peak, first = sorted(starts), 0, 0
    for last, moment in enumerate(ordered):
        while moment - ordered[first] >= 1.0:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def served(simulator: Simulator, status: int) -> int:
    return sum(n for (_, code), n in simulator.responses.items() if code == status)


@pytest.fixture
def limited() -> Iterator[tuple[Simulator, str]]:
    simulator = Simulator(SimulatorConfig(prefill=100, history=600.0, arrival_rate=0.0, speed=1000.0))
    with SimulatorServer(simulator) as url:
        yield simulator, url


@pytest.mark.serial  # counts request starts per second: a busy machine bunches them
def test_the_rate_never_exceeds_the_ceiling(limited: tuple[Simulator, str]) -> None:
    simulator, url = limited  # no limit at the simulator: only the ceiling holds the client back
    seen = Seen()
    assert fetch_traces(url, 150, max_rps=12.0, seen=seen) == 150
    # Starts are paced 1/12 s apart; one more may share a second through arrival jitter.
    assert most_in_one_second(list(simulator.request_starts)) <= 13
    assert max(seen.rates) == 12.0
    assert served(simulator, 429) == 0


def test_a_429_cuts_the_rate_and_every_call_still_comes_back(limited: tuple[Simulator, str]) -> None:
    simulator, url = limited
    simulator.config.faults.rate_limit = 20.0
    simulator.config.faults.rate_limit_retry_after = False
    seen = Seen()
    assert fetch_traces(url, 150, max_rps=100.0, seen=seen) == 150
    assert served(simulator, 429) > 0
    peak = seen.rates.index(max(seen.rates))
    assert min(seen.rates[peak:]) < max(seen.rates) * 0.9  # cut after the peak
    assert seen.throttles == []  # no Retry-After, no throttle wait reported


def test_retry_after_pauses_every_request_start(limited: tuple[Simulator, str]) -> None:
    simulator, url = limited
    simulator.config.faults.rate_limit = 20.0
    simulator.config.faults.rate_limit_burst = 5.0
    seen = Seen()
    concurrency = 4
    assert fetch_traces(url, 120, max_rps=200.0, seen=seen, concurrency=concurrency) == 120
    assert served(simulator, 429) > 0
    assert seen.throttles
    starts = list(simulator.request_starts)
    for moment, wait in seen.throttles:
        assert wait == 1.0  # the simulator's Retry-After: whole seconds, rounded up
        during = [start for start in starts if moment < start < moment + wait * 0.9]
        # Only requests already on their way when the 429 came may arrive within the pause.
        assert len(during) < concurrency
    # The throttle gauge is cleared by the first start after each pause.
    assert len(seen.cleared) >= 1
    assert all(any(cleared >= moment for cleared in seen.cleared) for moment, _ in seen.throttles)


def test_the_rate_and_throttle_reach_the_self_metrics(limited: tuple[Simulator, str]) -> None:
    simulator, url = limited
    simulator.config.faults.rate_limit = 20.0
    simulator.config.faults.rate_limit_burst = 5.0
    metrics = Metrics(MetricsSettings(), "test")
    registry = metrics.live_registry

    def decisions(kind: str) -> float | None:
        return registry.get_sample_value("bem_exporter_api_rate_decisions_total", {"decision": kind})

    assert [decisions(kind) for kind in DECISIONS] == [0.0] * len(DECISIONS)  # there before the first

    async def run() -> None:
        hooks = client_hooks(metrics.observer)
        async with BemClient(url, SIM_KEY, "v3", timeout=10, max_concurrency=4, max_rps=200.0, hooks=hooks) as c:
            ids = [call.call_id for call in (await c.list_calls(ListQuery(limit=100))).calls]
            await asyncio.gather(*(c.get_trace(ids[i % 100]) for i in range(100)))
            rate = registry.get_sample_value("bem_exporter_api_rate_limit")
            assert rate is not None and 0 < rate <= 200.0
            assert (registry.get_sample_value("bem_exporter_api_throttled_total") or 0) > 0
            await c.get_trace(ids[0])  # a start after the last pause clears the throttle
            assert registry.get_sample_value("bem_exporter_api_throttle_seconds") == 0

    asyncio.run(run())
    assert (decisions("cut") or 0) >= 1  # the 429s drew at least one cut, counted by kind


def test_a_pause_that_begins_while_a_request_waits_moves_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    rate = AdaptiveRate(10.0, initial=1.0, clock=clock)
    slept: list[float] = []

    async def sleep_and_throttle(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 1:  # a 429 with Retry-After arrives while the second request waits
            rate.throttled(paced(clock.now - 2.0), retry_after=5.0)

    async def two_turns() -> tuple[Ticket, Ticket]:
        return await rate.acquire(), await rate.acquire()

    monkeypatch.setattr(asyncio, "sleep", sleep_and_throttle)
    first, second = asyncio.run(two_turns())
    assert not first.paced
    assert second.paced
    assert second.start == pytest.approx(first.start + 1.0 + 5.0)  # its turn, then the whole pause


# -- the adaptive rate against a token bucket and against storms, on a virtual clock ----------

LATENCY = 0.005


@dataclass
class Backfill:
    """Requests back to back through the rate for a span of virtual time, and what came back."""

    answered: int = 0
    refused: int = 0
    peak_rate: float = 0.0

    @property
    def share_refused(self) -> float:
        return self.refused / (self.answered + self.refused)


def backfill(
    rate: AdaptiveRate, clock: Clock, refuse: Callable[[], float | None], seconds: float, retry_after: bool
) -> Backfill:
    """`refuse()` is asked at each request's start: None lets it through, else the wait bem
    would ask for (sent as whole seconds when `retry_after`)."""
    seen, until = Backfill(), clock.now + seconds

    async def virtual_sleep(delay: float) -> None:
        clock.now += delay

    async def run() -> None:
        while clock.now < until:
            ticket = await rate.acquire()
            wait = refuse()
            clock.now += LATENCY
            if wait is None:
                seen.answered += 1
                rate.succeeded(ticket)
            else:
                seen.refused += 1
                rate.throttled(ticket, float(max(1, math.ceil(wait))) if retry_after else None)
            seen.peak_rate = max(seen.peak_rate, rate.rate)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "sleep", virtual_sleep)
        asyncio.run(run())
    return seen


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
@pytest.mark.parametrize("bucket_seconds", [1.0, 0.1], ids=["1s-bucket", "0.1s-bucket"])
@pytest.mark.parametrize("limit", [5.0, 20.0, 100.0])
def test_finds_a_limit_it_is_not_told(limit: float, bucket_seconds: float, retry_after: bool) -> None:
    clock = Clock()
    decisions: list[RateDecision] = []
    rate = AdaptiveRate(1000.0, clock=clock, decided=decisions.append)
    # The bucket holds `bucket_seconds` of the limit, and at least one request (5/s, 0.1 s: one).
    bucket = TokenBucket(rate=limit, burst=max(1.0, limit * bucket_seconds), clock=clock)
    seen = backfill(rate, clock, bucket.take, seconds=600.0, retry_after=retry_after)
    assert seen.answered / 600.0 >= 0.9 * limit
    assert seen.share_refused <= 0.02
    assert not rate.storm
    assert "storm" not in {decision.kind for decision in decisions}
    assert decisions[-1].limit == pytest.approx(limit, rel=0.1)  # the limit found, as /status shows it


def test_never_above_the_ceiling_whatever_the_api_allows() -> None:
    clock = Clock()
    decisions: list[RateDecision] = []
    rate = AdaptiveRate(30.0, clock=clock, decided=decisions.append)
    seen = backfill(rate, clock, lambda: None, seconds=60.0, retry_after=False)
    assert seen.peak_rate == 30.0
    assert seen.answered <= 30.0 * 60.0 + 1
    [ceiling] = decisions  # reached once, said once
    assert (ceiling.kind, ceiling.rate, ceiling.state) == ("ceiling", 30.0, "starting")
    assert "BEM_MAX_RPS (30/s)" in ceiling.reason


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
@pytest.mark.parametrize("share", [0.2, 0.6])
def test_a_storm_of_429s_does_not_stall_the_rate(share: float, retry_after: bool) -> None:
    """429s at random, whatever the rate (an API under load): cutting does not lower their
    share, so after two cuts the rate goes back and grows on; when the storm passes, 429s cut
    the rate again."""
    clock, draw = Clock(), random.Random(7)
    decisions: list[RateDecision] = []
    decided_at: list[float] = []

    def decided(decision: RateDecision) -> None:
        decisions.append(decision)
        decided_at.append(clock.now)

    rate = AdaptiveRate(200.0, clock=clock, decided=decided)

    def storm() -> float | None:
        return 0.2 if draw.random() < share else None

    for _ in range(30):
        backfill(rate, clock, storm, seconds=1.0, retry_after=retry_after)
        if rate.storm:
            break
    assert rate.storm
    storm_verdict = decisions[-1]
    assert storm_verdict.kind == "storm"
    run = list(itertools.takewhile(lambda d: d.kind == "cut", reversed(decisions[:-1])))
    assert storm_verdict.rate == run[-1].rate_before  # back where the first cut found it
    seen = backfill(rate, clock, storm, seconds=60.0, retry_after=retry_after)
    verdict = decisions.index(storm_verdict)
    calm = next(i for i, d in enumerate(decisions) if i > verdict and d.kind == "calm")
    assert decided_at[calm] - decided_at[verdict] == pytest.approx(STORM_HOLD, abs=1.0)  # then judged afresh
    if retry_after:  # bem's pauses (a second per 429) bound what gets through; the rate holds
        assert rate.rate >= INITIAL_RATE
    else:
        assert seen.answered > 60.0 * INITIAL_RATE * 2  # it grows past the initial rate
    assert seen.share_refused == pytest.approx(share, abs=0.1)

    bucket = TokenBucket(rate=10.0, burst=10.0, clock=clock)  # the storm passes; a limit remains
    backfill(rate, clock, bucket.take, seconds=60.0, retry_after=retry_after)
    assert not rate.storm
    seen = backfill(rate, clock, bucket.take, seconds=300.0, retry_after=retry_after)
    assert seen.share_refused <= 0.02


@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "no-retry-after"])
def test_the_rate_recovers_once_the_limit_is_lifted(retry_after: bool) -> None:
    clock = Clock()
    rate = AdaptiveRate(1000.0, clock=clock)
    bucket = TokenBucket(rate=10.0, burst=10.0, clock=clock)
    backfill(rate, clock, bucket.take, seconds=120.0, retry_after=retry_after)
    assert 8.0 < rate.rate < 12.0
    seen = backfill(rate, clock, lambda: None, seconds=120.0, retry_after=retry_after)  # the limit lifted
    assert seen.refused == 0
    assert rate.rate > 20.0  # found within two minutes


def test_each_decision_is_logged_once_at_info_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    decisions: list[RateDecision] = []
    rate = AdaptiveRate(1000.0, clock=clock, decided=decisions.append)
    bucket = TokenBucket(rate=20.0, burst=20.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="exporter.bem.ratelimit"):
        backfill(rate, clock, bucket.take, seconds=120.0, retry_after=False)
    records = [r for r in caplog.records if r.name == "exporter.bem.ratelimit"]
    assert {d.kind for d in decisions} >= {"cut", "limit", "probe"}
    assert len(records) == len(decisions)
    for record, decision in zip(records, decisions, strict=True):
        assert record.levelno == logging.INFO
        assert record.getMessage() == f"request rate {decision.kind}: {decision.reason}"
        fields = vars(record)
        assert (fields["decision"], fields["state"]) == (decision.kind, decision.state)
        assert fields["rate"] == pytest.approx(decision.rate, abs=0.001)
        assert fields["rate_before"] == pytest.approx(decision.rate_before, abs=0.001)
    cut = next(d for d in decisions if d.kind == "cut")
    # The reason carries the figures: answers refused, the rate they were sent at, what got through.
    assert re.search(r"^429s: \d+ of 20 answers refused at [0-9.]+/s; about [0-9.]+/s get through$", cut.reason)

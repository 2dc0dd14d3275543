"""Telling a rate limit from a storm of 429s: when to cut the request rate, and how far.

A rate limit lets about the same number of requests through per second whatever the exporter
sends; a storm (an API under load) refuses the same share whatever it sends. The judge reads
each answer against the last WINDOW answers and gives a verdict when one is due:

- **cut**: a 429 to a request started after the last cut (for the very first cut, a second
  429 among the last WINDOW answers, unless the first asked for a pause). The rate goes to
  CUT_MARGIN of what got through (the share of the last WINDOW answers that got through,
  times the rate), and at most halves. The limit found is what got through, not counting
  the 429 that drew the cut (it says the rate crossed the limit, not by how much).
- **limit**: of the WINDOW answers to requests started after a cut, fewer than HELPED_SHARE
  were 429s: the cut found the limit. More: the rate is cut again, sized by those answers.
- **storm**: the 429s are not about the rate, when a second cut in a row left their share
  nearer where it was (what a storm does) than where a limit would have put it, or when a
  request was refused right after the exporter waited as long as `Retry-After` asked (a
  limit would have let it through). The rate goes back to where the first cut found it and
  no 429 cuts it for STORM_HOLD seconds;
- **calm**: then 429s are judged afresh.

`exporter.bem.ratelimit` applies the verdicts and reports them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

WINDOW = 20
"""Answers that size a cut (the last ones) and judge it (those started after it)."""
CUT_MARGIN = 0.95
"""A cut lands this share below what got through: just under the limit."""
LARGEST_CUT = 0.5
"""A cut keeps at least this share of the rate, so a burst of 429s is judged again soon."""
HELPED_SHARE = 0.1
"""Fewer 429s than this share after a cut: the cut found the limit."""
FIRST_CUT_429S = 2
"""429s among the last WINDOW answers that draw the first cut (one, if it asked for a pause)."""
STORM_HOLD = 30.0
"""Seconds a storm verdict holds before 429s are judged afresh."""

VerdictKind = Literal["cut", "limit", "storm", "calm"]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the judge needs to know of one answer."""

    start: float
    """When its request started, on the rate's clock."""
    refused: bool = False
    """A 429."""
    paused: bool = False
    """A 429 that asked for a pause (`Retry-After`)."""
    resumed: bool = False
    """Its request was the first to start after such a pause."""


@dataclass(frozen=True, slots=True)
class Reading:
    """Answers to requests sent at a rate: how many, and how many refused."""

    answers: int
    refused: int
    rate: float
    """The rate in force: the pace of a busy client, `Retry-After` pauses and idle spells aside."""

    @property
    def share_refused(self) -> float:
        return self.refused / self.answers if self.answers else 0.0

    @property
    def got_through(self) -> float:
        """Requests per second that got through: about the limit, when one refuses."""
        return self.rate * (1.0 - self.share_refused)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reading: Reading
    """The answers the verdict rests on."""
    factor: float = 1.0
    """For a cut: what the rate is multiplied by."""
    limit: float = 0.0
    """For a cut: requests per second that got through, about the limit."""
    first: bool = False
    """For a cut: the first of a run (what a storm verdict undoes)."""


@dataclass(slots=True)
class _Check:
    """A cut waiting for its verdict, and the answers to requests started after it."""

    cut_at: float
    drew_it: Reading
    repeat: bool
    """The cut was sized by a check's answers, sent at a steady rate (not by the onset of the 429s)."""
    answers: int = 0
    refused: int = 0
    paused: bool = False
    """A 429 asked for a pause: the API's bucket refills during it, so the share refused no
    longer follows the rate and tells a storm from a limit no more."""

    def add(self, answer: Answer) -> None:
        self.answers += 1
        self.refused += answer.refused
        self.paused |= answer.paused


class OverloadJudge:
    """Fed each answer in order, with the rate in force and the time on the rate's clock."""

    def __init__(self) -> None:
        self._recent: deque[bool] = deque(maxlen=WINDOW)
        self._last_cut = -math.inf
        self._check: _Check | None = None
        self._storm_until: float | None = None

    @property
    def checking(self) -> bool:
        """Whether a cut waits for its verdict."""
        return self._check is not None

    def answer(self, answer: Answer, rate: float, now: float) -> Verdict | None:
        self._recent.append(answer.refused)
        if self._storm_until is not None:
            return self._calm(rate, now)
        if answer.refused and answer.resumed:
            return self._storm(self._lately(rate), now)
        if self._check is not None:
            return self._judge(self._check, answer, rate, now)
        # A 429 to a request started before the last cut answers that cut: no new one.
        if answer.refused and answer.start > self._last_cut and self._convinced(answer):
            return self._cut(self._lately(rate), now, repeat=False)
        return None

    def _convinced(self, answer: Answer) -> bool:
        """Before the first cut, a lone 429 without `Retry-After` may be jitter (a stall that
        bunched a few requests), and the cut it would draw, while the rate is still far from the
        limit, costs minutes: a second one among the last WINDOW answers is needed."""
        return self._last_cut > -math.inf or answer.paused or sum(self._recent) >= FIRST_CUT_429S

    def _lately(self, rate: float) -> Reading:
        """The last WINDOW answers; before there were that many, the missing count as answered
        (one 429 among the first few answers is no measure of the share refused)."""
        return Reading(WINDOW, sum(self._recent), rate)

    def _calm(self, rate: float, now: float) -> Verdict | None:
        if self._storm_until is None or now < self._storm_until:
            return None
        self._storm_until = None
        return Verdict("calm", self._lately(rate))

    def _storm(self, reading: Reading, now: float) -> Verdict:
        self._check, self._storm_until = None, now + STORM_HOLD
        return Verdict("storm", reading)

    def _cut(self, reading: Reading, now: float, *, repeat: bool) -> Verdict:
        self._last_cut = now
        self._check = _Check(now, reading, repeat)
        factor = max(CUT_MARGIN * (1.0 - reading.share_refused), LARGEST_CUT)
        # The 429 that drew a first cut says the rate crossed the limit, not by how much.
        counted = reading if repeat else Reading(reading.answers, reading.refused - 1, reading.rate)
        limit = counted.got_through
        return Verdict("cut", reading, factor, limit, first=not repeat)

    def _judge(self, check: _Check, answer: Answer, rate: float, now: float) -> Verdict | None:
        if answer.start <= check.cut_at:
            return None
        check.add(answer)
        if check.answers < WINDOW:
            return None
        self._check, reading = None, Reading(check.answers, check.refused, rate)
        if reading.share_refused < HELPED_SHARE:
            return Verdict("limit", reading)
        if check.repeat and not check.paused and _like_a_storm(check.drew_it, reading):
            return self._storm(reading, now)
        return self._cut(reading, now, repeat=True)


def _like_a_storm(before: Reading, after: Reading) -> bool:
    """Whether the share of 429s after a cut stayed nearer where it was (a storm refuses the
    same share at any rate) than where a limit would have put it (the same requests per second
    through at any rate: fewer 429s at a lower rate)."""
    limit_would = max(0.0, 1.0 - before.got_through / after.rate)
    storm_would = before.share_refused
    return abs(after.share_refused - storm_would) <= abs(after.share_refused - limit_would)

"""The adaptive rate on a virtual clock: what it gets from a limit it is not told, case by case.

    python bench/ratesim.py                 # 5, 20, 100 requests/s; 1 s and 0.1 s buckets; +-Retry-After
    python bench/ratesim.py --seconds 1200

The same loop as tests/test_ratelimit.py's goal tests, without the network and the machine:
requests back to back through `AdaptiveRate` (5 ms each), answered by the simulator's own
`TokenBucket` on a clock that jumps instead of sleeping, so every figure is the algorithm's
alone and the same on every run. bench/ratebench.py measures the same over real HTTP.
Prints one line per case and a JSON list on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.bem.ratelimit import AdaptiveRate, RateDecision
from exporter.simulator.ratelimit import TokenBucket

LATENCY = 0.005
"""Seconds each answer takes, on the virtual clock."""


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def _backfill(
    rate: AdaptiveRate, clock: VirtualClock, bucket: TokenBucket, until: float, retry_after: bool
) -> tuple[int, int]:
    answered = refused = 0
    while clock.now < until:
        ticket = await rate.acquire()
        wait = bucket.take()
        clock.now += LATENCY
        if wait is None:
            answered += 1
            rate.succeeded(ticket)
        else:
            refused += 1
            rate.throttled(ticket, float(max(1, math.ceil(wait))) if retry_after else None)
    return answered, refused


def run_case(limit: float, bucket_seconds: float, retry_after: bool, seconds: float) -> dict[str, Any]:
    clock = VirtualClock()
    decisions: list[RateDecision] = []
    rate = AdaptiveRate(1000.0, clock=clock, decided=decisions.append)
    bucket = TokenBucket(rate=limit, burst=max(1.0, limit * bucket_seconds), clock=clock)
    sleep, asyncio.sleep = asyncio.sleep, clock.sleep  # type: ignore[assignment]
    try:
        answered, refused = asyncio.run(_backfill(rate, clock, bucket, clock.now + seconds, retry_after))
    finally:
        asyncio.sleep = sleep
    kinds: dict[str, int] = {}
    for decision in decisions:
        kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
    return {
        "limit_rps": limit,
        "bucket_seconds": bucket_seconds,
        "retry_after": retry_after,
        "seconds": seconds,
        "share_of_limit": answered / seconds / limit,
        "share_429": refused / (answered + refused),
        "limit_found": decisions[-1].limit if decisions else None,
        "decisions": kinds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=600.0, help="virtual seconds per case (600)")
    args = parser.parse_args(argv)
    results = []
    for bucket_seconds in (1.0, 0.1):
        for limit in (5.0, 20.0, 100.0):
            for retry_after in (True, False):
                result = run_case(limit, bucket_seconds, retry_after, args.seconds)
                results.append(result)
                print(
                    f"{limit:5g}/s, bucket {bucket_seconds:g} s, Retry-After {'yes' if retry_after else 'no '}: "
                    f"{result['share_of_limit']:6.1%} of the limit, {result['share_429']:5.2%} 429s, "
                    f"{result['decisions']}",
                    file=sys.stderr,
                )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

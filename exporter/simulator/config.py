"""Settings of the bem API simulator: the workload it generates and the faults it injects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from .quality import QualityKnobs

CanaryOutcome = Literal["normal", "fail", "hang"]
CANARY_OUTCOMES: frozenset[str] = frozenset(get_args(CanaryOutcome))
CANARY_PREFIX = "bem-exporter-canary-"
"""The callReferenceID prefix of the exporter's canary calls, which the canary faults target."""
DEMO_WEBHOOK_SECRET = "SIMWHSEC-demo-webhook-signing-secret"
"""The account's webhook signing secret unless told otherwise: fixed, so that the demo and the
compose stack can give the same one to the exporter; distinctive, so that tests can look for it
in everything that leaves the exporter."""


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


@dataclass
class Faults:
    """Faults injected into API responses.

    Mutable at runtime: tests flip these while the server runs. Each rate is the fraction of
    requests (or, for `malformed_rate`, of call records) affected, drawn from the simulator's
    fault RNG, which is separate from the workload RNG so that faults never change the workload.
    """

    rate_429: float = 0.0
    """Fraction of API requests answered 429 `{"message": ...}`."""
    retry_after: float | None = None
    """When set, 429 and 503 responses carry `Retry-After: <seconds>` (e.g. `1` or `0.2`)."""
    rate_5xx: float = 0.0
    """Fraction of API requests answered 500, 502 or 503 with an error body."""
    slow_rate: float = 0.0
    """Fraction of API requests delayed by `slow_seconds` before they are answered."""
    slow_seconds: float = 0.0
    malformed_rate: float = 0.0
    """Fraction of call records in list/get responses made undecodable (the rest stays valid)."""
    truncated_rate: float = 0.0
    """Fraction of 200 responses whose JSON body is cut off mid-way (Content-Length matches the cut)."""
    down: bool = False
    """When True, connections are closed without an answer (an outage)."""
    canary_outcome: CanaryOutcome = "normal"
    """What becomes of calls created with a callReferenceID starting `canary_prefix`:
    `normal` (the workload decides), `fail` (they end failed) or `hang` (they never finish)."""
    canary_reject: int | None = None
    """When set, create requests for canary calls are answered with this status (e.g. 500,
    429, 401) and an error body, and nothing is created."""
    canary_prefix: str = CANARY_PREFIX
    rate_limit: float | None = None
    """When set, requests per second each API key may make (a token bucket, as an API that
    publishes no limits has); a request past it is answered 429."""
    rate_limit_burst: float = 1.0
    """Requests a key may make at once after a quiet spell (the bucket's size, >= 1)."""
    rate_limit_retry_after: bool = True
    """Whether a rate-limit 429 says, in `Retry-After`, when the next request would pass."""

    def validate(self) -> None:
        """Raise ValueError for a rate outside 0..1 or a negative duration."""
        for name in ("rate_429", "rate_5xx", "slow_rate", "malformed_rate", "truncated_rate"):
            _check_fraction(name, getattr(self, name))
        _check_non_negative("slow_seconds", self.slow_seconds)
        if self.canary_outcome not in CANARY_OUTCOMES:
            raise ValueError(f"canary_outcome must be one of {sorted(CANARY_OUTCOMES)}, got {self.canary_outcome!r}")
        if self.canary_reject is not None and not 400 <= self.canary_reject <= 599:
            raise ValueError(f"canary_reject must be an HTTP error status (400..599), got {self.canary_reject!r}")
        if self.retry_after is not None:
            _check_non_negative("retry_after", self.retry_after)
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit must be > 0, got {self.rate_limit!r}")
        if self.rate_limit_burst < 1:
            raise ValueError(f"rate_limit_burst must be >= 1, got {self.rate_limit_burst!r}")


@dataclass
class Webhooks:
    """How the simulated bem delivers webhooks to the subscriptions' URLs, and what goes wrong.

    Mutable at runtime, like `Faults`. Each rate is a share drawn from the webhook RNG (never
    the workload's): `drop_rate`, `duplicate_rate` and `reorder_rate` per event and
    subscription, `wrong_secret_rate` and `stale_rate` per delivery attempt.
    """

    secret: str | None = DEMO_WEBHOOK_SECRET
    """The account's signing secret (`/v3/webhook-secret`); None: deliveries are unsigned, as
    bem's are after the secret is revoked."""
    drop_rate: float = 0.0
    """Share of deliveries never attempted (bem's "or never")."""
    duplicate_rate: float = 0.0
    """Share of deliveries sent twice, independently (each with its own signature and retries)."""
    delay: float = 0.0
    """Seconds every delivery waits before its first attempt."""
    reorder_rate: float = 0.0
    """Share of deliveries held back a random 0..`reorder_window` seconds more, so that later
    events overtake them."""
    reorder_window: float = 2.0
    wrong_secret_rate: float = 0.0
    """Share of attempts signed with a secret that is not the account's (a forgery, or a
    rotation the receiver has not caught up with)."""
    stale_rate: float = 0.0
    """Share of attempts whose signature's `t=` lies `stale_seconds` in the past."""
    stale_seconds: float = 600.0
    final_event_lead: float | None = None
    """How long before the call's `finishedAt` its last event may be delivered. None: when the
    event is created, which precedes `finishedAt` by the call's finalizing time (0.02..0.4 s at
    speed 1), as bem's deliveries can precede the call's `finished` status; 0: not before the
    call reads finished."""
    max_attempts: int = 6
    """Attempts per delivery: a non-2xx answer or none at all is retried until then."""
    retry_base: float = 1.0
    """Seconds before the first retry; each further retry waits twice as long."""
    retry_cap: float = 60.0
    """The longest wait between two attempts."""
    timeout: float = 10.0
    """Seconds an attempt may take, answer included; past it the attempt failed."""
    senders: int = 4
    """Deliveries in flight at once."""
    queue_size: int = 1000
    """Deliveries waiting for a sender; past it they wait in the schedule (never dropped)."""

    def validate(self) -> None:
        """Raise ValueError naming the first invalid knob."""
        for name in ("drop_rate", "duplicate_rate", "reorder_rate", "wrong_secret_rate", "stale_rate"):
            _check_fraction(name, getattr(self, name))
        for name in ("delay", "reorder_window", "stale_seconds", "retry_base", "retry_cap"):
            _check_non_negative(name, getattr(self, name))
        if self.final_event_lead is not None:
            _check_non_negative("final_event_lead", self.final_event_lead)
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout!r}")
        for name in ("max_attempts", "senders", "queue_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.secret == "":
            raise ValueError("secret must not be empty (None: unsigned deliveries)")


@dataclass
class SimulatorConfig:
    """What the simulator generates and how it serves it."""

    seed: int = 1
    arrival_rate: float = 1.0
    """New calls per second (a Poisson process) while the simulator runs; 0 = none."""
    prefill: int = 0
    """Calls created in the past before the start, spread over `history` seconds; most already finished."""
    history: float = 3600.0
    """How many seconds before the start the prefilled calls begin."""
    speed: float = 1.0
    """Time multiplier of the workload: 2.0 makes calls queue and run twice as fast."""
    latency: float = 0.0
    """Seconds added to every API response (served concurrently)."""
    api_key: str | None = "sim-key"
    """The required `x-api-key`; None disables authentication."""
    failure_rate: float = 0.15
    """Share of calls that end failed."""
    failing_workflows: frozenset[str] = frozenset()
    """Workflows every new call of which ends failed (an outage of one workflow); mutable at runtime."""
    max_function_calls: int = 10
    """Upper bound of function calls per call (each call has 1..N)."""
    faults: Faults = field(default_factory=Faults)
    webhooks: Webhooks = field(default_factory=Webhooks)
    """Webhook delivery to the account's subscriptions, and its knobs."""
    cache_mb: int = 1024
    """Memory budget (MiB) for the encoded JSON of finished calls; oldest entries are evicted first."""
    quality: QualityKnobs = field(default_factory=QualityKnobs)
    """bem's function quality metrics: drift, hidden functions, endpoint faults (`quality.py`)."""

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        _check_non_negative("arrival_rate", self.arrival_rate)
        _check_non_negative("prefill", self.prefill)
        _check_non_negative("history", self.history)
        _check_non_negative("latency", self.latency)
        _check_non_negative("cache_mb", self.cache_mb)
        _check_fraction("failure_rate", self.failure_rate)
        if self.speed <= 0:
            raise ValueError(f"speed must be > 0, got {self.speed!r}")
        if self.max_function_calls < 1:
            raise ValueError(f"max_function_calls must be >= 1, got {self.max_function_calls!r}")
        self.faults.validate()
        try:
            self.webhooks.validate()
        except ValueError as error:
            raise ValueError(f"webhooks.{error}") from None

"""The API client against a hostile server over real HTTP on loopback: retries, the whole-request
timeout, the response size limit (gzip included), `Retry-After` extremes, and the hooks through
which the client reports what it does."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, TypeVar

import pytest
from hostile_api import HostileApi, Reply

from exporter.bem.client import ApiError, BemClient, ClientHooks, ListQuery, retry_after_seconds

T = TypeVar("T")
GUARD = 120.0
"""Upper bound on any one test, so that a regression fails instead of hanging the suite."""


def _call(call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "callID": call_id,
        "status": "completed",
        "createdAt": "2024-05-01T10:00:00Z",
        "finishedAt": "2024-05-01T10:00:05Z",
        "workflowName": "invoice-intake",
        **extra,
    }


PAGE = json.dumps({"calls": [_call("c1"), _call("c2")]}).encode()


@dataclass
class Recorded:
    requests: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, int]] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    throttled: list[float] = field(default_factory=list)

    def hooks(self) -> ClientHooks:
        return ClientHooks(
            request=lambda endpoint, code, _seconds: self.requests.append((endpoint, code)),
            rejected=lambda what, count: self.rejected.append((what, count)),
            too_large=self.too_large.append,
            throttled=self.throttled.append,
        )


@pytest.fixture
def api() -> Iterator[tuple[HostileApi, str]]:
    hostile = HostileApi()
    with hostile as url:
        yield hostile, url


def _with_client(url: str, recorded: Recorded, use: Callable[[BemClient], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        settings: dict[str, Any] = {"timeout": 5.0, "max_concurrency": 4, "max_rps": 1000.0, "max_attempts": 3}
        settings.update(options)
        async with BemClient(url, "key", "v3", hooks=recorded.hooks(), **settings) as client:
            return await asyncio.wait_for(use(client), GUARD)

    return asyncio.run(main())


def _list(client: BemClient) -> Awaitable[Any]:
    return client.list_calls(ListQuery())


def _answers(*replies: Reply) -> Callable[[str, Reply], Reply]:
    """Answer with `replies` in turn, then the last one forever."""
    queue = list(replies)
    return lambda _target, _reply: queue.pop(0) if len(queue) > 1 else queue[0]


def test_every_attempt_is_reported_and_5xx_is_retried(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(503), Reply(502), Reply(body=PAGE))
    recorded = Recorded()
    page = _with_client(url, recorded, _list)
    assert [call.call_id for call in page.calls] == ["c1", "c2"]
    assert recorded.requests == [("/v3/calls", "503"), ("/v3/calls", "502"), ("/v3/calls", "200")]
    assert hostile.targets[0].startswith("/v3/calls?limit=100&sortOrder=asc")


def test_a_truncated_200_is_retried_like_a_5xx(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(body=PAGE, cut_at=len(PAGE) // 2), Reply(body=PAGE))
    recorded = Recorded()
    page = _with_client(url, recorded, _list)
    assert page.size == 2
    assert recorded.requests == [("/v3/calls", "200"), ("/v3/calls", "200")]
    assert recorded.rejected == [("response", 1)]


def test_a_body_never_whole_is_reported_as_malformed_not_rejected(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(body=PAGE, cut_at=10))
    with pytest.raises(ApiError) as caught:
        _with_client(url, Recorded(), _list)
    assert caught.value.kind == "malformed"
    assert caught.value.status == 200
    assert str(caught.value) == "/v3/calls: list calls: response body is not the expected JSON (after 3 attempts)"
    assert len(hostile.targets) == 3


def test_the_timeout_bounds_the_whole_request_body_included(api: tuple[HostileApi, str]) -> None:
    """One byte every 50 ms never trips a per-read timeout of 0.5 s; the body would take 10 min."""
    hostile, url = api
    hostile.fault = _answers(Reply(body=b" " * 12_000 + PAGE, trickle=0.05))
    recorded = Recorded()
    with pytest.raises(ApiError) as caught:
        _with_client(url, recorded, _list, timeout=0.5, max_attempts=2)
    assert str(caught.value) == "/v3/calls: timed out (after 2 attempts)"
    assert caught.value.kind == "unreachable" and caught.value.status is None
    assert recorded.requests == [("/v3/calls", "error"), ("/v3/calls", "error")]


def _gzip_bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    block = b"\0" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(inflated >> 20)]
    return b"".join([*parts, compressor.flush()])


def test_a_gzip_bomb_stops_at_the_size_limit_and_is_not_retried(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    bomb = _gzip_bomb(64 << 20)
    assert len(bomb) < 1 << 20
    hostile.fault = _answers(Reply(body=bomb, headers={"content-encoding": "gzip"}))
    recorded = Recorded()
    with pytest.raises(ApiError) as caught:
        _with_client(url, recorded, lambda client: client.get_trace("c1"), max_response_bytes=4 << 20)
    assert caught.value.kind == "too_large"
    assert str(caught.value) == f"/v3/calls/{{callID}}/trace: response larger than {4 << 20} bytes"
    assert recorded.too_large == ["/v3/calls/{callID}/trace"]
    assert recorded.requests == [("/v3/calls/{callID}/trace", "200")]
    assert len(hostile.targets) == 1


def test_a_gzipped_body_under_the_limit_is_read(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(body=gzip.compress(PAGE), headers={"content-encoding": "gzip"}))
    page = _with_client(url, Recorded(), _list, max_response_bytes=len(PAGE))
    assert page.size == 2


def test_a_declared_length_over_the_limit_is_refused_unread(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(body=b" " * 50_000 + PAGE))
    recorded = Recorded()
    with pytest.raises(ApiError) as caught:
        _with_client(url, recorded, _list, max_response_bytes=10_000)
    assert caught.value.kind == "too_large" and recorded.too_large == ["/v3/calls"]


def test_a_long_retry_after_waits_the_cap_and_is_reported(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(429, headers={"retry-after": "86400"}), Reply(body=PAGE))
    recorded = Recorded()
    page = _with_client(url, recorded, _list, retry_after_cap=0.2)
    assert page.size == 2
    assert recorded.throttled == [0.2]
    assert recorded.requests == [("/v3/calls", "429"), ("/v3/calls", "200")]


_PAST = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)


@pytest.mark.parametrize(
    "value",
    ["-1", "0", _PAST, "soon", "nan", "inf", "1e999", ""],
    # Stable ids: the past date changes every second, and pytest-xdist's workers must collect alike.
    ids=["negative", "zero", "past-date", "soon", "nan", "inf", "huge", "empty"],
)
def test_an_unusable_retry_after_is_treated_as_absent(api: tuple[HostileApi, str], value: str) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(429, headers={"retry-after": value}), Reply(body=PAGE))
    recorded = Recorded()
    assert _with_client(url, recorded, _list).size == 2
    assert recorded.throttled == []  # the jittered backoff was used instead
    assert retry_after_seconds(value) is None


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    seconds = retry_after_seconds(future)
    assert seconds is not None and 500 < seconds <= 600


def test_a_lone_surrogate_costs_its_record_alone(api: tuple[HostileApi, str]) -> None:
    """`\\ud83d` in an ignored field costs nothing; in a field the exporter reads, that record."""
    hostile, url = api
    page = (
        b'{"calls": ['
        + json.dumps(_call("c1", memo="x")).replace('"x"', '"\\ud83d"').encode()
        + b","
        + json.dumps(_call("c2", workflowName="x")).replace('"x"', '"\\udc00 cut"').encode()
        + b","
        + json.dumps(_call("c3")).encode()
        + b'], "note": "\\ud83d"}'
    )
    hostile.fault = _answers(Reply(body=page))
    recorded = Recorded()
    decoded = _with_client(url, recorded, _list)
    assert [call.call_id for call in decoded.calls] == ["c1", "c3"]
    assert decoded.ids == ["c1", "c2", "c3"]
    assert decoded.rejected_ids == ["c2"]
    assert recorded.rejected == [("call", 1)]
    assert recorded.requests == [("/v3/calls", "200")]  # one answer, read: not a malformed page


def test_a_lone_surrogate_in_a_trace_costs_that_record_alone(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    steps = [
        {"functionCallID": "f1", "functionName": "x", "status": "completed"},
        {"functionCallID": "f2", "functionName": "split", "status": "completed", "memo": "x"},
    ]
    events = [{"eventID": "e1", "eventType": "error", "message": "x", "functionCallID": "f2"}]
    body = json.dumps({"trace": {"functionCalls": steps, "events": events}}).replace('"x"', '"\\ud83d"').encode()
    hostile.fault = _answers(Reply(body=body))
    recorded = Recorded()
    trace = _with_client(url, recorded, lambda client: client.get_trace("c1"))
    assert [step.function_call_id for step in trace.function_calls] == ["f2"]
    assert trace.events == () and trace.rejected == 2
    assert recorded.rejected == [("trace_record", 2)]


def test_numbers_past_int64_cost_their_record_alone(api: tuple[HostileApi, str]) -> None:
    """OTLP carries integers as int64: a wider one would make its span batch refused forever."""
    hostile, url = api
    page = {
        "calls": [
            _call("c1", workflowVersionNum=10**30),
            _call("c2", workflowVersionNum=2**63 - 1, functionVersionNum=-(2**63)),
            _call("c3", functionVersionNum=2**63),
        ]
    }
    steps = [
        {"functionCallID": "f1", "functionVersionNum": 2**64},
        {"functionCallID": "f2", "functionVersionNum": 3},
    ]
    events = [{"eventID": "e1", "functionCallTryNumber": -(2**63) - 1}, {"eventID": "e2", "functionCallTryNumber": 2}]
    trace = {"trace": {"functionCalls": steps, "events": events}}
    hostile.fault = _answers(Reply(body=json.dumps(page).encode()), Reply(body=json.dumps(trace).encode()))
    recorded = Recorded()

    async def both(client: BemClient) -> tuple[Any, Any]:
        return await client.list_calls(ListQuery()), await client.get_trace("c2")

    decoded, got = _with_client(url, recorded, both)
    assert [call.call_id for call in decoded.calls] == ["c2"]
    assert decoded.calls[0].workflow_version == 2**63 - 1
    assert decoded.rejected_ids == ["c1", "c3"]
    assert [step.function_call_id for step in got.function_calls] == ["f2"]
    assert [event.event_id for event in got.events] == ["e2"]
    assert recorded.rejected == [("call", 2), ("trace_record", 2)]


def test_a_corrupt_compressed_body_is_a_malformed_response(api: tuple[HostileApi, str]) -> None:
    hostile, url = api
    hostile.fault = _answers(Reply(body=b"\x1f\x8b not gzip at all", headers={"content-encoding": "gzip"}))
    recorded = Recorded()
    with pytest.raises(ApiError) as caught:
        _with_client(url, recorded, _list)
    assert caught.value.kind == "malformed" and caught.value.status == 200
    assert recorded.rejected == [("response", 1)] * 3

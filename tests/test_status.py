"""The status board and /status(.json) over real HTTP: shape, bounds, auth, escaping, secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from exporter.bem.ratelimit import RateDecision
from exporter.config import BasicAuth, Secret
from exporter.ids import trace_id_for
from exporter.pipeline import CycleReport, FinishedCall
from exporter.simulator import CONTENT_MARKER, URL_MARKER
from exporter.status import (
    CALLS_KEPT,
    CONTENT_SECURITY_POLICY,
    CYCLES_KEPT,
    BackfillProgress,
    CanarySummary,
    FoldedFamily,
    QualitySummary,
    ScrapeSummary,
    SettingRow,
    StatusBoard,
    check_trace_url,
    render_html,
)
from exporter.status.document import status_document
from exporter.status.webhooks import WebhookBoard
from exporter.webhooks import RESULTS
from tests.status_helpers import API_KEY, PASSWORD, TRACE_URL, fed_board, finished_calls, serving
from tests.test_metrics import make_call

Scenario = Callable[[str, httpx.AsyncClient], Awaitable[None]]


def serve(board: StatusBoard, scenario: Scenario, **settings: Any) -> None:
    async def main() -> None:
        async with serving(board, **settings) as url, httpx.AsyncClient(timeout=10) as client:
            await scenario(url, client)

    asyncio.run(main())


@pytest.fixture(scope="module")
def calls() -> list[FinishedCall]:
    return finished_calls()


def test_json_document_has_the_documented_shape(calls: list[FinishedCall]) -> None:
    board = fed_board(calls)
    board.set_canary(CanarySummary("canary-flow", "success", 12.5, 1_700_000_000.0, in_flight=False))
    board.set_backfill(BackfillProgress(until=1_699_990_000.0, reached=1_699_995_000.0, calls=40, done=False))
    board.webhooks = WebhookBoard(RESULTS, "postgres", clock=lambda: 1_700_000_000.0)
    board.webhooks.listening("http://127.0.0.1:9878/webhook")
    for result, delay in (("accepted", 0.25), ("duplicate", None), ("bad_signature", None)):
        board.webhooks.webhook_received(result, delay)
    board.webhooks.hints_followed(read=3, counted=2, followed=1)

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        response = await client.get(f"{url}/status.json")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["cache-control"] == "no-store"
        document = response.json()
        assert set(document) == {
            "schema", "version", "generated_at", "started_at", "role", "api", "backlog", "tracked",
            "cycles", "calls", "canary", "backfill", "settings", "scrape", "quality", "webhooks", "rate",
        }  # fmt: skip
        assert document["webhooks"] == {
            "url": "http://127.0.0.1:9878/webhook", "handover": "postgres",
            "received": {"accepted": 1, "duplicate": 1, "bad_signature": 1, "stale": 0, "unsigned": 0,
                         "malformed": 0, "too_large": 0},
            "last_accepted_at": "2023-11-14T22:13:20.000Z", "last_delay_seconds": 0.25,
            "last_refused": "bad_signature", "last_refused_at": "2023-11-14T22:13:20.000Z",
            "followed": 1, "read": 3, "counted": 2,
        }  # fmt: skip
        assert document["quality"] is None, "no quality reader was started"
        assert (document["schema"], document["version"], document["role"]) == (1, "9.9.9", "single")
        assert document["api"]["state"] == "up" and document["api"]["last_error"] is None
        assert document["tracked"] == 3 and document["cycles"][0]["discovered"] == len(calls)
        newest = max(calls, key=lambda item: item.call.finished_at or item.call.created_at)
        first = document["calls"][0]
        assert first["call_id"] == newest.call.call_id
        assert first["trace_id"] == trace_id_for(newest.call.call_id)
        assert first["trace_url"] == TRACE_URL.replace("{trace_id}", first["trace_id"])
        assert first["status"] in ("completed", "failed") and first["duration_seconds"] > 0
        assert document["canary"] == {
            "workflow": "canary-flow", "last_result": "success", "last_duration_seconds": 12.5,
            "last_success_at": "2023-11-14T22:13:20.000Z", "in_flight": False,
        }  # fmt: skip
        assert document["backfill"]["calls"] == 40 and document["backfill"]["done"] is False

    serve(board, scenario)


def test_the_scrape_against_its_bound_is_shown() -> None:
    board = StatusBoard("9.9.9")
    folded = (FoldedFamily("bem_function_call_duration_seconds", 696, 106), FoldedFamily("bem_events_total", 0, 40))
    board.set_scrape(ScrapeSummary(samples=5_999, max_samples=6_000, folded=folded))

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        document = (await client.get(f"{url}/status.json")).json()
        page = (await client.get(f"{url}/status")).text
        assert document["scrape"] == {
            "samples": 5_999,
            "max_samples": 6_000,
            "folded": [
                {"metric": "bem_function_call_duration_seconds", "folded_series": 696, "series_cap": 106},
                {"metric": "bem_events_total", "folded_series": 0, "series_cap": 40},
            ],
        }
        assert '<b id="scrape-samples">5999</b> samples of at most 6000' in page
        assert "<code>bem_function_call_duration_seconds</code></td><td>696</td><td>106</td>" in page

    serve(board, scenario)


def test_the_request_rate_shows_its_state_and_last_decision() -> None:
    board = StatusBoard("9.9.9", clock=lambda: 1_700_000_000.0)
    assert status_document(board.snapshot())["rate"] == {
        "state": "starting", "requests_per_second": None, "limit_found": None, "last_decision": None,
    }  # fmt: skip
    board.rate_changed(7.25)
    reason = "a 429: 1 of 20 answers refused at 40/s; about 38/s get through <b>"
    board.rate_decided(RateDecision("cut", "checking", 20.0, 40.0, 38.0, reason))
    board.rate_changed(20.5)  # the rate moves on between decisions
    document = status_document(board.snapshot())
    assert document["rate"] == {
        "state": "checking", "requests_per_second": 20.5, "limit_found": 38.0,
        "last_decision": {
            "kind": "cut", "at": "2023-11-14T22:13:20.000Z", "reason": reason, "rate_before": 40.0, "rate": 20.0,
        },
    }  # fmt: skip
    page = render_html(board.snapshot())
    assert '<span id="rate-state">checking</span>' in page
    assert "20.5 requests/s" in page and "38 requests/s" in page
    assert "about 38/s get through &lt;b&gt;" in page  # escaped like every value


def test_page_is_self_contained_and_sent_with_a_strict_policy(calls: list[FinishedCall]) -> None:
    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        response = await client.get(f"{url}/status")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert CONTENT_SECURITY_POLICY.startswith("default-src 'none'; style-src 'unsafe-inline'")
        page = response.text
        assert "<script" not in page and " src=" not in page and "<link" not in page
        assert trace_id_for(calls[0].call.call_id) in page

    serve(fed_board(calls), scenario)


def test_no_secret_and_no_document_content_anywhere(calls: list[FinishedCall]) -> None:
    board = fed_board(calls)
    board.api_down(f"GET /v3/calls: HTTP 500 from https://ops:{PASSWORD}@bucket.example/doc.pdf?X-Amz-Signature=abc")
    leak = f"/v3/functions/metrics: HTTP 500 from https://ops:{PASSWORD}@bucket.example/?X-Amz-Signature=abc"
    board.set_quality(QualitySummary(300.0, last_result="rejected", last_error=leak, last_error_at=1.0))

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        for path in ("/status", "/status.json"):
            text = (await client.get(f"{url}{path}")).text
            for secret in (API_KEY, PASSWORD, CONTENT_MARKER, URL_MARKER, "X-Amz-Signature"):
                assert secret not in text, (path, secret)
        settings = {row["name"]: row for row in (await client.get(f"{url}/status.json")).json()["settings"]}
        assert settings["BEM_API_KEY"] == {
            "name": "BEM_API_KEY",
            "value": "***",
            "source": "environment",
            "secret": True,
        }
        assert settings["BEM_STATE_URL"]["value"] == "postgresql://db:5432/bem"
        assert settings["BEM_POLL_INTERVAL"]["value"] == "15s"

    serve(board, scenario)


def test_status_is_behind_the_metrics_basic_auth(calls: list[FinishedCall]) -> None:
    auth = BasicAuth("ops", Secret(PASSWORD))

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        for path in ("/status", "/status.json"):
            denied = await client.get(f"{url}{path}")
            assert denied.status_code == 401 and "Basic" in denied.headers["www-authenticate"]
            assert (await client.get(f"{url}{path}", auth=("ops", "wrong"))).status_code == 401
            assert (await client.get(f"{url}{path}", auth=("ops", PASSWORD))).status_code == 200
        assert (await client.get(f"{url}/healthz")).status_code == 200

    serve(fed_board(calls), scenario, basic_auth=auth)


def test_everything_shown_is_escaped() -> None:
    board = StatusBoard("1<b>", trace_url="https://t.example/?q={trace_id}&x=<y>")
    board.api_down('<img src=x onerror="alert(1)"> & "quoted"')
    board.set_settings([SettingRow("BEM_WORKFLOWS", "<script>alert(1)</script>", "flag")])
    board.calls_finished([make_call("c<1>", workflow="<i>wf</i>")])
    page = render_html(board.snapshot())
    for raw in ("<img", "<script", "<i>wf", "1<b>", "&x=<y>"):
        assert raw not in page
    assert "bem-exporter 1&lt;b&gt;" in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &quot;quoted&quot;" in page
    assert "&lt;i&gt;wf&lt;/i&gt;" in page


def test_memory_is_bounded_and_a_repeated_call_is_shown_once() -> None:
    board = StatusBoard("1")
    for index in range(CYCLES_KEPT + 7):
        board.cycle_done(CycleReport(ok=True, discovered=index))
    for index in range(CALLS_KEPT + 9):
        board.calls_finished([make_call(f"call-{index}")])
    board.calls_finished([make_call(f"call-{CALLS_KEPT + 8}")])  # a delivery retry
    snapshot = board.snapshot()
    assert len(snapshot.cycles) == CYCLES_KEPT
    assert snapshot.cycles[0].discovered == CYCLES_KEPT + 6
    assert len(snapshot.calls) == CALLS_KEPT
    assert len({line.call_id for line in snapshot.calls}) == CALLS_KEPT
    assert "call-0" not in {line.call_id for line in snapshot.calls}


def test_api_health_follows_the_cycles_and_keeps_the_last_error() -> None:
    now = [1000.0]
    board = StatusBoard("1", clock=lambda: now[0])
    board.cycle_done(CycleReport(ok=False, error="GET /v3/calls: cannot connect (after 1 attempt)"))
    now[0] = 1010.0
    board.cycle_done(CycleReport(ok=False, error="GET /v3/calls: cannot connect (after 1 attempt)"))
    down = board.snapshot().api
    assert (down.state, down.since, down.last_error_at) == ("down", 1000.0, 1010.0)
    now[0] = 1020.0
    board.cycle_done(CycleReport(ok=True))
    up = board.snapshot().api
    assert (up.state, up.since) == ("up", 1020.0)
    assert up.last_error == "GET /v3/calls: cannot connect (after 1 attempt)"


def test_role_is_shown(calls: list[FinishedCall]) -> None:
    board = fed_board(calls)
    board.set_role("standby")

    async def scenario(url: str, client: httpx.AsyncClient) -> None:
        assert (await client.get(f"{url}/status.json")).json()["role"] == "standby"
        assert '<b id="role">standby</b>' in (await client.get(f"{url}/status")).text

    serve(board, scenario)


def test_the_webhook_section_is_shown_only_with_a_listener(calls: list[FinishedCall]) -> None:
    board = fed_board(calls)
    assert 'id="webhooks"' not in render_html(board.snapshot())
    assert board.snapshot().webhooks is None
    board.webhooks = WebhookBoard(RESULTS, "memory")
    board.webhooks.webhook_received("accepted", 0.4)
    board.webhooks.webhook_received("stale", None)
    page = render_html(board.snapshot())
    assert '<section id="webhooks">' in page and "in memory" in page
    assert '<span id="webhooks-received">accepted 1, duplicate 0, bad_signature 0, stale 1,' in page


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("javascript:alert('{trace_id}')", "is not an http(s) URL"),
        ("https://grafana.example/explore", "does not contain {trace_id}"),
    ],
)
def test_a_trace_url_that_is_not_a_safe_template_is_refused(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_trace_url(template)
    assert check_trace_url(TRACE_URL) == TRACE_URL

"""The simulator's function quality endpoints over real HTTP, read by bem's own SDK: paging by
functionID, filters, null ratios, the accuracy drift and the labeling stop, and the faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import SIM_KEY, Clock

from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.simulator.catalog import FUNCTIONS_BY_NAME
from exporter.simulator.quality import EVALUATED_TYPES, UNLABELED, functions_of

bem = pytest.importorskip("bem")
from bem.types.function_get_metrics_response import FunctionGetMetricsResponse  # noqa: E402

RATIOS = ("accuracy", "precision", "recall", "f1Score")
DRIFTING = "extract-invoice"


@pytest.fixture
def served(clock: Clock) -> Iterator[tuple[Simulator, str]]:
    simulator = Simulator(SimulatorConfig(seed=3, arrival_rate=0.0), clock=clock)
    with SimulatorServer(simulator) as url:
        yield simulator, url


def get(url: str, path: str, **params: object) -> httpx.Response:
    return httpx.get(f"{url}{path}", params=params, headers={"x-api-key": SIM_KEY}, timeout=10)


def test_the_sdk_pages_through_every_function_by_its_id(served: tuple[Simulator, str]) -> None:
    _, url = served
    client = bem.Bem(base_url=url, api_key=SIM_KEY)
    listed = [function.function_id for function in client.functions.list(limit=4)]
    assert len(listed) == len(FUNCTIONS_BY_NAME) == len(set(listed))
    backwards = get(url, "/v3/functions", limit=100, sortOrder="desc").json()["functions"]
    assert [f["functionID"] for f in backwards] == listed[::-1]


def test_metrics_pages_follow_the_function_listing(served: tuple[Simulator, str]) -> None:
    _, url = served
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 6, **({"startingAfter": cursor} if cursor else {})}
        listing = get(url, "/v3/functions", **params).json()["functions"]
        answer = get(url, "/v3/functions/metrics", **params)
        body = FunctionGetMetricsResponse.model_validate(answer.json(), strict=True)
        assert [f.function_name for f in body.functions] == [f["functionName"] for f in listing]
        assert body.total_count == len(FUNCTIONS_BY_NAME)
        seen += [f.function_name for f in body.functions]
        if len(listing) < 6:
            break
        cursor = listing[-1]["functionID"]
    assert sorted(seen) == sorted(FUNCTIONS_BY_NAME)


def test_ratios_are_null_exactly_where_nothing_is_labeled(served: tuple[Simulator, str]) -> None:
    _, url = served
    items = get(url, "/v3/functions/metrics", limit=100).json()["functions"]
    for item in items:
        function = FUNCTIONS_BY_NAME[item["functionName"]]
        labeled = function.type in EVALUATED_TYPES and function.name != UNLABELED
        metrics = item["metrics"]
        assert (item["totalLabeledResults"] > 0) == labeled, item
        assert all((metrics[ratio] is None) != labeled for ratio in RATIOS), item
        assert item["totalResults"] >= item["totalLabeledResults"]
        outcomes = metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"]
        assert outcomes == item["totalLabeledResults"]
        if labeled:
            assert metrics["accuracy"] == (metrics["tp"] + metrics["tn"]) / outcomes
            assert 0.85 < metrics["accuracy"] < 1


def test_filters(served: tuple[Simulator, str]) -> None:
    _, url = served
    answer = get(url, "/v3/functions/metrics", workflowNames="claims-triage").json()
    names = {f["functionName"] for f in answer["functions"]}
    assert names == functions_of("claims-triage")
    extracts = get(url, "/v3/functions", types="extract,join", limit=100).json()["functions"]
    assert extracts and {f["type"] for f in extracts} == {"extract", "join"}
    one = FUNCTIONS_BY_NAME[DRIFTING]
    by_id = get(url, "/v3/functions/metrics", functionIDs=one.id).json()
    assert [f["functionName"] for f in by_id["functions"]] == [DRIFTING] and by_id["totalCount"] == 1


def test_accuracy_drifts_down_and_labeling_stops_with_the_clock(served: tuple[Simulator, str], clock: Clock) -> None:
    simulator, url = served

    def item(name: str) -> dict[str, Any]:
        items = get(url, "/v3/functions/metrics", limit=100).json()["functions"]
        return next(f for f in items if f["functionName"] == name)

    before = item(DRIFTING)
    steady = item("extract-receipt")
    simulator.config.quality.start_drift(DRIFTING, per_hour=0.12, now=clock.now)
    simulator.config.quality.stop_labeling("extract-receipt", now=clock.now)
    clock.advance(3600)
    after = item(DRIFTING)
    stalled = item("extract-receipt")
    assert after["metrics"]["accuracy"] == pytest.approx(before["metrics"]["accuracy"] - 0.12, abs=0.01)
    assert after["totalLabeledResults"] > before["totalLabeledResults"]
    assert stalled["totalResults"] > steady["totalResults"]
    assert stalled["totalLabeledResults"] == steady["totalLabeledResults"]


@pytest.mark.parametrize("status", [404, 429, 500])
def test_the_endpoints_answer_a_forced_status(served: tuple[Simulator, str], status: int) -> None:
    simulator, url = served
    simulator.config.quality.status = status
    for path in ("/v3/functions", "/v3/functions/metrics"):
        answer = get(url, path)
        assert answer.status_code == status and answer.json()["message"]
    assert get(url, "/v3/calls").status_code == 200, "only the quality endpoints refuse"


def test_malformed_garbled_hidden_and_bad_parameters(served: tuple[Simulator, str]) -> None:
    simulator, url = served
    knobs = simulator.config.quality
    knobs.hidden.add(DRIFTING)
    knobs.garbled.add("extract-receipt")
    answer = get(url, "/v3/functions/metrics", limit=100).json()
    items = {f["functionName"]: f for f in answer["functions"]}
    assert DRIFTING not in items and items["extract-receipt"]["metrics"] == "unavailable"
    assert answer["totalCount"] == len(FUNCTIONS_BY_NAME) - 1
    assert DRIFTING in {f["functionName"] for f in get(url, "/v3/functions", limit=100).json()["functions"]}
    assert get(url, "/v3/functions", limit=0).status_code == 400
    assert get(url, "/v3/functions/metrics", startingAfter="f_nosuchfunction").status_code == 400
    knobs.malformed = True
    with pytest.raises(ValueError):
        get(url, "/v3/functions/metrics").json()

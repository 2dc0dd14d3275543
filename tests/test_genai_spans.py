"""The OpenTelemetry GenAI span layout (`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`),
checked span by span against the conventions' own model, vendored in tests/data/semconv/gen-ai/
(repository, path, commit and licence in its README): the simulator's calls, read over HTTP,
exported over OTLP/HTTP to a real receiver through the sink the settings build. Without the
opt-in nothing changes: the OTLP bytes are those of the default builder."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from otlp_receiver import HttpReceiver

from exporter.app import bem_client
from exporter.bem.client import ListQuery
from exporter.config import ApiSettings, Secret, load_settings
from exporter.ids import trace_id_for
from exporter.pipeline import FinishedCall, NullObserver
from exporter.simulator import Simulator, SimulatorConfig, SimulatorServer
from exporter.traces.otlp import SpanEncoder
from exporter.traces.sink import build_span_exporter
from exporter.traces.spans import SpanBuilder, make_resource

SEMCONV = Path(__file__).parent / "data" / "semconv" / "gen-ai"
INVOKE_WORKFLOW = "gen_ai.invoke_workflow.internal"
NOT_REPORTED_BY_BEM = ("gen_ai.request.model", "gen_ai.response.model", "gen_ai.usage.input_tokens")
JSON = dict[str, Any]
Layouts = tuple[list[FinishedCall], list[JSON], list[JSON]]
"""The calls, their spans with the GenAI layout, and without."""


@cache
def model() -> tuple[JSON, dict[str, JSON]]:
    """The vendored span model and the registry's attributes by key."""
    spans = yaml.safe_load((SEMCONV / "spans.yaml").read_text())
    registry = yaml.safe_load((SEMCONV / "registry.yaml").read_text())
    return spans, {entry["key"]: entry for entry in registry["attributes"]}


def span_definition(type_: str) -> JSON:
    spans, _ = model()
    definition: JSON = next(span for span in spans["spans"] if span["type"] == type_)
    return definition


def requirements(definition: JSON) -> dict[str, Any]:
    """Attribute key -> requirement level of a span definition, its `ref_group`s expanded."""
    spans, _ = model()
    groups = {group["id"]: group for group in spans["attribute_groups"]}
    levels: dict[str, Any] = {}
    for entry in definition["attributes"]:
        refs = groups[entry["ref_group"]]["attributes"] if "ref_group" in entry else [entry]
        for ref in refs:
            levels[ref["ref"]] = ref["requirement_level"]
    return levels


def expected_name(definition: JSON, attributes: JSON) -> str:
    """The span name the definition's note prescribes, with its `{attribute}` filled in."""
    template = re.search(r"\*\*Span name\*\* SHOULD be `([^`]+)`", definition["name"]["note"])
    assert template, definition["name"]
    return re.sub(r"\{([\w.]+)\}", lambda match: str(attributes[match.group(1)]), template.group(1))


def expected_operation(definition: JSON) -> str:
    found = re.search(r"The `gen_ai.operation.name` SHOULD be `(\w+)`", definition["note"])
    assert found, definition["note"]
    return found.group(1)


def well_known(key: str) -> set[str]:
    _, registry = model()
    kind = registry[key]["type"]
    return {member["value"] for member in kind["members"]} if isinstance(kind, dict) else set()


def assert_registry_types(span: JSON) -> None:
    """Every gen_ai.* attribute is defined by the registry, with its type."""
    _, registry = model()
    for key, value in span["attributes"].items():
        if not key.startswith("gen_ai."):
            continue
        assert key in registry, f"{span['name']}: {key} is not in the GenAI registry"
        kind = registry[key]["type"]
        if isinstance(kind, dict) or kind == "string":  # an enum (members) is a string with well-known values
            assert isinstance(value, str) and value, (span["name"], key, value)
        else:
            pytest.fail(f"{key}: type {kind} is not one the layout sets")


# --- the calls, their spans -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[list[FinishedCall], str]]:
    config = SimulatorConfig(seed=19, arrival_rate=0.0, prefill=220, history=3600.0)
    with SimulatorServer(Simulator(config)) as url:
        yield asyncio.run(read_calls(url)), url


async def read_calls(url: str) -> list[FinishedCall]:
    async with bem_client(ApiSettings(url=url, key=Secret("sim-key"))) as client:
        calls, cursor = [], None
        while True:
            page = await client.list_calls(ListQuery(starting_after=cursor))
            calls += [call for call in page.calls if call.finished]
            if page.size < 100:
                break
            cursor = page.last_call_id
        traces = await asyncio.gather(*(client.get_trace(call.call_id) for call in calls))
    return [FinishedCall(call, trace) for call, trace in zip(calls, traces, strict=True)]


def exported(batch: list[FinishedCall], environ: dict[str, str]) -> list[JSON]:
    """The spans of `batch` as an OTLP receiver gets them from the sink these settings build."""
    with HttpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, **environ}
        settings = load_settings(environ=env, require_key=False)
        sink = build_span_exporter(settings.traces, NullObserver())
        try:
            assert sink.export(batch)
        finally:
            sink.shutdown()
        return receiver.spans()


@pytest.fixture(scope="module")
def layouts(served: tuple[list[FinishedCall], str]) -> Layouts:
    batch, _ = served
    genai = exported(batch, {"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"})
    default = exported(batch, {})
    return batch, genai, default


def kinds_of_calls(batch: list[FinishedCall]) -> tuple[set[str], set[str]]:
    """Trace ids of workflow calls and of single-function calls."""
    workflows = {trace_id_for(f.call.call_id) for f in batch if f.call.call_type == "workflow"}
    functions = {trace_id_for(f.call.call_id) for f in batch if f.call.call_type != "workflow"}
    return workflows, functions


def test_workflow_call_spans_are_invoke_workflow_spans(
    layouts: Layouts,
) -> None:
    batch, spans, _ = layouts
    workflows, _ = kinds_of_calls(batch)
    definition = span_definition(INVOKE_WORKFLOW)
    levels = requirements(definition)
    roots = [span for span in spans if span["parent"] is None and span["trace_id"] in workflows]
    assert len(roots) >= 100 and any(span["status"]["code"] == "ERROR" for span in roots)
    for span in roots:
        attributes = span["attributes"]
        assert span["kind"] == definition["kind"].upper()
        assert span["name"] == expected_name(definition, attributes)
        assert attributes["gen_ai.operation.name"] == expected_operation(definition)
        for key, level in levels.items():
            if level == "required":
                assert key in attributes, (span["name"], key)
            elif level == "opt_in":
                assert key not in attributes, f"{key} is opt-in content: bem-exporter exports no document content"
            elif "conditionally_required" in level and key == "error.type":
                assert (key in attributes) == (span["status"]["code"] == "ERROR"), (span["name"], level)
            elif "conditionally_required" in level:
                assert key in attributes, (span["name"], key, level)  # the workflow name is always available
        assert attributes["gen_ai.workflow.name"] == attributes["bem.workflow.name"]
        assert attributes["gen_ai.provider.name"] == "bem"


def test_function_call_spans_carry_the_function_type_as_operation(
    layouts: Layouts,
) -> None:
    _, spans, _ = layouts
    children = [span for span in spans if span["parent"] is not None]
    assert len(children) > 500
    types = set()
    for span in children:
        attributes = span["attributes"]
        assert attributes["gen_ai.operation.name"] == attributes["bem.function.type"]
        assert attributes["gen_ai.operation.name"] not in well_known("gen_ai.operation.name"), (
            "a bem function type read as a well-known GenAI operation"
        )
        assert attributes["gen_ai.provider.name"] == "bem"
        assert span["kind"] == "INTERNAL"
        types.add(attributes["bem.function.type"])
    assert {"extract", "classify", "split", "join", "send"} <= types


def test_single_function_calls_invoke_no_workflow(layouts: Layouts) -> None:
    batch, spans, _ = layouts
    _, functions = kinds_of_calls(batch)
    roots = [span for span in spans if span["parent"] is None and span["trace_id"] in functions]
    assert roots, "the simulator's history has direct and adhoc function calls"
    for span in roots:
        assert span["name"].startswith("RUN ") and span["kind"] == "SERVER"
        assert "gen_ai.operation.name" not in span["attributes"] and "gen_ai.workflow.name" not in span["attributes"]
        assert span["attributes"]["gen_ai.provider.name"] == "bem"


def test_every_gen_ai_attribute_is_in_the_registry_and_nothing_bem_does_not_report(
    layouts: Layouts,
) -> None:
    _, spans, _ = layouts
    _, registry = model()
    for span in spans:
        assert_registry_types(span)
        for key in NOT_REPORTED_BY_BEM:
            assert key in registry and key not in span["attributes"], key
        assert not [key for key in span["attributes"] if key.startswith("gen_ai.usage.")]
    assert "bem" not in well_known("gen_ai.provider.name"), "bem is a custom provider value, as the registry allows"


def test_the_genai_layout_adds_and_renames_only(layouts: Layouts) -> None:
    """Span for span: the same ids, parents, times, events and status; every default attribute
    kept; only the gen_ai.* attributes added, and workflow calls' name and kind changed."""
    batch, genai, default = layouts
    workflows, _ = kinds_of_calls(batch)
    assert len(genai) == len(default) > 600
    by_id = {span["span_id"]: span for span in default}
    for span in genai:
        before = by_id[span["span_id"]]
        added = {k: v for k, v in span["attributes"].items() if k not in before["attributes"]}
        assert {k: span["attributes"][k] for k in before["attributes"]} == before["attributes"]
        assert all(key.startswith("gen_ai.") for key in added)
        renamed = span["parent"] is None and span["trace_id"] in workflows
        assert (span["name"] != before["name"]) == renamed
        assert (span["kind"], before["kind"]) == (("INTERNAL", "SERVER") if renamed else (before["kind"],) * 2)
        for field in ("trace_id", "parent", "start", "end", "events", "status", "resource"):
            assert span[field] == before[field], field


def test_without_the_opt_in_the_otlp_bytes_are_the_default_builders(served: tuple[list[FinishedCall], str]) -> None:
    batch, _ = served
    for opt_in in ("", "http", "gen_ai"):
        settings = load_settings(environ={"OTEL_SEMCONV_STABILITY_OPT_IN": opt_in} if opt_in else {}, require_key=False)
        assert settings.traces.genai_conventions is False
    settings = load_settings(environ={"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"}, require_key=False)
    assert settings.traces.genai_conventions is True
    resource = make_resource("bem")
    plain, off = SpanBuilder(resource=resource), SpanBuilder(resource=resource, genai_conventions=False)
    encoder = SpanEncoder()
    for item in batch[:50]:
        assert encoder.encode(plain.build(item)) == encoder.encode(off.build(item))

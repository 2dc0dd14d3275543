"""The OpenTelemetry GenAI layout of the spans, behind `OTEL_SEMCONV_STABILITY_OPT_IN`.

The GenAI semantic conventions are in development; instrumentations keep their layout unless
the user opts in with `gen_ai_latest_experimental` in `OTEL_SEMCONV_STABILITY_OPT_IN` (the
conventions' own transition plan). With it, the spans also carry the GenAI attributes that fit
what bem reports, and nothing else (checked span by span against the conventions' model in
tests/data/semconv/):

- a workflow call's span is the GenAI `invoke_workflow` span: named
  `invoke_workflow {gen_ai.workflow.name}`, kind INTERNAL, `gen_ai.operation.name` =
  `invoke_workflow`, `gen_ai.workflow.name` = the workflow's name;
- each function call's span carries `gen_ai.operation.name` = bem's function type (`extract`,
  `classify`, ...). No well-known operation applies: bem reports function types, not the model
  operations under them, and a `payload_shaping` or a `send` involves no model at all; the
  conventions allow a system-specific value then;
- every span carries `gen_ai.provider.name` = `bem`.

bem reports neither a model nor token counts, so no `gen_ai.request.model` nor
`gen_ai.usage.*` appears. A call of a single function (no workflow) keeps its call span's
default name and kind: it invokes no workflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from exporter.bem.models import Call

OPT_IN: Final = "gen_ai_latest_experimental"
"""The value of `OTEL_SEMCONV_STABILITY_OPT_IN` (a comma list) that turns the layout on."""
PROVIDER: Final = "bem"
INVOKE_WORKFLOW: Final = "invoke_workflow"

OPERATION: Final = "gen_ai.operation.name"
PROVIDER_NAME: Final = "gen_ai.provider.name"
WORKFLOW_NAME: Final = "gen_ai.workflow.name"


def opted_in(categories: Iterable[str]) -> bool:
    return OPT_IN in categories


FUNCTION_CALL_TYPES: Final = frozenset({"direct_function", "adhoc_function"})


def invoked_workflow(call: Call) -> str | None:
    """The name of the workflow a call invokes, or None for a call of a single function."""
    return call.workflow_name if call.workflow_name and call.call_type not in FUNCTION_CALL_TYPES else None


def call_span_name(workflow: str) -> str:
    return f"{INVOKE_WORKFLOW} {workflow}"


def call_attributes(workflow: str | None) -> dict[str, Any]:
    """The GenAI attributes of a call's span; `workflow` from `invoked_workflow`."""
    if workflow is None:
        return {PROVIDER_NAME: PROVIDER}
    return {OPERATION: INVOKE_WORKFLOW, PROVIDER_NAME: PROVIDER, WORKFLOW_NAME: workflow}


def function_call_attributes(function_type: str) -> dict[str, Any]:
    """The GenAI attributes of a function call's span, from its `bem.function.type` (none
    when bem gave no type)."""
    attributes: dict[str, Any] = {PROVIDER_NAME: PROVIDER}
    if function_type:
        attributes[OPERATION] = function_type
    return attributes

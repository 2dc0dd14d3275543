"""One call as a tree in the terminal (the demo prints it when no OTLP endpoint is set).

Drawn from the very spans the OTLP sink would send, so the tree shows exactly the parents,
names and timings a tracing backend would:

    RUN invoice-intake  completed  12.4s  trace 4bf92f3577b34da6a3ce929d0e0e4736
    └─ classify-doc (classify) 1.2s
       ├─ extract-invoice (extract) [invoice] 8.1s  conf 0.93
       │  └─ send-erp (send) 0.4s
       └─ ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from exporter.ids import trace_id_for
from exporter.pipeline import FinishedCall
from exporter.traces.spans import build_spans

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

_BRANCH, _LAST = "├─ ", "└─ "
_PIPE, _SPACE = "│  ", "   "


def render_tree(finished: FinishedCall) -> str:
    spans = build_spans(finished)
    root, rest = spans[0], spans[1:]
    children = _children(rest)
    lines = [_call_line(finished, root)]
    # Iterative depth-first walk: a chain of thousands of steps must not hit the recursion limit.
    stack: list[tuple[ReadableSpan, str, bool]] = [
        (span, "", index == 0) for index, span in enumerate(reversed(children.get(_span_id(root), [])))
    ]
    while stack:
        span, prefix, last = stack.pop()
        lines.append(prefix + (_LAST if last else _BRANCH) + _function_call_line(span))
        below = children.get(_span_id(span), [])
        inner = prefix + (_SPACE if last else _PIPE)
        stack.extend((child, inner, index == 0) for index, child in enumerate(reversed(below)))
    return "\n".join(lines)


def _children(spans: list[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else 0
        children.setdefault(parent, []).append(span)
    for group in children.values():
        group.sort(key=lambda s: (s.start_time or 0, s.name))
    return children


def _span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    return context.span_id if context is not None else 0


def _call_line(finished: FinishedCall, span: ReadableSpan) -> str:
    call = finished.call
    parts = [span.name, call.status, _duration(span), f"trace {trace_id_for(call.call_id)}"]
    attributes: Mapping[str, Any] = span.attributes or {}
    if (error_type := attributes.get("error.type")) is not None:
        parts.append(f"error {error_type!s}")
    return "  ".join(parts)


def _function_call_line(span: ReadableSpan) -> str:
    attributes: Mapping[str, Any] = span.attributes or {}
    head = span.name
    if function_type := attributes.get("bem.function.type"):
        head += f" ({function_type!s})"
    if destination := attributes.get("bem.incoming_destination_name"):
        head += f" [{destination!s}]"
    head += " " + _duration(span)
    extras = []
    if (confidence := attributes.get("bem.function_call.avg_confidence")) is not None:
        extras.append(f"conf {confidence:.2f}")
    if (tries := attributes.get("bem.function_call.max_try_number")) is not None and tries > 1:
        extras.append(f"{tries} tries")
    status = attributes.get("bem.function_call.status")
    if (error_type := attributes.get("error.type")) is not None:
        # "failed" is the kind given when bem named none: it would say FAILED twice.
        extras.append("FAILED" if error_type == "failed" else f"FAILED {error_type!s}")
    elif status and status not in ("completed", "failed"):
        extras.append(str(status))
    return "  ".join([head, *extras])


def _duration(span: ReadableSpan) -> str:
    seconds = max(0, (span.end_time or 0) - (span.start_time or 0)) / 1e9
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"

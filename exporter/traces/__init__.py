"""Traces: finished calls -> spans (`spans`, pure) -> OTLP bytes (`otlp`) -> the wire
(`http_transport`, `grpc_transport`), with at-least-once delivery and its backlog (`delivery`).
`sink.build_span_exporter` puts them together; `genai` is the OpenTelemetry GenAI layout
behind `OTEL_SEMCONV_STABILITY_OPT_IN`; `tree` draws a call in the terminal (demo)."""

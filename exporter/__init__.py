"""bem-exporter: OpenTelemetry traces and Prometheus metrics for bem (bem.ai) workflow calls."""

__version__ = "0.1.0"

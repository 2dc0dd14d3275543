"""A lean OTLP/HTTP trace receiver for the benchmark, run as its own process.

    python bench/receiver.py [--port 0]

Prints its port on the first line of stdout, then answers `POST /v1/traces` (protobuf, gzip
or not) with 200 and an empty `ExportTraceServiceResponse`. It decodes every request to count
spans and span events, and for each call span (kind SERVER, whose end is the call's
`finishedAt`) keeps `(end, received - end)` in nanoseconds: the "finished -> span exported"
freshness. `GET /stats` returns what it counted as JSON; `POST /reset` starts afresh.

Its CPU is its own: the benchmark measures the exporter's process only.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER
_EMPTY = ExportTraceServiceResponse().SerializeToString()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.call_spans = 0
        self.span_events = 0
        self.lags: list[tuple[int, int]] = []
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def add(self, body: bytes, received_ns: int) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = events = calls = 0
        lags: list[tuple[int, int]] = []
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans += 1
                    events += len(span.events)
                    if span.kind == _SERVER:
                        calls += 1
                        lags.append((span.end_time_unix_nano, received_ns - span.end_time_unix_nano))
        with self.lock:
            self.requests += 1
            self.bytes += len(body)
            self.spans += spans
            self.call_spans += calls
            self.span_events += events
            self.lags.extend(lags)
            self.first_ns = self.first_ns or received_ns
            self.last_ns = received_ns

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "bytes": self.bytes,
                "spans": self.spans,
                "call_spans": self.call_spans,
                "span_events": self.span_events,
                "first_ns": self.first_ns,
                "last_ns": self.last_ns,
                "lags": self.lags,
            }


def handler(tally: Tally) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a collector

        def do_POST(self) -> None:
            received = time.time_ns()
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path == "/reset":
                tally.reset()
                self._reply(200, b"{}", "application/json")
                return
            encoding = (self.headers.get("content-encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            try:
                tally.add(body, received)
            except DecodeError:  # not an OTLP request: refused, as a collector refuses it
                self._reply(400, b"", "text/plain")
                return
            self._reply(200, _EMPTY, "application/x-protobuf")

        def do_GET(self) -> None:
            if self.path != "/stats":
                self._reply(404, b"", "text/plain")
                return
            self._reply(200, json.dumps(tally.stats()).encode(), "application/json")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(Tally()))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()

"""Real OTLP trace receivers for tests: gRPC `TraceService` and HTTP `/v1/traces`.

Both listen on loopback (port 0 on first start), keep every request they accept, and can be
switched to answer as a backend that is down (gRPC UNAVAILABLE, HTTP 503) or one that never
answers (`set_hang`), or be stopped and started again on the same port. Optional: TLS (`tls=`
a (certificate PEM, key PEM) pair), a body size cap (`max_body=`, on the body as sent: HTTP
413, gRPC RESOURCE_EXHAUSTED, as a collector answers), and a poison rule (`poison=` bytes: a
request containing them is refused as invalid, HTTP 400 / gRPC INVALID_ARGUMENT). Use them
as context managers:

    with GrpcReceiver() as receiver:
        settings = TraceSettings(endpoint=receiver.endpoint, protocol=receiver.protocol, ...)
        ...
        receiver.spans()      # simple dicts, see `span_dict`
        receiver.raw()        # the request bodies exactly as received (grep them for leaks)
        receiver.headers()    # request headers / gRPC metadata, one dict per request

Spans are reported as plain dicts so that tests compare values, not protobuf objects.
"""

from __future__ import annotations

import gzip
import ssl
import tempfile
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_KINDS = {value: name.removeprefix("SPAN_KIND_") for name, value in Span.SpanKind.items()}
_STATUS = {value: name.removeprefix("STATUS_CODE_") for name, value in Status.StatusCode.items()}


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it carries."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    return getattr(value, which)


def attributes_dict(attributes: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in attributes if isinstance(kv, KeyValue)}


def span_dict(span: Span, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    """trace_id, span_id, parent (hex or None), name, kind (`SERVER`...), start/end (ns),
    attributes, events [{name, time, attributes}], status {code, message}, resource."""
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex() or None,
        "name": span.name,
        "kind": _KINDS.get(span.kind, str(span.kind)),
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "attributes": attributes_dict(span.attributes),
        "events": [
            {"name": e.name, "time": e.time_unix_nano, "attributes": attributes_dict(e.attributes)} for e in span.events
        ],
        "dropped_events": span.dropped_events_count,
        "status": {"code": _STATUS.get(span.status.code, str(span.status.code)), "message": span.status.message},
        "resource": resource or {},
    }


Verdict = Literal["ok", "down", "too_large", "poison"]
TlsPair = tuple[bytes, bytes]
"""A server certificate and its private key, PEM."""


class _Collector:
    """What both receivers share: the record of accepted requests and the switches."""

    protocol = ""

    def __init__(self, *, tls: TlsPair | None = None, max_body: int | None = None, poison: bytes | None = None) -> None:
        self.tls = tls
        self.max_body = max_body
        self.poison = poison
        self.refused: list[Verdict] = []
        """Why each refused request was refused, in order."""
        self._hang = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[ExportTraceServiceRequest] = []
        self._raw: list[bytes] = []
        self._headers: list[dict[str, str]] = []
        self._down = False
        self.attempts = 0
        """Requests received, accepted or refused (a down backend still sees retries)."""
        self.port = 0

    # -- switches ------------------------------------------------------------------------------

    def set_down(self, down: bool = True) -> None:
        """Answer every request as a backend that is unavailable (and keep nothing)."""
        self._down = down

    @property
    def down(self) -> bool:
        return self._down

    def set_hang(self, hang: bool = True) -> None:
        """Keep every request open without an answer (until unset or stopped)."""
        if hang:
            self._released.clear()
            self._hang.set()
        else:
            self._hang.clear()
            self._released.set()

    def _hung(self) -> bool:
        """Holds a request while hanging; True if it was held (it is then refused as `down`:
        the client gave up on it long ago)."""
        if not self._hang.is_set():
            return False
        with self._lock:
            self.attempts += 1
        self._released.wait(30)
        return True

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._raw.clear()
            self._headers.clear()
            self.attempts = 0

    # -- what was received ---------------------------------------------------------------------

    def _accept(self, body: bytes, headers: dict[str, str], wire_size: int = 0) -> Verdict:
        with self._lock:
            self.attempts += 1
            verdict = self._verdict(body, wire_size)
            if verdict != "ok":
                self.refused.append(verdict)
                return verdict
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            self._requests.append(request)
            self._raw.append(body)
            self._headers.append(headers)
            return "ok"

    def _verdict(self, body: bytes, wire_size: int) -> Verdict:
        if self._down:
            return "down"
        if self.max_body is not None and wire_size > self.max_body:
            return "too_large"
        if self.poison is not None and self.poison in body:
            return "poison"
        return "ok"

    def requests(self) -> list[ExportTraceServiceRequest]:
        with self._lock:
            return list(self._requests)

    def raw(self) -> list[bytes]:
        with self._lock:
            return list(self._raw)

    def raw_bytes(self) -> bytes:
        return b"".join(self.raw())

    def headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._headers)

    def resource_spans(self) -> list[ResourceSpans]:
        return [rs for request in self.requests() for rs in request.resource_spans]

    def spans(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for resource_spans in self.resource_spans():
            resource = attributes_dict(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                out.extend(span_dict(span, resource) for span in scope_spans.spans)
        return out

    def wait_for_spans(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.01)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.set_hang(False)
        self.stop()


class GrpcReceiver(_Collector):
    """An OTLP/gRPC receiver. The Export method is served with a generic handler, so the
    request bytes are kept exactly as they arrived on the wire."""

    protocol = "grpc"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._server is not None:
            return
        limits = [("grpc.max_receive_message_length", self.max_body)] if self.max_body else []
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=limits)
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # no (de)serializers: raw bytes
        server.add_generic_rpc_handlers((_ExportRouter(handler),))
        address = f"127.0.0.1:{self.port}"
        if self.tls:
            credentials = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on 127.0.0.1:{self.port}")
        self.port = port
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        if self._hung():
            context.abort(grpc.StatusCode.UNAVAILABLE, "held without an answer (test switch)")
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        verdict = self._accept(body, metadata)  # the server itself enforces max_body
        if verdict == "down":
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend down (test switch)")
        if verdict == "poison":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "poisoned request (test rule)")
        return bytes(ExportTraceServiceResponse().SerializeToString())


class _ExportRouter(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no types
    def __init__(self, handler: grpc.RpcMethodHandler) -> None:
        self._handler = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method == _EXPORT_METHOD:
            return self._handler
        return None


class HttpReceiver(_Collector):
    """An OTLP/HTTP (protobuf) receiver at `/v1/traces`."""

    protocol = "http/protobuf"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1/traces"

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        if self.tls:
            server.socket = _server_tls(self.tls).wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _server_tls(pair: TlsPair) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert.write_bytes(pair[0])
        key.write_bytes(pair[1])
        context.load_cert_chain(cert, key)
    return context


_HTTP_CODES: dict[Verdict, int] = {"ok": 200, "down": 503, "too_large": 413, "poison": 400}


def _handler_for(receiver: HttpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                self._reply(404, b"")
                return
            if receiver._hung():
                self._reply(503, b"held without an answer (test switch)")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            wire_size = len(body)
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            verdict = receiver._accept(body, {k.lower(): v for k, v in self.headers.items()}, wire_size)
            reply = ExportTraceServiceResponse().SerializeToString() if verdict == "ok" else verdict.encode()
            self._reply(_HTTP_CODES[verdict], reply)

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def receiver_for(protocol: str, **options: Any) -> GrpcReceiver | HttpReceiver:
    return GrpcReceiver(**options) if protocol == "grpc" else HttpReceiver(**options)

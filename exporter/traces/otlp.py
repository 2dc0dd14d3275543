"""OTLP protobuf encoding of spans, written directly: `ExportTraceServiceRequest` bytes.

The SDK's `encode_spans` builds a protobuf object per span, event, attribute and value
through the Python API of `protobuf`: about 60 µs per function call of a bem trace, more than
everything else the exporter does together (docs/performance.md). Here the wire format is
written as bytes: each field is a tag, a length and a payload, and the (key, value) pairs that
repeat from span to span (function names and types, statuses, results, workflow names) are
encoded once and reused. The result parses to the same message as the SDK's (a test compares
them), about four times cheaper (docs/performance.md).

Only the part of OTLP that spans use: resource, scope, span, event, link, status, and the
attribute values the OpenTelemetry API allows (str, bool, int, float, bytes and sequences of
them; None as an empty value, like the SDK). Anything else raises `TypeError` (the span
builder never produces it). `encode_requests` also cuts a batch into requests under a size
limit, keeping each call's spans together where they fit.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack

_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_FLAGS_TAG = b"\x85\x01"  # field 16, fixed32

_CACHE_LIMIT = 16384
"""Encoded attributes kept for reuse; past it the cache starts afresh (bounded memory)."""
_NOT_CACHED_SUFFIXES = ("id", "message")
"""Attribute keys whose values are unique (ids) or free text: encoding them once is all."""


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _varint(value: int) -> bytes:
    """A varint of at most 64 bits: an int64 beyond its range is clamped (the span builder
    has already clamped and counted it; this keeps any other caller from writing a varint no
    receiver can parse, which would cost the whole request)."""
    if value < 0x80:
        return bytes((value,)) if value >= 0 else _varint(max(value, _INT64_MIN) + (1 << 64))
    value = min(value, (1 << 64) - 1)
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint(n) for n in range(16384)]


def _len(size: int) -> bytes:
    return _SMALL[size] if size < 16384 else _varint(size)


def _string(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + _len(len(data)) + data


def _any_value(value: Any) -> bytes:
    """An `AnyValue` message's body."""
    if isinstance(value, str):
        return _string(b"\x0a", value)
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(min(value, _INT64_MAX))
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return b"\x3a" + _len(len(value)) + value
    if isinstance(value, Sequence):
        items = b"".join(_field(b"\x0a", _any_value(item)) for item in value)
        return _field(b"\x2a", items)
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", pairs)
    raise TypeError(f"cannot encode an attribute of type {type(value).__name__}")


def _field(tag: bytes, body: bytes) -> bytes:
    return tag + _len(len(body)) + body


def _key_value(key: str, value: Any) -> bytes:
    return _string(b"\x0a", key) + _field(b"\x12", _any_value(value))


class SpanEncoder:
    """Encodes batches of `ReadableSpan`s. Thread-safe: the cache is only ever added to or
    replaced whole, and a race costs at most an entry encoded twice."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, Any], bytes] = {}
        self._keys: dict[str, tuple[bytes, bool]] = {}
        self._headers: dict[int, tuple[object, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The `ExportTraceServiceRequest` of `spans`, grouped by resource and scope in order
        of first appearance (as the SDK groups them)."""
        span = self._span
        return self.assemble([(item, span(item)) for item in spans])

    def encode_requests(self, owners: Sequence[Sequence[ReadableSpan]], max_bytes: int) -> list[EncodedRequest]:
        """`ExportTraceServiceRequest`s of at most about `max_bytes` each (estimated from
        above) holding the spans of every owner (a call) in order. An owner's spans stay in one
        request unless they alone exceed the limit; a single span larger than it goes alone."""
        packer = _Packer(self, max_bytes)
        for index, spans in enumerate(owners):
            packer.add(index, [(span, self._span(span)) for span in spans])
        return packer.done()

    def overhead(self, span: ReadableSpan) -> tuple[tuple[int, int], int]:
        """The (resource, scope) group of `span`, and the most bytes that group adds to a
        request around its spans (its headers, and three length prefixes of up to 5 bytes)."""
        resource, scope = span.resource, span.instrumentation_scope
        return (id(resource), id(scope)), len(self._resource(resource)) + len(self._scope(scope)) + 16

    def assemble(self, encoded_spans: Sequence[tuple[ReadableSpan, bytes]]) -> bytes:
        groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
        for item, encoded_span in encoded_spans:
            resource = item.resource
            group = groups.get(id(resource))
            if group is None:
                group = groups[id(resource)] = (resource, {})
            scope = item.instrumentation_scope
            scoped = group[1].get(id(scope))
            if scoped is None:
                scoped = group[1][id(scope)] = (scope, [])
            scoped[1].append(encoded_span)
        out = []
        for resource, scopes in groups.values():
            body = [self._resource(resource)]
            for scope, encoded in scopes.values():
                body.append(_field(b"\x12", self._scope(scope) + b"".join(encoded)))
            if resource.schema_url:
                body.append(_string(b"\x1a", resource.schema_url))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)

    # -- pieces ------------------------------------------------------------------------------

    def _resource(self, resource: Resource) -> bytes:
        cached = self._headers.get(id(resource))
        if cached is not None and cached[0] is resource:
            return cached[1]
        body = b"".join(_field(b"\x0a", _key_value(k, v)) for k, v in resource.attributes.items())
        encoded = _field(b"\x0a", body)
        self._headers[id(resource)] = (resource, encoded)
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """The `scope` field of a ScopeSpans, and its schema_url (placed before the spans:
        field order does not matter on the wire)."""
        cached = self._headers.get(id(scope))
        if cached is not None and cached[0] is scope:
            return cached[1]
        if scope is None:
            encoded = _field(b"\x0a", b"")
        else:
            body = _string(b"\x0a", scope.name) if scope.name else b""
            if scope.version:
                body += _string(b"\x12", scope.version)
            for k, v in (scope.attributes or {}).items():
                body += _field(b"\x1a", _key_value(k, v))
            encoded = _field(b"\x0a", body)
            if scope.schema_url:
                encoded += _string(b"\x1a", scope.schema_url)
        self._headers[id(scope)] = (scope, encoded)
        return encoded

    def _key(self, key: str) -> tuple[bytes, bool]:
        """The encoded `key` field of a KeyValue, and whether the key's values are cached."""
        known = self._keys.get(key)
        if known is None:
            known = self._keys[key] = (_string(b"\x0a", key), not key.endswith(_NOT_CACHED_SUFFIXES))
        return known

    def _attributes_of(self, tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
        """The repeated KeyValue fields (`tag` is the field's) of `attributes`. The hot loop of
        the encoder: strings, ints and floats are written inline; a (key, value) pair that
        repeats comes from the cache."""
        if not attributes:
            return []
        out = []
        cache = self._attributes
        keys = self._keys
        small = _SMALL
        for key, value in attributes.items():
            known = keys.get(key) or self._key(key)
            kind = type(value)
            if kind is float:
                kv = known[0] + b"\x12\x09\x21" + _double(value)
                out.append(tag + small[len(kv)] + kv)
                continue
            if kind is str or kind is int:
                if known[1]:
                    encoded = cache.get((key, value))
                    if encoded is not None:
                        out.append(tag + encoded)
                        continue
                if kind is str:
                    data = value.encode()
                    size = len(data)
                    any_value = b"\x0a" + (small[size] if size < 16384 else _varint(size)) + data
                else:
                    any_value = b"\x18" + _varint(min(value, _INT64_MAX))
                size = len(any_value)
                kv = known[0] + b"\x12" + (small[size] if size < 16384 else _varint(size)) + any_value
                size = len(kv)
                encoded = small[size] + kv if size < 16384 else _varint(size) + kv
                if known[1]:
                    if len(cache) >= _CACHE_LIMIT:
                        cache = self._attributes = {}
                    cache[(key, value)] = encoded
                out.append(tag + encoded)
                continue
            # bool (kept apart from the cache: True == 1), None, bytes, sequences, mappings
            out.append(_field(tag, known[0] + _field(b"\x12", _any_value(value))))
        return out

    def _span(self, span: ReadableSpan) -> bytes:
        context = span.context
        assert context is not None
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        trace_state = context.trace_state
        if trace_state:
            parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in trace_state.items())))
        parent = span.parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        if span.name:
            parts.append(_string(b"\x2a", span.name))
        parts.append(b"\x30" + _SMALL[span.kind.value + 1])
        if span.start_time:
            parts.append(b"\x39" + _fixed64(span.start_time))
        if span.end_time:
            parts.append(b"\x41" + _fixed64(span.end_time))
        parts += self._attributes_of(b"\x4a", span.attributes)
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            parts.append(_field(b"\x5a", self._event(event)))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            parts.append(_field(b"\x6a", self._link(link)))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        if status is not None:
            body = _string(b"\x12", status.description) if status.description else b""
            code = status.status_code.value
            parts.append(_field(b"\x7a", body + b"\x18" + _SMALL[code] if code else body))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        parts.append(_FLAGS_TAG + _fixed32(flags))
        return _field(b"\x12", b"".join(parts))

    def _event(self, event: Event) -> bytes:
        parts = []
        if event.timestamp:
            parts.append(b"\x09" + _fixed64(event.timestamp))
        if event.name:
            parts.append(_string(b"\x12", event.name))
        parts += self._attributes_of(b"\x1a", event.attributes)
        if event.dropped_attributes:
            parts.append(b"\x20" + _varint(event.dropped_attributes))
        return b"".join(parts)

    def _link(self, link: Link) -> bytes:
        context: SpanContext = link.context
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        if context.trace_state:
            parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in context.trace_state.items())))
        parts += self._attributes_of(b"\x22", link.attributes)
        if link.dropped_attributes:
            parts.append(b"\x28" + _varint(link.dropped_attributes))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if context.is_remote else 0)
        parts.append(b"\x35" + _fixed32(flags))
        return b"".join(parts)


class EncodedRequest(NamedTuple):
    """One export request: its body, its span count, and the owners (indexes) it holds."""

    body: bytes
    spans: int
    owners: tuple[int, ...]


class _Packer:
    """Fills requests up to a size limit, keeping an owner's spans together where they fit."""

    def __init__(self, encoder: SpanEncoder, max_bytes: int) -> None:
        self._encoder = encoder
        self._max_bytes = max_bytes
        self._requests: list[EncodedRequest] = []
        self._pending: list[tuple[ReadableSpan, bytes]] = []
        self._owners: list[int] = []
        self._groups: set[tuple[int, int]] = set()
        self._size = 0

    def add(self, owner: int, spans: list[tuple[ReadableSpan, bytes]]) -> None:
        if self._pending and self._size + self._cost(spans) > self._max_bytes:
            self._flush()
        for span, encoded in spans:
            group, overhead = self._encoder.overhead(span)
            cost = len(encoded) + (0 if group in self._groups else overhead)
            if self._pending and self._size + cost > self._max_bytes:
                self._flush()
                cost = len(encoded) + overhead
            self._pending.append((span, encoded))
            self._groups.add(group)
            self._size += cost
            if not self._owners or self._owners[-1] != owner:
                self._owners.append(owner)

    def done(self) -> list[EncodedRequest]:
        if self._pending:
            self._flush()
        return self._requests

    def _cost(self, spans: list[tuple[ReadableSpan, bytes]]) -> int:
        groups = {self._encoder.overhead(span) for span, _ in spans}
        return sum(len(encoded) for _, encoded in spans) + sum(
            extra for group, extra in groups if group not in self._groups
        )

    def _flush(self) -> None:
        body = self._encoder.assemble(self._pending)
        self._requests.append(EncodedRequest(body, len(self._pending), tuple(self._owners)))
        self._pending, self._owners, self._groups, self._size = [], [], set(), 0

"""Tolerant decoding of the two quality bodies, as `exporter.bem.decode` decodes calls: the
envelope keeps each item raw, then each item is decoded on its own, so that an unreadable item
costs that item alone (counted). A body that is not the expected JSON at all raises
`DecodeError`, which the client retries and then reports as `malformed`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import msgspec

from exporter.bem.decode import DecodeError, decode_envelope
from exporter.quality.records import FunctionId, FunctionQuality

__all__ = ["DecodeError", "FunctionPage", "MetricsPage", "decode_function_page", "decode_metrics_page"]

_INVALID = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
T = TypeVar("T")


class _Envelope(msgspec.Struct):
    functions: list[msgspec.Raw] = []


@dataclass(frozen=True, slots=True)
class FunctionPage:
    """One page of `GET /v3/functions`: the readable ids, in listing order."""

    ids: list[str]
    size: int
    """Items on the page, readable or not: a page shorter than asked ends the listing."""

    @property
    def rejected(self) -> int:
        return self.size - len(self.ids)


@dataclass(frozen=True, slots=True)
class MetricsPage:
    """The items of `GET /v3/functions/metrics` that decoded, and how many did not."""

    functions: list[FunctionQuality]
    rejected: int


_envelope = msgspec.json.Decoder(_Envelope, strict=False)
# Items decode strictly: lax mode would read "0.9" as a number and a garbled item as data.
_function_id = msgspec.json.Decoder(FunctionId)
_quality = msgspec.json.Decoder(FunctionQuality)


def decode_function_page(body: bytes) -> FunctionPage:
    items = decode_envelope(_envelope, body, "list functions").functions
    ids = [item.function_id for item in _readable(_function_id, items) if item.function_id]
    return FunctionPage(ids, len(items))


def decode_metrics_page(body: bytes) -> MetricsPage:
    items = decode_envelope(_envelope, body, "function metrics").functions
    functions = _readable(_quality, items)
    return MetricsPage(functions, len(items) - len(functions))


def _readable(decoder: msgspec.json.Decoder[T], items: list[msgspec.Raw]) -> list[T]:
    decoded: list[T] = []
    for raw in items:
        try:
            decoded.append(decoder.decode(raw))
        except _INVALID:
            continue
    return decoded

"""One answer of bem, read whole under a size bound.

The body is streamed (`httpx.Response.aiter_bytes`), so it is counted as it is decoded from
gzip or deflate: a small compressed body that inflates past the bound (a gzip bomb) stops
there. A body whose compression is corrupt is not an empty body: the answer says why it cannot
be read, and reading it raises the `DecodeError` that makes the client retry it and report it
as malformed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from exporter.bem.decode import DecodeError
from exporter.redact import error_text

log = logging.getLogger(__name__)


class TooLargeError(Exception):
    """The body passed the size limit (declared, or counted after decoding) before it was read."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    retry_after: str | None
    body: bytes
    corrupt: str | None = None
    """Why the body cannot be decoded (its compression is corrupt), in words; None when whole."""

    def readable(self) -> bytes:
        """The body; `DecodeError` naming the fault when its compression is corrupt."""
        if self.corrupt is not None:
            raise DecodeError(self.corrupt)
        return self.body


async def read_answer(response: httpx.Response, max_bytes: int) -> Answer:
    """The answer with its decoded body, `TooLargeError` as soon as the body passes `max_bytes`."""
    status, retry_after = response.status_code, response.headers.get("retry-after")
    _refuse_declared_length(response, max_bytes)
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise TooLargeError(status)
    except httpx.DecodingError as error:
        return Answer(status, retry_after, b"", corrupt=_corrupt(response, error))
    return Answer(status, retry_after, bytes(body))


def _refuse_declared_length(response: httpx.Response, max_bytes: int) -> None:
    """An uncompressed body that declares more than the limit is refused unread."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and "content-encoding" not in response.headers and int(declared) > max_bytes:
        raise TooLargeError(response.status_code)


_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


def _corrupt(response: httpx.Response, error: httpx.DecodingError) -> str:
    # The header is the server's text: named only when it is one httpx decodes.
    encoding = response.headers.get("content-encoding", "").strip().lower()
    encoding = encoding if encoding in _ENCODINGS else "content"
    named = error_text(error, limit=200)
    log.warning(
        "bem API sent a body whose compression is corrupt",
        extra={"encoding": encoding, "status": response.status_code, "error": named},
    )
    return f"response body is corrupt: its {encoding} encoding cannot be decoded ({named})"

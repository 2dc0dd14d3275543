"""Scrape bodies: the call metrics rendered once per published version, self-metrics per scrape.

The call metrics change only when a batch is published (or a snapshot restored), and with
tens of thousands of series rendering them takes far longer than serving bytes. So they are
rendered when they change (text and OpenMetrics right away, in a background thread; other
variants and gzip on first demand) and every scrape until the next change gets the same
bytes. The self-metrics are few and change continuously: they are rendered per scrape and
appended. In OpenMetrics the cached part is kept without its `# EOF` line, so the body ends
with exactly one (the self-metrics part's). A gzip body is one gzip stream: the cached
part's compressed bytes and a copy of the compressor's state after them (`zlib` compressor
copies), which each scrape continues with its self-metrics and finishes (a body of two gzip
members would be valid RFC 1952, but some clients, httpx among them, read only the first).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Encoder = Callable[[CollectorRegistry], bytes]

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
GZIP_LEVEL: Final = 1
"""Scrape bodies compress about tenfold at level 1; higher levels cost CPU for little more."""
OPENMETRICS: Final = "application/openmetrics-text"
EOF: Final = b"# EOF\n"
PRERENDERED: Final = ("", f"{OPENMETRICS};version=1.0.0")
"""The Accept headers whose bodies are rendered as soon as the call metrics change: the
Prometheus text format and OpenMetrics 1.0.0 (what Prometheus asks for)."""


class CachedExposition:
    """The exposition of a registry whose content changes only when `version()` does."""

    def __init__(self, registry: CollectorRegistry, version: Callable[[], int]) -> None:
        self._registry = registry
        self._version = version
        self._lock = threading.Lock()
        self._rendered_version = -1
        self._bodies: dict[str, bytes] = {}
        self._gzipped: dict[str, _GzipPrefix] = {}
        self._prerender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-prerender")

    def changed(self) -> None:
        """The content changed: render the common formats now, off the caller's thread, so
        that scrapes find them ready."""
        self._prerender.submit(self._render_common)

    def rendered(self, accept: str, gzipped: bool, live: bytes) -> bytes | None:
        """The body for this variant if the cached part is rendered and current, without
        waiting (no lock: the dicts are replaced under the lock after the version moved on)."""
        _, content_type = choose_encoder(accept)
        if self._rendered_version != self._version():
            return None
        if gzipped:
            prefix = self._gzipped.get(content_type)
            return None if prefix is None else prefix.finish(live)
        body = self._bodies.get(content_type)
        return None if body is None else body + live

    def body(self, accept: str, gzipped: bool, live: bytes) -> bytes:
        """The body for this variant, the cached part rendered first if stale."""
        encoder, content_type = choose_encoder(accept)
        with self._lock:
            self._drop_if_stale()
            body = self._bodies.get(content_type)
            if body is None:
                body = self._bodies[content_type] = _render(self._registry, encoder, content_type)
            if not gzipped:
                return body + live
            prefix = self._gzipped.get(content_type)
            if prefix is None:
                prefix = self._gzipped[content_type] = _GzipPrefix(body)
        return prefix.finish(live)

    def _render_common(self) -> None:
        for accept in PRERENDERED:
            self.body(accept, gzipped=False, live=b"")

    def _drop_if_stale(self) -> None:
        version = self._version()
        if version != self._rendered_version:
            # Read before rendering: a publish racing the render can only make the cache
            # look older than it is (one render too many), never newer.
            self._bodies = {}
            self._gzipped = {}
            self._rendered_version = version


class _GzipPrefix:
    """The start of a gzip stream, and the compressor state to continue it from."""

    def __init__(self, body: bytes) -> None:
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        self._prefix = self._compressor.compress(body)

    def finish(self, rest: bytes) -> bytes:
        compressor = self._compressor.copy()
        return self._prefix + compressor.compress(rest) + compressor.flush()


def _render(registry: CollectorRegistry, encoder: Encoder, content_type: str) -> bytes:
    body = encoder(registry)
    return body.removesuffix(EOF) if content_type.startswith(OPENMETRICS) else body


def render_live(registry: CollectorRegistry, accept: str) -> bytes:
    """The per-scrape part of a body (ends with `# EOF` in OpenMetrics)."""
    encoder, _ = choose_encoder(accept)
    return encoder(registry)

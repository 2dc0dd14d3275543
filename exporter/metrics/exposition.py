"""Scrape bodies: the call metrics rendered once per published version, self-metrics per scrape.

The call metrics change only when a batch is published (or a snapshot restored), and with
tens of thousands of series rendering them takes far longer than serving bytes. So they are
rendered when they change (text and OpenMetrics right away, in a background thread; other
variants and gzip on first demand) and every scrape until the next change gets the same
bytes. The self-metrics are few and change continuously: they are rendered per scrape and
appended. In OpenMetrics the cached part is kept without its `# EOF` line, so the body ends
with exactly one (the self-metrics part's). A gzip body is two gzip members, the cached one
and the per-scrape one: RFC 1952 allows a body of several members, and Prometheus (Go's
gzip reader) and Python's gzip read them as one stream.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Encoder = Callable[[CollectorRegistry], bytes]

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
        self._bodies: dict[tuple[str, bool], bytes] = {}
        self._prerender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-prerender")

    def changed(self) -> None:
        """The content changed: render the common formats now, off the caller's thread, so
        that scrapes find them ready."""
        self._prerender.submit(self._render_common)

    def body(self, accept: str, gzipped: bool) -> bytes:
        """The cached part of a scrape body for this variant (rendered if stale)."""
        encoder, content_type = choose_encoder(accept)
        key = (content_type, gzipped)
        with self._lock:
            self._drop_if_stale()
            body = self._bodies.get(key)
            if body is None:
                body = self._render(encoder, content_type, gzipped)
                self._bodies[key] = body
            return body

    def _render_common(self) -> None:
        for accept in PRERENDERED:
            self.body(accept, gzipped=False)

    def _drop_if_stale(self) -> None:
        version = self._version()
        if version != self._rendered_version:
            # Read before rendering: a publish racing the render can only make the cache
            # look older than it is (one render too many), never newer.
            self._bodies.clear()
            self._rendered_version = version

    def _render(self, encoder: Encoder, content_type: str, gzipped: bool) -> bytes:
        if gzipped:
            plain = self._bodies.get((content_type, False))
            if plain is None:
                plain = self._bodies[(content_type, False)] = self._render(encoder, content_type, False)
            return gzip.compress(plain, compresslevel=GZIP_LEVEL)
        body = encoder(self._registry)
        if content_type.startswith(OPENMETRICS):
            body = body.removesuffix(EOF)
        return body


def render_live(registry: CollectorRegistry, accept: str, gzipped: bool) -> bytes:
    """The per-scrape part of a body (ends with `# EOF` in OpenMetrics)."""
    encoder, _ = choose_encoder(accept)
    body = encoder(registry)
    return gzip.compress(body, compresslevel=GZIP_LEVEL) if gzipped else body

"""Scrape bodies: the call metrics rendered once per published version, self-metrics per scrape.

The call metrics change only when a batch is published (or a snapshot restored), and with
tens of thousands of series rendering them takes far longer than serving bytes (seconds on
a busy machine). So they are rendered when they change, in a background thread (the text
format, OpenMetrics plain and gzipped, and every other variant scraped since the last
change), and scrapes get the bytes of the newest complete render: until a change's render
is done, the previous one (never half of each). The self-metrics are few and change
continuously: they are rendered per scrape and appended. In OpenMetrics the cached part is
kept without its `# EOF` line, so the body ends with exactly one (the self-metrics part's).
A gzip body is one gzip stream: the cached part's compressed bytes and a copy of the
compressor's state after them (`zlib` compressor copies), which each scrape continues with
its self-metrics and finishes (a body of two gzip members would be valid RFC 1952, but some
clients, httpx among them, read only the first).
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
Renderer = Callable[[str], bytes | None]
"""The call metrics for a Content-Type (OpenMetrics without `# EOF`), or None to leave the
render to prometheus_client's encoder over the registry."""

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
GZIP_LEVEL: Final = 1
"""Scrape bodies compress about tenfold at level 1; higher levels cost CPU for little more."""
OPENMETRICS: Final = "application/openmetrics-text"
EOF: Final = b"# EOF\n"
PRERENDERED: Final = (("", False), (f"{OPENMETRICS};version=1.0.0", False), (f"{OPENMETRICS};version=1.0.0", True))
"""The variants rendered as soon as the call metrics change, besides those scraped since the
last change: the text format, and OpenMetrics 1.0.0 plain and gzipped (what Prometheus asks)."""
MAX_VARIANTS: Final = 8
"""Variants (Accept header x gzip) kept and re-rendered on each change: a client inventing
Accept headers must not make every commit render dozens of bodies."""


class CachedExposition:
    """The exposition of a registry whose content changes only when `version()` does.

    Holds one complete render (every variant of one version) and swaps in the next one whole
    once it is done, so a scrape always gets a consistent body: the newest complete render,
    which lags a publish by the time its render takes (`rendered()`), or a body guaranteed
    current, waiting for the render if need be (`body()`).
    """

    def __init__(
        self, registry: CollectorRegistry, version: Callable[[], int], renderer: Renderer | None = None
    ) -> None:
        self._source = _Source(registry, renderer)
        self._version = version
        self._lock = threading.Lock()
        self._render = _Render(-1)
        self._prerender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-prerender")

    @property
    def render_version(self) -> int:
        """The version of the newest complete render."""
        return self._render.version

    def changed(self) -> None:
        """The content changed: render it now, off the caller's thread, so that scrapes
        find it ready."""
        self._prerender.submit(self._refresh)

    def rendered(self, accept: str, gzipped: bool, live: bytes) -> bytes | None:
        """The body for this variant from the newest complete render, without waiting; None
        if that variant was never rendered."""
        _, content_type = choose_encoder(accept)
        return self._render.body(content_type, gzipped, live)

    def body(self, accept: str, gzipped: bool, live: bytes) -> bytes:
        """The body for this variant, current as of the latest `version()`."""
        _, content_type = choose_encoder(accept)
        with self._lock:
            self._refresh_locked()
            render = self._render
            body = render.body(content_type, gzipped, live)
            if body is None and render.has_room():
                render.add(accept, gzipped, self._source)
                body = render.body(content_type, gzipped, live)
            if body is None:  # an unusual variant beyond the cache's room: rendered, not kept
                body = _Render.once(accept, gzipped, self._source, live)
        return body

    def _refresh(self) -> None:
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        # Read before rendering: a publish racing the render can only make the render look
        # older than it is (one render too many), never newer.
        version = self._version()
        if version == self._render.version:
            return
        wanted = set(PRERENDERED) | self._render.variants()
        render = _Render(version)
        for accept, gzipped in sorted(wanted):
            render.add(accept, gzipped, self._source)
        self._render = render  # one reference swap: readers see the old render or the new


class _Render:
    """Every variant rendered for one version. Variants are only added, never replaced."""

    def __init__(self, version: int) -> None:
        self.version = version
        self._plain: dict[str, bytes] = {}
        self._gzipped: dict[str, _GzipPrefix] = {}
        self._asked: set[tuple[str, bool]] = set()
        """(Accept header, gzipped) of each variant rendered, to render them again."""

    def variants(self) -> set[tuple[str, bool]]:
        return set(self._asked)

    def has_room(self) -> bool:
        return len(self._asked) < MAX_VARIANTS

    @staticmethod
    def once(accept: str, gzipped: bool, source: _Source, live: bytes) -> bytes:
        render = _Render(-1)
        render.add(accept, gzipped, source)
        _, content_type = choose_encoder(accept)
        body = render.body(content_type, gzipped, live)
        assert body is not None
        return body

    def body(self, content_type: str, gzipped: bool, live: bytes) -> bytes | None:
        if gzipped:
            prefix = self._gzipped.get(content_type)
            return None if prefix is None else prefix.finish(live)
        plain = self._plain.get(content_type)
        return None if plain is None else plain + live

    def add(self, accept: str, gzipped: bool, source: _Source) -> None:
        encoder, content_type = choose_encoder(accept)
        self._asked.add((accept, gzipped))
        plain = self._plain.get(content_type)
        if plain is None:
            plain = self._plain[content_type] = source.render(encoder, content_type)
        if gzipped and content_type not in self._gzipped:
            self._gzipped[content_type] = _GzipPrefix(plain)


class _GzipPrefix:
    """The start of a gzip stream, and the compressor state to continue it from."""

    def __init__(self, body: bytes) -> None:
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
        self._prefix = self._compressor.compress(body)

    def finish(self, rest: bytes) -> bytes:
        compressor = self._compressor.copy()
        return self._prefix + compressor.compress(rest) + compressor.flush()


class _Source:
    """Where the call metrics' bodies come from: the renderer, else the registry's encoder."""

    def __init__(self, registry: CollectorRegistry, renderer: Renderer | None) -> None:
        self._registry = registry
        self._renderer = renderer

    def render(self, encoder: Encoder, content_type: str) -> bytes:
        body = self._renderer(content_type) if self._renderer is not None else None
        if body is not None:
            return body
        body = encoder(self._registry)
        return body.removesuffix(EOF) if content_type.startswith(OPENMETRICS) else body


def render_live(registry: CollectorRegistry, accept: str) -> bytes:
    """The per-scrape part of a body (ends with `# EOF` in OpenMetrics)."""
    encoder, _ = choose_encoder(accept)
    return encoder(registry)

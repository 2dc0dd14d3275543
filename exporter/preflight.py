"""`bem-exporter check`: try what `run` needs and say what is wrong."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from exporter.app import bem_client
from exporter.bem.client import ApiError, ListQuery
from exporter.config import Settings
from exporter.redact import safe_url


async def check(settings: Settings) -> int:
    """Reach the API and the OTLP endpoint; say what is wrong."""
    print("settings: ok")
    healthy = True
    async with bem_client(settings.api, max_attempts=2) as client:
        try:
            await client.list_calls(ListQuery(limit=1))
            print(f"api: ok ({safe_url(settings.api.url)}, {settings.api.version})")
        except ApiError as error:
            print(f"api: FAILED ({safe_url(settings.api.url)}): {error}")
            healthy = False
    if settings.traces.exporter != "otlp":
        print(f"traces: exporter {settings.traces.exporter}")
    elif _reachable(settings.traces.endpoint):
        print(f"otlp: reachable ({settings.traces.protocol} {safe_url(settings.traces.endpoint)})")
    else:
        print(f"otlp: UNREACHABLE ({settings.traces.protocol} {safe_url(settings.traces.endpoint)})")
        healthy = False
    return 0 if healthy else 1


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False

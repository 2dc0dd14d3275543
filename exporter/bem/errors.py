"""What a failed request to bem means, in words that name the cause: a rejected key, a host
name that does not resolve, an answer that is malformed or too large, or no answer at all.

`check`, `once` and the poll loop's health lines all say it the same way.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Literal
from urllib.parse import urlsplit

from exporter.bem.client import ApiError

Cause = Literal["key_rejected", "unresolved_host", "unreachable", "malformed", "too_large", "rejected"]


def cause_of(error: ApiError, *, host_resolves: bool = True) -> Cause:
    if error.kind == "rejected" and error.status in (401, 403):
        return "key_rejected"
    if error.kind == "unreachable" and not host_resolves:
        return "unresolved_host"
    return error.kind


def describe(error: ApiError, host: str | None = None, *, host_resolves: bool = True) -> str:
    """One line naming the cause; never the key (the client's messages carry none)."""
    cause = cause_of(error, host_resolves=host_resolves)
    if cause == "key_rejected":
        return f"the API key was rejected (HTTP {error.status}); check BEM_API_KEY or BEM_API_KEY_FILE"
    if cause == "unresolved_host":
        return f"the host name {host!r} does not resolve; check BEM_API_URL"
    return str(error)


def api_host(url: str) -> str | None:
    return urlsplit(url).hostname


async def resolves(host: str | None) -> bool:
    """Whether `host` has an address; a name server that is itself down counts as resolving
    (the failure is then reported as what the client saw)."""
    if host is None:
        return True
    try:
        await asyncio.get_running_loop().getaddrinfo(host, None)
    except socket.gaierror as error:
        return error.errno not in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME))
    return True

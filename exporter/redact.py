"""One redactor for everything that leaves the process as text: URLs and free-form messages.

A URL is shown as scheme, host, port and path: userinfo (a password), query and fragment (a
presigned signature, a token) may carry secrets and never appear. Free-form text (an error
message from bem, an exception's text) has every URL in it cut down the same way, known
secrets masked, and its length bounded.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from urllib.parse import urlsplit

MASK = "***"
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def safe_url(url: str) -> str:
    """`url` without userinfo, query or fragment; what cannot be parsed is masked whole."""
    if "://" not in url:
        # "user:pw@host" would parse as scheme "user" and path "pw@host": read it as an authority.
        url = "//" + url
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return MASK
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    shown = f"{host}{port}{parts.path}"
    return f"{parts.scheme}://{shown}" if parts.scheme else shown


def redact_text(text: str, secrets: Iterable[str] = (), limit: int | None = None) -> str:
    """`text` with URLs made safe, each of `secrets` masked, and at most `limit` characters."""
    text = _URL.sub(lambda match: safe_url(match.group(0)), text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text if limit is None else text[:limit]


MAX_NAME_LENGTH = 128
"""Longest name or kind from the API kept as a label value, span name or attribute."""


def safe_name(value: str) -> str:
    """A name, type or kind from the API made safe to become a label value, span name or
    attribute: free text like any message (URLs cut down), and bounded. Every such string
    passes here before it is stored or exported."""
    return redact_text(value, limit=MAX_NAME_LENGTH)


def error_text(error: BaseException, secrets: Iterable[str] = (), limit: int = 300) -> str:
    """An unexpected exception as `Type: message`, redacted like any free text: what a bug
    report needs, and nothing a log must not hold."""
    return redact_text(f"{type(error).__name__}: {error}", secrets, limit)


def error_stack(error: BaseException) -> str:
    """Where an unexpected exception was raised: its traceback's frames without its message,
    which may quote data that must not leak (`error_text` gives the message, redacted)."""
    return "".join(traceback.format_tb(error.__traceback__))

"""One redactor for everything that leaves the process as text: URLs, free-form messages, and
the names, types, statuses and kinds bem sends.

A URL is shown as scheme, host, port and path: userinfo (a password), query and fragment (a
presigned signature, a token) may carry secrets and never appear. Free-form text (an error
message from bem, an exception's text) has every URL in it cut down the same way, every token
masked, known secrets masked, and its length bounded.

What a "token" is (masked as `***` wherever it appears in text):

- the value of a credential-named key, `key=value` or `key: value`, where the key names a
  password, secret, token, API or access key, credential, signature, session or cookie
  (`api_key=...`, `X-Amz-Security-Token: ...`, `client_secret="..."`);
- the credential after an HTTP authorization scheme (`Bearer ...`, `Basic ...`): a word of at
  least 8 characters with a digit, a base64 sign or a lower-to-upper case change;
- a credential of a well-known format: a JWT (`eyJ...`), an AWS access key id (`AKIA...`), a
  key with a vendor's prefix (`sk-...`, `sk_live_...`, `ghp_...`, `github_pat_...`, `glpat-...`,
  `xoxb-...`, `AIza...`), a PEM private key;
- any other random-looking run of at least 40 letters, digits and `+/=_-`: upper and lower
  case and digits all present, the character class changing between at least 40 % of
  neighbours (a random base-62 or base-64 string changes about 60 % of the time, a camel-case
  or snake-case name about 25 %).

Identifiers are not tokens: bem's ids (a prefix and a 27-character KSUID) and UUIDs are shorter
than 40 characters, and hex digests have a single case, so names that embed them stay readable.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterable
from itertools import pairwise
from typing import Final
from urllib.parse import urlsplit

MASK: Final = "***"
_URL = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*+://[^\s\"'<>]+")
"""A URL: the scheme starts where a run of scheme characters starts (the look-behind keeps the
scan linear: a long word is not tried again from each of its letters)."""

_CREDENTIAL_WORDS = (
    r"pass|pwd|secret|token|api.?key|access.?key|private.?key|credential|signature|session|cookie|authori[sz]ation"
)
_CREDENTIAL_WORD = re.compile(_CREDENTIAL_WORDS)
"""Searched in the lower-cased text first: a case-insensitive alternation costs ten times as
much in Python's `re`, so the full scan below runs only where this finds something."""
_SCHEME = r"(?:[Bb]earer|BEARER|[Bb]asic|BASIC|[Dd]igest|[Tt]oken)"
_ASSIGNMENT = re.compile(
    # The key, its separator and an authorization scheme are kept; the value is the token.
    rf"(?P<kept>\b(?=[\w.-]*?(?i:{_CREDENTIAL_WORDS}))[\w.-]++\"?\s*[:=]\s*(?:{_SCHEME}\s+)?)"
    r"(?:\"[^\"]*\"?|'[^']*'?|[^\s,;&\"']+)"
)
_SHAPE_HINT = re.compile(
    r"[Bb]earer|BEARER|[Bb]asic|BASIC|eyJ|A[KSGIRNP][A-Z]A|sk-|k_live_|k_test_|gh[pousr]_|github_pat_|glpat-|xox|AIza"
    r"|-----BEGIN"
)
_SHAPES = re.compile(
    "|".join(
        (
            # A word after the scheme is a credential when it has the look of one: a digit, a
            # base64 sign, or a change from lower to upper case ("Basic extraction" is prose).
            r"(?P<kept>\b(?:[Bb]earer|BEARER|[Bb]asic|BASIC)\s+)"
            r"(?=[A-Za-z0-9._~+/=-]*(?:\d|[+/=]|[a-z][A-Z]))[A-Za-z0-9._~+/=-]{8,}",
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?",
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b",
            r"\b(?:sk-(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}|[srp]k_(?:live|test)_[A-Za-z0-9]{10,}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[A-Za-z0-9_-]{30,})",
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)",
        )
    )
)
RANDOM_RUN_LENGTH: Final = 40
"""Shortest run of letters and digits that may be masked as random (bem's ids are 30)."""
_RUN = re.compile(rf"[A-Za-z0-9+/=_-]{{{RANDOM_RUN_LENGTH},}}")
_CLASS_CHANGE_SHARE: Final = 0.4
_DIGIT = re.compile(r"\d")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LAST_WORD = re.compile(r"\S+$")
_PRECUT_FACTOR: Final = 4


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
    """`text` with URLs made safe, tokens and each of `secrets` masked, at most `limit`
    characters. A text far over `limit` is cut to a few times it before any scan, so that a
    megabyte costs no regex pass."""
    cut = limit is not None and len(text) > limit * _PRECUT_FACTOR
    if cut and limit is not None:
        text = text[: limit * _PRECUT_FACTOR]
    if "://" in text:
        text = _URL.sub(lambda match: safe_url(match.group(0)), text)
    text = mask_tokens(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    if limit is None:
        return text
    if cut and len(text) <= limit:
        # Redaction shrank the text enough to show its end, where the cut fell inside a word:
        # that half word could be half a token, too short to be recognised. It goes.
        text = _LAST_WORD.sub("", text)
    return text[:limit]


def mask_tokens(text: str) -> str:
    """`text` with every token (see the module's docstring) replaced by `***`: credential
    assignments, then known shapes, then what is left of random-looking runs. Each full scan
    runs only where a cheap search found a hint of it: most names have none."""
    if ("=" in text or ":" in text) and _CREDENTIAL_WORD.search(text.lower()):
        text = _ASSIGNMENT.sub(_masked, text)
    if _SHAPE_HINT.search(text):
        text = _SHAPES.sub(_masked, text)
    return _RUN.sub(_masked_run, text) if len(text) >= RANDOM_RUN_LENGTH else text


def _masked(match: re.Match[str]) -> str:
    return (match.group("kept") or "") + MASK


def _masked_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return MASK if looks_random(run) else run


def looks_random(run: str) -> bool:
    """Whether a run of letters and digits looks like a generated secret rather than a name."""
    mixed_case = run.lower() != run != run.upper()
    if not mixed_case or _DIGIT.search(run) is None:
        return False
    classes = [_class(c) for c in run if c.isalnum()]
    changes = sum(1 for a, b in pairwise(classes) if a != b)
    return changes >= _CLASS_CHANGE_SHARE * (len(classes) - 1)


def _class(char: str) -> int:
    return 0 if char.isdigit() else 1 if char.isupper() else 2


MAX_NAME_LENGTH: Final = 128
"""Longest name or kind from the API kept as a label value, span name or attribute."""
_CACHE_LIMIT: Final = 8192
"""Distinct names remembered: names repeat (a few hundred workflows and functions), so a hit
costs one dict lookup; a stream of distinct hostile names empties it now and then."""
_CACHEABLE_LENGTH: Final = MAX_NAME_LENGTH * 4
"""Longer raw values are redacted each time and not kept: the cache must not hold megabytes."""
_names: dict[str, str] = {}
_clean: set[str | None] = {None}
"""Values `safe_name` returned unchanged: `known_safe` checks a whole list of records' names
against it in one C-level call, so a page of familiar names costs no Python call per name."""


def safe_name(value: str) -> str:
    """A name, type, status, kind or shown id from the API made safe to become a label value,
    span name or attribute: free text like any message (URLs cut down, tokens masked),
    control characters as spaces, at most `MAX_NAME_LENGTH` characters. Every such string
    passes here, at decoding, before anything stores or exports it."""
    known = _names.get(value)
    if known is not None:
        return known
    safe = _CONTROL.sub(" ", redact_text(value, limit=MAX_NAME_LENGTH))
    if len(value) <= _CACHEABLE_LENGTH:
        if len(_names) >= _CACHE_LIMIT:
            _names.clear()  # a benign race at worst computes a name twice
            _clean.clear()
            _clean.add(None)
        _names[value] = safe
        if safe == value:
            _clean.add(value)
    return safe


def known_safe(values: Iterable[str | None]) -> bool:
    """Whether `safe_name` is known to return each of `values` unchanged (None passes)."""
    return _clean.issuperset(values)


def error_text(error: BaseException, secrets: Iterable[str] = (), limit: int = 300) -> str:
    """An unexpected exception as `Type: message`, redacted like any free text: what a bug
    report needs, and nothing a log must not hold."""
    return redact_text(f"{type(error).__name__}: {error}", secrets, limit)


def error_stack(error: BaseException) -> str:
    """Where an unexpected exception was raised: its traceback's frames without its message,
    which may quote data that must not leak (`error_text` gives the message, redacted)."""
    return "".join(traceback.format_tb(error.__traceback__))

"""Encoders that accept any string: the one place outputs turn text into bytes (DESIGN §7).

Event data is hostile: a JSON body may carry a lone UTF-16 surrogate as an escape
(`"\\udc80"`), which decodes to a Python `str` that UTF-8 cannot encode. Every output
(plan lines, dead letters, webhook bodies, forwarded messages, email, logs) goes through
these functions, so no event can make an encoder raise and lose what it was writing.

- JSON outputs keep the string exactly: a lone surrogate is written as its `\\uXXXX`
  escape, which is valid JSON (RFC 8259 §7) and decodes back to the same `str`.
- Plain-text outputs (an email subject, a header) cannot carry an escape: a lone surrogate
  becomes U+FFFD, the replacement character.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["dumps", "dumps_bytes", "text_bytes", "utf8_safe"]

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _escape_surrogates(text: str) -> str:
    return _SURROGATE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dumps(obj: Any, *, indent: int | None = None, default: Any = str) -> str:
    """Compact JSON (or indented), non-ASCII kept as is, lone surrogates escaped.

    `default=str` renders values JSON has no form for (datetimes) as text, so an
    encoder never raises on a value the pipeline produced. No `NaN`: bodies holding one
    are rejected at decode (DESIGN §7), and anything else is rendered as the standard
    library would.
    """
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(
        obj, ensure_ascii=False, separators=separators, indent=indent, default=default
    )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _escape_surrogates(text)
    return text


def dumps_bytes(obj: Any, *, default: Any = str) -> bytes:
    """`dumps` as UTF-8 bytes: always encodable."""
    return dumps(obj, default=default).encode("utf-8")


def utf8_safe(text: str) -> str:
    """The string with lone surrogates replaced by U+FFFD, so UTF-8 can always encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE_RE.sub("\ufffd", text)
    return text


def text_bytes(text: str) -> bytes:
    """UTF-8 bytes of plain text; a lone surrogate becomes U+FFFD."""
    return utf8_safe(text).encode("utf-8")

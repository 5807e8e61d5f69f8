"""Encoders that accept any string: the one place outputs turn text into bytes (DESIGN §7).

Event data is hostile: a JSON body may carry a lone UTF-16 surrogate as an escape
(`"\\udc80"`), which decodes to a Python `str` that UTF-8 cannot encode. Every output
(plan lines, dead letters, webhook bodies, forwarded messages, email, logs) goes through
these functions, so no event can make an encoder raise and lose what it was writing.

- JSON outputs keep the string exactly: a lone surrogate is written as its `\\uXXXX`
  escape, which is valid JSON (RFC 8259 §7) and decodes back to the same `str`.
- Plain-text outputs (an email subject, a header) cannot carry an escape: a lone surrogate
  becomes U+FFFD, the replacement character.
- Depth is no limit either: a body nested as deeply as the decoder accepts (~1,000 levels)
  is past what `json.dumps` can recurse into once the caller's own frames are on the
  stack; such a value is written by an iterative encoder instead, to the same text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from json.encoder import encode_basestring
from typing import Any

__all__ = ["dumps", "dumps_bytes", "nested_deeper_than", "text_bytes", "utf8_safe"]

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
    try:
        text = json.dumps(
            obj, ensure_ascii=False, separators=separators, indent=indent, default=default
        )
    except RecursionError:
        text = _dumps_deep(obj, default)  # compact even when `indent` asked: still JSON
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _escape_surrogates(text)
    return text


class _Text(str):
    """Literal JSON text on `_dumps_deep`'s stack (as opposed to a value to encode)."""

    __slots__ = ()


_OPEN = {dict: _Text("{"), list: _Text("[")}
_COMMA, _CLOSE_MAP, _CLOSE_LIST = _Text(","), _Text("}"), _Text("]")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, int | float):
        return json.dumps(key)
    return str(key)


def _dumps_deep(obj: Any, default: Any) -> str:
    """Compact JSON of any depth, as `json.dumps(ensure_ascii=False)` writes it, without
    recursion (an explicit stack). Only the rare value too deep for `json.dumps` comes here.
    """
    out: list[str] = []
    stack: list[Any] = [obj]
    pop, push, write = stack.pop, stack.append, out.append
    while stack:
        item = pop()
        kind = type(item)
        if kind is _Text:
            write(item)
        elif isinstance(item, str):
            write(encode_basestring(item))
        elif item is None or item is True or item is False or isinstance(item, int | float):
            write(json.dumps(item))
        elif isinstance(item, dict):
            pieces: list[Any] = [_OPEN[dict]]
            for index, (key, value) in enumerate(item.items()):
                if index:
                    pieces.append(_COMMA)
                pieces.append(_Text(encode_basestring(_key(key)) + ":"))
                pieces.append(value)
            pieces.append(_CLOSE_MAP)
            stack.extend(reversed(pieces))
        elif isinstance(item, list | tuple):
            pieces = [_OPEN[list]]
            for index, value in enumerate(item):
                if index:
                    pieces.append(_COMMA)
                pieces.append(value)
            pieces.append(_CLOSE_LIST)
            stack.extend(reversed(pieces))
        else:
            push(default(item))
    return "".join(out)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a JSON value nests past `limit` levels (the value itself is level 1).
    Iterative, so it answers for any depth a decoder accepted."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return False


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

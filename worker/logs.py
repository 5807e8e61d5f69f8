"""structlog set-up: the one place that touches global logging state (DESIGN §6).

Logs go to stderr, JSON lines when stderr is not a terminal (containers) and a readable
console otherwise; stdout is left to each command's own output.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

__all__ = ["configure", "redact"]

_SECRET_WORDS = ("password", "secret", "token", "key", "connection_string", "sas", "signature")
_NOT_SECRET = frozenset({"idempotency_key", "partition_key", "key"})
MASK = "***"


def redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Mask values of fields whose names say they are secrets (before any renderer)."""
    for name in list(event_dict):
        lowered = name.lower()
        if lowered in _NOT_SECRET:
            continue
        if any(word in lowered for word in _SECRET_WORDS) and event_dict[name] is not None:
            event_dict[name] = MASK
    return event_dict


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]|[\ud800-\udfff]")


def _safe_text(text: str) -> str:
    # A lone surrogate cannot be written to a strict stream; a line break in a value would
    # let an event forge a console line. JSON lines escape both on their own.
    return _CONTROL.sub("\ufffd", text.replace("\r\n", " ").replace("\n", " "))


def console_safe(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Console logs only: every string value on one line, encodable (event data is hostile,
    DESIGN §7)."""
    for name, value in event_dict.items():
        if type(value) is str:
            event_dict[name] = _safe_text(value)
    return event_dict


def configure(level: str = "info", fmt: str | None = None) -> None:
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            *(() if fmt == "json" else (console_safe,)),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        # Resolve sys.stderr per logger, not once: it may be swapped (tests, daemons).
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )

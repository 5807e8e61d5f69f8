"""Parse the selector filter an Event Hubs receiver attaches with.

Why its own module: the start position is where a consumer's delivery guarantees begin - the
SDK resumes from a checkpoint with an *offset* filter, `starting_position_inclusive` picks `>`
or `>=`, and a wrong reading silently skips or repeats events. The client sends
`apache.org:selector-filter:string` = `amqp.annotation.x-opt-<field> <op> '<value>'`
(azure-eventhub `_utils.event_position_selector`); `'-1'` is the beginning and `'@latest'` the
end of the partition, whatever the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from worker.devhub.codec import Described

__all__ = [
    "END",
    "SELECTOR_FILTER",
    "START",
    "Position",
    "PositionError",
    "PositionKind",
    "parse_selector",
    "position_from_filters",
]

SELECTOR_FILTER = "apache.org:selector-filter:string"

_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.x-opt-(?P<field>offset|sequence-number|enqueued-time)\s*"
    r"(?P<op>>=|>)\s*'(?P<value>[^']*)'\s*$",
    re.IGNORECASE,
)


class PositionError(ValueError):
    """A filter that names no valid position (Event Hubs: argument-out-of-range)."""


class PositionKind(StrEnum):
    START = "start"
    END = "end"
    OFFSET = "offset"
    SEQUENCE_NUMBER = "sequence-number"
    ENQUEUED_TIME = "enqueued-time"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a receiver starts: `value` is an offset, sequence number or epoch ms."""

    kind: PositionKind
    value: int = 0
    inclusive: bool = False


START = Position(PositionKind.START)
END = Position(PositionKind.END)


def parse_selector(expression: str) -> Position:
    match = _SELECTOR.match(expression)
    if match is None:
        raise PositionError(f"unsupported selector filter {expression!r}")
    raw = match["value"].strip()
    if raw == "-1":
        return START
    if raw == "@latest":
        return END
    try:
        value = int(raw)
    except ValueError:
        raise PositionError(f"{raw!r} is not a valid {match['field']}") from None
    if value < 0:
        raise PositionError(f"{raw!r} is not a valid {match['field']}")
    return Position(PositionKind(match["field"].lower()), value, match["op"] == ">=")


def position_from_filters(filters: Any) -> Position:
    """The position a source's filter set asks for.

    No selector means the start of the partition (the SDK always sends one; other AMQP
    clients reading without a filter get the whole retained stream).
    """
    if not filters:
        return START
    if not isinstance(filters, dict):
        raise PositionError("the source filter set is not a map")
    for key, entry in filters.items():
        if str(key) != SELECTOR_FILTER:
            continue
        expression = entry.value if isinstance(entry, Described) else entry
        if hasattr(expression, "value") and hasattr(expression, "descriptor"):
            expression = expression.value  # proton's own Described
        if isinstance(expression, bytes | memoryview):
            expression = bytes(expression).decode("utf-8")
        if not isinstance(expression, str):
            raise PositionError("the selector filter is not a string")
        return parse_selector(expression)
    return START

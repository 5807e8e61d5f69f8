"""Durations as users write them: `500ms`, `5s`, `1.5m`, `24h`, `7d` or bare seconds.

One syntax for the rules file and the environment (DESIGN §3), kept in one place.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["parse_duration"]

_UNITS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}
_UNITS["d"] = Decimal(86400)
_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)?\s*\Z")


def parse_duration(value: object) -> float:
    """Seconds in a duration; ValueError with a plain message when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value!r} is negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    match = _DURATION_RE.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a duration; write a number with a unit ms, s, m, h or d "
            "(e.g. 500ms, 5s, 24h) or a number of seconds"
        )
    try:
        amount = Decimal(match.group(1))
    except InvalidOperation:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"{value!r} is not a duration") from None
    return float(amount * _UNITS[match.group(2) or "s"])

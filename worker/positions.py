"""Event positions as users write them (DESIGN §6) and as the Event Hubs SDK takes them.

`earliest`, `latest`, `seq:N`, `offset:X`, `time:ISO8601`, optionally per partition
(`0=seq:100,1=time:2024-06-10T00:00:00Z`). Positions given by users are inclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker.events import parse_time

__all__ = ["Position", "PositionKind", "StartPositions", "parse_positions"]


class PositionKind(StrEnum):
    EARLIEST = "earliest"
    LATEST = "latest"
    SEQUENCE = "seq"
    OFFSET = "offset"
    TIME = "time"


@dataclass(frozen=True, slots=True)
class Position:
    kind: PositionKind
    value: Any = None  # int for seq, str for offset, datetime for time

    def sdk(self) -> tuple[Any, bool]:
        """(starting_position, inclusive) for EventHubConsumerClient.receive*."""
        if self.kind is PositionKind.EARLIEST:
            return "-1", False
        if self.kind is PositionKind.LATEST:
            return "@latest", False
        return self.value, True

    def __str__(self) -> str:
        if self.kind in (PositionKind.EARLIEST, PositionKind.LATEST):
            return self.kind.value
        value = self.value.isoformat() if isinstance(self.value, datetime) else self.value
        return f"{self.kind.value}:{value}"


@dataclass(frozen=True, slots=True)
class StartPositions:
    """A default position and per-partition overrides."""

    default: Position
    partitions: dict[str, Position]

    def for_partition(self, partition_id: str) -> Position:
        return self.partitions.get(partition_id, self.default)

    def sdk(self, partition_ids: list[str]) -> tuple[dict[str, Any], dict[str, bool]]:
        positions, inclusive = {}, {}
        for pid in partition_ids:
            positions[pid], inclusive[pid] = self.for_partition(pid).sdk()
        return positions, inclusive


def _parse_one(text: str) -> Position:
    text = text.strip()
    if text in ("earliest", "latest"):
        return Position(PositionKind(text))
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise ValueError(
            f"{text!r} is not a position: use earliest, latest, seq:N, offset:X or time:ISO8601"
        )
    if kind == "seq":
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{text!r}: seq: needs a whole number") from None
        if number < 0:
            raise ValueError(f"{text!r}: sequence numbers start at 0")
        return Position(PositionKind.SEQUENCE, number)
    if kind == "offset":
        return Position(PositionKind.OFFSET, value)
    if kind == "time":
        return Position(PositionKind.TIME, parse_time(value)[0])
    raise ValueError(
        f"{text!r}: unknown position kind {kind!r} (earliest, latest, seq, offset, time)"
    )


def parse_positions(text: str) -> StartPositions:
    """`earliest` or `0=seq:100,1=time:…` (partitions not named take `earliest`)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty position")
    if len(parts) == 1 and "=" not in parts[0]:
        return StartPositions(_parse_one(parts[0]), {})
    partitions = {}
    for part in parts:
        pid, sep, position = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r}: per-partition positions are PARTITION=POSITION")
        partitions[pid.strip()] = _parse_one(position)
    return StartPositions(Position(PositionKind.EARLIEST), partitions)

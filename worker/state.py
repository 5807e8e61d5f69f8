"""What is finished on a partition, and the partition state record format.

`Progress` answers the one question checkpointing needs (DESIGN §5): up to which message is
*everything* finished? A message is unfinished while any of its events is held for
reordering or has actions in flight. The checkpoint is the newest message such that it and
every message before it are finished, so a crash can only repeat work, never skip it.

State records are length-prefixed zlib-compressed JSON documents appended as blocks of one
block blob (see `checkpoints.BlobPartitionStore`): a snapshot, then deltas.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from worker.jsontext import dumps_bytes

__all__ = ["Mark", "Progress", "decode_records", "encode_record"]

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Mark:
    """A position in a partition: what a checkpoint stores."""

    sequence_number: int
    offset: str


class Progress:
    """Per-partition bookkeeping of unfinished messages, keyed by sequence number.

    Messages arrive in sequence order. Each carries a count of unfinished events; events
    restored from saved state (held for reordering when the previous owner stopped) are
    registered with `hold` before their message is read again, so they block the
    checkpoint exactly as they did before the restart.
    """

    def __init__(self, checkpoint: Mark | None = None) -> None:
        self._pending: dict[int, int] = {}  # sequence number -> unfinished events
        self._arrived: deque[Mark] = deque()  # not yet covered by the checkpoint
        self._candidate = checkpoint

    def received(self, mark: Mark, pending: int) -> None:
        """A message arrived; `pending` of its events are not finished yet."""
        if pending:
            self._pending[mark.sequence_number] = (
                self._pending.get(mark.sequence_number, 0) + pending
            )
        if self._candidate is None or mark.sequence_number > self._candidate.sequence_number:
            self._arrived.append(mark)

    def hold(self, sequence_number: int, count: int = 1) -> None:
        """Events of a message not (re-)read yet are unfinished (restored held events)."""
        self._pending[sequence_number] = self._pending.get(sequence_number, 0) + count

    def finished(self, sequence_number: int, count: int = 1) -> None:
        """`count` events of that message are done (dispatched, dropped or dead-lettered)."""
        left = self._pending.get(sequence_number)
        if left is None:
            return
        if left <= count:
            del self._pending[sequence_number]
        else:
            self._pending[sequence_number] = left - count

    @property
    def unfinished(self) -> int:
        return sum(self._pending.values())

    def checkpoint(self) -> Mark | None:
        """The newest mark such that nothing at or before it is unfinished."""
        lowest_open = min(self._pending) if self._pending else None
        arrived = self._arrived
        while arrived and (lowest_open is None or arrived[0].sequence_number < lowest_open):
            self._candidate = arrived.popleft()
        return self._candidate


def encode_record(record: dict[str, Any]) -> bytes:
    # Any event a held or pending record carries is written, whatever its strings or depth.
    payload = zlib.compress(dumps_bytes(record))
    return _LENGTH.pack(len(payload)) + payload


def decode_records(data: bytes) -> Iterator[dict[str, Any]]:
    """Records of a state blob, oldest first; a truncated tail is ignored."""
    position = 0
    while position + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, position)
        start = position + _LENGTH.size
        if start + length > len(data):
            return
        yield json.loads(zlib.decompress(data[start : start + length]))
        position = start + length

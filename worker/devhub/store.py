"""Hubs, partitions, retention and the optional on-disk log.

Why this shape: a partition is an append-only sequence, so it is kept as parallel lists
(ready-to-send consumer payloads, offsets, enqueued times) that binary searches turn into start
positions. Offsets are Event Hubs-like: the decimal string of the record's byte position in
the partition's log (the same number whether or not a data dir is used), so they are
increasing but not contiguous, and code that confuses offsets with sequence numbers fails here
as it would against the service.

Persistence (`data_dir`): one directory per hub with `hub.json` (name, partition count,
creation time) and one append-only `<partition>.log` per partition. A delivery's records are
written with a single unbuffered write before the producer's delivery is settled, so an
Accepted event is in the OS's hands and survives a SIGKILL of the server (not a power cut: no
fsync). Each record carries a CRC; a torn tail is cut off on the next start.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog

from worker.devhub.message import InboundEvent, consumer_payload
from worker.devhub.partitioning import partition_index
from worker.devhub.position import Position, PositionError, PositionKind
from worker.errors import ConfigError

__all__ = ["Hub", "Partition", "PartitionProperties", "Store"]

log = structlog.get_logger(__name__)

# payload length, CRC-32 of (sequence number, enqueued ms, payload), sequence number, enqueued ms
_RECORD = struct.Struct(">IIqq")
_STAMP = struct.Struct(">qq")
_HUB_FILE = "hub.json"
_LOCK_FILE = ".lock"
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PartitionProperties:
    """What `$management` reports for a partition (Event Hubs' field semantics)."""

    hub: str
    partition_id: str
    begin_sequence_number: int
    last_enqueued_sequence_number: int  # -1 when empty
    last_enqueued_offset: str  # "-1" when empty
    last_enqueued_time_ms: int  # 0 when empty
    is_empty: bool


@dataclass(eq=False, slots=True)
class Partition:
    """One partition: events in order, listeners to wake when more arrive."""

    hub: str
    partition_id: str
    payloads: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    enqueued_ms: list[int] = field(default_factory=list)
    next_offset: int = 0
    log_file: IO[bytes] | None = None
    listeners: set[Callable[[], None]] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.payloads)

    def append(self, events: list[InboundEvent]) -> None:
        """Enqueue events (written through to the log first, if any), then wake listeners."""
        now_ms = max(int(time.time() * 1000), self.enqueued_ms[-1] if self.enqueued_ms else 0)
        sequence_number = len(self.payloads)
        offset = self.next_offset
        payloads: list[bytes] = []
        offsets: list[int] = []
        records = bytearray()
        for event in events:
            payload = consumer_payload(event, sequence_number, offset, now_ms)
            stamp = _STAMP.pack(sequence_number, now_ms)
            crc = zlib.crc32(payload, zlib.crc32(stamp))
            records += _RECORD.pack(len(payload), crc, sequence_number, now_ms)
            records += payload
            payloads.append(payload)
            offsets.append(offset)
            offset += _RECORD.size + len(payload)
            sequence_number += 1
        if self.log_file is not None:
            try:
                _write_all(self.log_file, bytes(records))
            except OSError:
                # Leave no partial record behind: later appends would sit after it, unreadable.
                with contextlib.suppress(OSError):
                    os.ftruncate(self.log_file.fileno(), self.next_offset)
                raise
        self.payloads += payloads
        self.offsets += offsets
        self.enqueued_ms += [now_ms] * len(payloads)
        self.next_offset = offset
        for wake in list(self.listeners):
            wake()

    def start_index(self, position: Position) -> int:
        """Index of the first event a receiver at `position` gets; PositionError if invalid."""
        count = len(self.payloads)
        kind, value = position.kind, position.value
        if kind is PositionKind.START:
            return 0
        if kind is PositionKind.END:
            return count
        if kind is PositionKind.SEQUENCE_NUMBER:
            index = value if position.inclusive else value + 1
            if index > count:
                raise PositionError(
                    f"sequence number {value} is beyond the end of partition "
                    f"{self.partition_id}: the last sequence number is {count - 1}"
                )
            return index
        if kind is PositionKind.OFFSET:
            beyond = value > self.next_offset or (
                not position.inclusive and value >= self.next_offset
            )
            if beyond:
                last = self.offsets[-1] if self.offsets else -1
                raise PositionError(
                    f"offset {value} is beyond the end of partition {self.partition_id}: "
                    f"the last offset is {last}"
                )
            find = bisect.bisect_left if position.inclusive else bisect.bisect_right
            return find(self.offsets, value)
        find = bisect.bisect_left if position.inclusive else bisect.bisect_right
        return find(self.enqueued_ms, value)

    def properties(self) -> PartitionProperties:
        count = len(self.payloads)
        return PartitionProperties(
            hub=self.hub,
            partition_id=self.partition_id,
            begin_sequence_number=0,
            last_enqueued_sequence_number=count - 1,
            last_enqueued_offset=str(self.offsets[-1]) if count else "-1",
            last_enqueued_time_ms=self.enqueued_ms[-1] if count else 0,
            is_empty=count == 0,
        )

    def load(self, path: Path) -> None:
        """Read a partition log into memory, cutting off a torn or corrupt tail."""
        data = path.read_bytes() if path.exists() else b""
        pos = 0
        while pos + _RECORD.size <= len(data):
            length, crc, sequence_number, enqueued_ms = _RECORD.unpack_from(data, pos)
            end = pos + _RECORD.size + length
            if end > len(data) or sequence_number != len(self.payloads):
                break
            payload = data[pos + _RECORD.size : end]
            if zlib.crc32(payload, zlib.crc32(_STAMP.pack(sequence_number, enqueued_ms))) != crc:
                break
            self.payloads.append(payload)
            self.offsets.append(pos)
            self.enqueued_ms.append(enqueued_ms)
            pos = end
        if pos < len(data):
            log.warning(
                "devhub_log_tail_discarded",
                hub=self.hub,
                partition_id=self.partition_id,
                path=str(path),
                kept_bytes=pos,
                discarded_bytes=len(data) - pos,
            )
            with path.open("r+b") as f:
                f.truncate(pos)
        self.next_offset = pos


def _write_all(f: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = f.write(view)
        if written is None:  # pragma: no cover - only for non-blocking files
            continue
        view = view[written:]


@dataclass(eq=False, slots=True)
class Hub:
    """An event hub: fixed partitions, a creation time, a round-robin cursor."""

    name: str
    created_at_ms: int
    partitions: dict[str, Partition]
    _round_robin: Iterator[int] = field(default_factory=itertools.count)

    def partition_for_key(self, partition_key: str | None) -> Partition:
        """The partition a hub-addressed send lands in: by key hash, else round-robin."""
        ids = list(self.partitions)
        if partition_key is None:
            return self.partitions[ids[next(self._round_robin) % len(ids)]]
        return self.partitions[ids[partition_index(partition_key, len(ids))]]


class Store:
    """Every hub dev-hub serves; opened once per server start, closed on stop."""

    def __init__(self, hubs: Mapping[str, int], data_dir: Path | None = None) -> None:
        self._spec = dict(hubs)
        self._data_dir = data_dir
        self._hubs: dict[str, Hub] = {}
        self._lock: IO[bytes] | None = None

    @property
    def hubs(self) -> list[Hub]:
        return list(self._hubs.values())

    def hub(self, name: str) -> Hub | None:
        """Look a hub up by name, case-insensitively (as Event Hubs does)."""
        return self._hubs.get(name.casefold())

    def open(self) -> None:
        """Create or load every hub; ConfigError if the data dir disagrees or is in use."""
        seen: set[str] = set()
        for name in self._spec:
            if name.casefold() in seen:
                raise ConfigError(f"hub {name!r} is given more than once")
            seen.add(name.casefold())
        try:
            if self._data_dir is not None:
                self._data_dir.mkdir(parents=True, exist_ok=True)
                self._lock = _lock_dir(self._data_dir)
            for name, count in self._spec.items():
                self._hubs[name.casefold()] = self._open_hub(name, count)
        except OSError as exc:
            self.close()
            raise ConfigError(f"cannot use data dir {self._data_dir}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _open_hub(self, name: str, count: int) -> Hub:
        now_ms = int(time.time() * 1000)
        if self._data_dir is None:
            partitions = {str(i): Partition(name, str(i)) for i in range(count)}
            return Hub(name, now_ms, partitions)
        hub_dir = self._data_dir / name.casefold()
        meta_path = hub_dir / _HUB_FILE
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text("utf-8"))
                stored_count = int(meta["partitions"])
                created_at_ms = int(meta["created_at_ms"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{meta_path} is not a dev-hub hub file: {exc}") from exc
            if stored_count != count:
                raise ConfigError(
                    f"hub {name!r} in {self._data_dir} has {stored_count} partitions, but "
                    f"{count} were asked for; a hub's partition count is fixed at creation - "
                    f"ask for {name}:{stored_count} or use another --data-dir"
                )
        else:
            hub_dir.mkdir(parents=True, exist_ok=True)
            created_at_ms = now_ms
            meta = {
                "version": _FORMAT_VERSION,
                "name": name,
                "partitions": count,
                "created_at_ms": created_at_ms,
            }
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
            tmp.replace(meta_path)
        partitions: dict[str, Partition] = {}
        for i in range(count):
            partition = Partition(name, str(i))
            path = hub_dir / f"{i}.log"
            partition.load(path)
            partition.log_file = path.open("ab", buffering=0)
            partitions[str(i)] = partition
        log.info(
            "devhub_hub_loaded",
            hub=name,
            partitions=count,
            events=sum(len(p) for p in partitions.values()),
            data_dir=str(hub_dir),
        )
        return Hub(name, created_at_ms, partitions)

    def close(self) -> None:
        for hub in self._hubs.values():
            for partition in hub.partitions.values():
                partition.listeners.clear()
                if partition.log_file is not None:
                    partition.log_file.close()
                    partition.log_file = None
        self._hubs.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _lock_dir(data_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the data dir: two servers appending to one log corrupt it."""
    handle = (data_dir / _LOCK_FILE).open("a+b")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            f"data dir {data_dir} is in use by another dev-hub; stop it or use another --data-dir"
        ) from None
    with contextlib.suppress(OSError):
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
    return handle

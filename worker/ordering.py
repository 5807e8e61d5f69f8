"""Per-partition deduplication and reordering (DESIGN §4), pure and deterministic.

Event Grid delivers at least once and in no particular order, so a partition's events pass
through one `Sequencer`: duplicates (same topic and id within the dedupe window) are dropped,
the rest wait until the watermark (greatest event time seen - grace) passes them and then
come out in per-object sequencer order; an event not newer than the last one released for
the same object and type is stale.

All windows are measured in *event time* against the greatest event time seen, never against
a clock, so replaying the same input gives the same output. The one wall-clock input, `now`
(used by `run` so a quiet partition does not sit on its last events), is passed in.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import total_ordering
from typing import Any

from worker.events import (
    MISSING,
    Event,
    Origin,
    fold_topic,
    fold_type,
    lookup_key,
    restore_event,
    ticks_of,
)
from worker.jsontext import dumps_bytes

__all__ = ["OrderingConfig", "Released", "Sequencer", "sequencer_key"]

TICKS_PER_SECOND = 10_000_000
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class OrderingConfig:
    grace_s: float = 5.0
    max_skew_s: float = 300.0
    dedupe_window_s: float = 86_400.0
    max_ids: int = 1_000_000

    @property
    def grace_ticks(self) -> int:
        return round(self.grace_s * TICKS_PER_SECOND)

    @property
    def max_skew_ticks(self) -> int:
        return round(self.max_skew_s * TICKS_PER_SECOND)

    @property
    def window_ticks(self) -> int:
        return round(self.dedupe_window_s * TICKS_PER_SECOND)


@dataclass(frozen=True, slots=True)
class Released:
    """An event leaving the reorder buffer; `late` = stale (DESIGN §4).

    `effective` is its clamped event time (ticks): every later use of event time (the
    throttle's clock) takes this one, so a wrongly dated event cannot move any clock.
    `error`: judging it raised (it left the buffer all the same, DESIGN §7): the pipeline
    dead-letters it instead of matching it.
    """

    event: Event
    late: bool
    effective: int
    error: str | None = None


@total_ordering
class _Padded:
    """A `data.sequencer` string, compared left-padded with '0' to equal length."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def _pair(self, other: _Padded) -> tuple[str, str]:
        width = max(len(self.text), len(other.text))
        return self.text.rjust(width, "0"), other.text.rjust(width, "0")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Padded):
            return NotImplemented
        a, b = self._pair(other)
        return a == b

    def __lt__(self, other: _Padded) -> bool:
        a, b = self._pair(other)
        return a < b

    def __hash__(self) -> int:
        return hash(self.text.lstrip("0"))


SeqKey = tuple[int, Any]  # (0, time ticks) or (1, _Padded): kinds never interleave


# Which key of a data object lookup_key(data, "sequencer") finds when none is spelled exactly
# so, per layout (the object's keys, in order): the events of one type share a layout, and
# one lookup of it is cheaper than case-folding its keys for every event.
_SEQUENCER_IN: dict[tuple[str, ...], str | None] = {}
_LAYOUT_MAX_KEYS = 32


def _data_sequencer(data: dict[str, Any]) -> Any:
    if "sequencer" in data:
        return data["sequencer"]
    if len(data) > _LAYOUT_MAX_KEYS:
        return lookup_key(data, "sequencer")
    layout = tuple(data)
    name = _SEQUENCER_IN.get(layout, MISSING)
    if name is MISSING:
        name = next((k for k in layout if isinstance(k, str) and k.casefold() == "sequencer"), None)
        if len(_SEQUENCER_IN) >= 4096:
            _SEQUENCER_IN.clear()
        _SEQUENCER_IN[layout] = name
    return MISSING if name is None else data[name]


def sequencer_key(event: Event, effective: int | None = None) -> SeqKey:
    """`data.sequencer` when present, else the event time (DESIGN §4) — its clamped time
    (`effective`) when given, as every use of event time is (DESIGN §7): an event dated
    far ahead cannot make its object's next events stale."""
    data = event.data
    if isinstance(data, dict):
        sequencer = _data_sequencer(data)
        if isinstance(sequencer, str | int) and not isinstance(sequencer, bool):
            return (1, _Padded(str(sequencer)))
    return (0, event.time_ticks if effective is None else effective)


def _dump_key(key: SeqKey) -> list[Any]:
    return [key[0], key[1].text if key[0] == 1 else key[1]]


def _load_key(raw: list[Any]) -> SeqKey:
    return (1, _Padded(raw[1])) if raw[0] == 1 else (0, int(raw[1]))


@dataclass(slots=True)
class _Held:
    effective: int
    arrival: int
    event: Event
    arrived_at: int | None  # wall clock (ticks) when it arrived, if known
    released: bool = field(default=False)

    def __lt__(self, other: _Held) -> bool:
        return (self.effective, self.arrival) < (other.effective, other.arrival)


# The reorder heap holds (effective, arrival, held): tuples compare in C, and `arrival` is
# unique, so a `_Held` itself is never compared there.
_Entry = tuple[int, int, _Held]


class Sequencer:
    """Dedupe and reorder state of one partition. Not thread-safe; one per partition."""

    def __init__(self, config: OrderingConfig) -> None:
        self.config = config
        self._grace = config.grace_ticks
        self._window = config.window_ticks
        self._skew = config.max_skew_ticks
        self.max_time: int | None = None
        # Both are purged from the front as the window moves on. An OrderedDict, not a dict:
        # a dict leaves a hole per deleted front entry until it resizes, so finding its first
        # entry costs O(entries purged) and a purge per event made push O(window).
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # (topic key, id) → time
        self._last: OrderedDict[tuple[str, str, str], tuple[SeqKey, int]] = OrderedDict()
        self._heap: list[_Entry] = []
        self._arrivals: deque[_Held] = deque()
        self._counter = 0
        # Change tracking for deltas starts with the first snapshot (a file replay never
        # saves state, so it must not accumulate a change log).
        self._tracking = False
        self._dirty_seen: dict[tuple[str, str], None] = {}
        self._dirty_last: dict[tuple[str, str, str], None] = {}

    # --- inputs -------------------------------------------------------------------------

    def effective_time(self, event: Event) -> int:
        """Event time, clamped to the enqueued time when it is implausibly far ahead."""
        ticks = event.time_ticks
        enqueued = event.origin.enqueued_time
        if enqueued is not None:
            enqueued_ticks = ticks_of(enqueued)
            if ticks > enqueued_ticks + self._skew:
                return enqueued_ticks
        return ticks

    def is_duplicate(self, event: Event) -> bool:
        seen = self._seen.get((fold_topic(event.topic), event.id))
        return seen is not None and (self.max_time is None or seen >= self._cutoff())

    def push(self, event: Event, now: datetime | None = None) -> tuple[bool, list[Released]]:
        """Offer one decoded event: (is it a duplicate?, events released by its arrival).

        All-or-nothing (DESIGN §7: a failure is the event's own, never the partition's):
        whatever can raise is computed before the first change to the state, and judging
        what it releases cannot raise (`_release_until`), so a push that fails left the
        sequencer as it was and one that returns has taken the event.
        """
        key = (fold_topic(event.topic), event.id)
        seen = self._seen
        previous = seen.get(key)
        if previous is not None and (
            self.max_time is None or previous >= self.max_time - self._window
        ):
            return True, []
        effective = self.effective_time(event)
        arrived_at = ticks_of(now) if now else None
        if previous is not None:
            del seen[key]
        seen[key] = effective
        if self._tracking:
            self._dirty_seen[key] = None
        if self.max_time is None or effective > self.max_time:
            self.max_time = effective
        self._forget()
        held = _Held(effective, self._counter, event, arrived_at)
        heapq.heappush(self._heap, (effective, self._counter, held))
        self._counter += 1
        if held.arrived_at is not None:
            self._arrivals.append(held)
        heap = self._heap
        if heap[0][0] > self.max_time - self._grace:
            return False, []
        return False, self._release_until(self.max_time - self._grace)

    def release_waited(self, now: datetime) -> list[Released]:
        """Release what has waited `grace` of wall-clock time (a quiet partition, DESIGN §4)."""
        limit = ticks_of(now) - self._grace
        threshold: int | None = None
        while self._arrivals and self._arrivals[0].arrived_at <= limit:  # type: ignore[operator]
            held = self._arrivals.popleft()
            if not held.released and (threshold is None or held.effective > threshold):
                threshold = held.effective
        return [] if threshold is None else self._release_until(threshold)

    def resume(self, now: datetime) -> None:
        """After a restore, held events wait `grace` of wall-clock time from `now`: they
        came back without their arrival times, and a quiet partition must still release
        them (DESIGN §4)."""
        arrived = ticks_of(now)
        for _, _, held in sorted(self._heap):
            if held.arrived_at is None:
                held.arrived_at = arrived
                self._arrivals.append(held)

    def flush(self) -> list[Released]:
        """Release everything held, in order: the end of a finite source."""
        if not self._heap:
            return []
        return self._release_until(max(entry[0] for entry in self._heap))

    # --- introspection ------------------------------------------------------------------

    @property
    def held(self) -> int:
        return len(self._heap)

    def held_events(self) -> list[Event]:
        return [held.event for _, _, held in sorted(self._heap)]

    def remembers(self, event_id: str) -> bool:
        """Is this id (on any topic) in the dedupe memory? (`history`)"""
        return any(i == event_id for _, i in self._seen)

    @property
    def remembered_ids(self) -> int:
        return len(self._seen)

    @property
    def remembered_objects(self) -> int:
        return len(self._last)

    # --- internals ----------------------------------------------------------------------

    def _cutoff(self) -> int:
        assert self.max_time is not None
        return self.max_time - self._window

    def _forget(self) -> None:
        """Drop ids and last sequencers older than the window; cap ids at max_ids.

        Both dicts are in (roughly) time order because entries move to the end when
        written, so purging from the front is amortised O(1) per event.
        """
        cutoff = self._cutoff()
        seen = self._seen
        max_ids = self.config.max_ids
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= cutoff and len(seen) <= max_ids:
                break
            del seen[oldest]
        last = self._last
        while last:
            oldest_obj = next(iter(last))
            if last[oldest_obj][1] >= cutoff:
                break
            del last[oldest_obj]

    def _release_until(self, watermark: int) -> list[Released]:
        batch: list[_Held] = []
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            held = heapq.heappop(heap)[2]
            held.released = True
            batch.append(held)
        if not batch:
            return []
        # They have left the heap: each must come out judged, whatever judging raises
        # (DESIGN §7), or its message would never finish. `_judge` raises, if ever, before
        # it changes anything; try costs nothing until something does.
        if len(batch) > 1:
            with contextlib.suppress(Exception):  # else time order: the batch is complete
                batch = _per_object_order(batch)
        released = []
        for held in batch:
            try:
                released.append(self._judge(held.event, held.effective))
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                released.append(Released(held.event, False, held.effective, error))
        return released

    def _judge(self, event: Event, effective: int) -> Released:
        """Stale = not newer than the last released event of its object and type.

        An event older than the dedupe window is stale too: its id and its object's last
        sequencer may already be forgotten, so it could be a redelivery we can no longer
        recognise, and repeating an action is worse than flagging it late.
        """
        if self.max_time is not None and effective < self.max_time - self._window:
            return Released(event, True, effective)
        seq = sequencer_key(event, effective)
        slot = (fold_topic(event.topic), event.subject, fold_type(event.type))
        last = self._last
        previous = last.get(slot)
        if previous is not None:
            if not previous[0] < seq:
                return Released(event, True, effective)
            del last[slot]
        last[slot] = (seq, effective)
        if self._tracking:
            self._dirty_last[slot] = None
        return Released(event, False, effective)

    # --- persistence --------------------------------------------------------------------
    #
    # A full snapshot is O(window); a delta is O(what changed since the last export), which
    # is what keeps periodic state saves cheap (DESIGN §4). Restoring = the last snapshot
    # plus every later delta, in order. Held events are always written whole: they are few
    # (a grace window's worth) and must come back exactly.

    def snapshot(self) -> dict[str, Any]:
        """Everything, as a JSON-able record; starts (or resets) the change tracking."""
        self._tracking = True
        self._dirty_seen.clear()
        self._dirty_last.clear()
        return {
            "kind": "snapshot",
            "version": STATE_VERSION,
            "max_time": self.max_time,
            "counter": self._counter,
            "seen": [[t, i, ticks] for (t, i), ticks in self._seen.items()],
            "last": [[*slot, _dump_key(k), ticks] for slot, (k, ticks) in self._last.items()],
            "held": self._held_records(),
        }

    def delta(self) -> dict[str, Any]:
        """What changed since the last snapshot or delta, as a JSON-able record."""
        seen = [[t, i, self._seen[(t, i)]] for (t, i) in self._dirty_seen if (t, i) in self._seen]
        last = [
            [*slot, _dump_key(self._last[slot][0]), self._last[slot][1]]
            for slot in self._dirty_last
            if slot in self._last
        ]
        self._dirty_seen.clear()
        self._dirty_last.clear()
        return {
            "kind": "delta",
            "version": STATE_VERSION,
            "max_time": self.max_time,
            "counter": self._counter,
            "seen": seen,
            "last": last,
            "held": self._held_records(),
        }

    @property
    def changed(self) -> int:
        """How many entries a delta would carry now (to decide when to compact)."""
        return len(self._dirty_seen) + len(self._dirty_last)

    def _held_records(self) -> list[dict[str, Any]]:
        return [
            {
                "raw": h.event.raw,
                "ticks": h.event.time_ticks,
                "origin": h.event.origin.as_dict(),
                "arrival": h.arrival,
            }
            for _, _, h in sorted(self._heap)
        ]

    @classmethod
    def restore(cls, config: OrderingConfig, records: Iterable[dict[str, Any]]) -> Sequencer:
        """Rebuild from a snapshot and the deltas after it (older records are ignored)."""
        sequencer = cls(config)
        for record in records:
            version = record.get("version")
            if not isinstance(version, int) or version > STATE_VERSION:
                raise ValueError(
                    f"partition state has format version {version!r}; this worker reads "
                    f"versions up to {STATE_VERSION}: upgrade the worker"
                )
            if record.get("kind") == "snapshot":
                sequencer._seen.clear()
                sequencer._last.clear()
            sequencer.max_time = record["max_time"]
            sequencer._counter = record["counter"]
            for t, i, ticks in record["seen"]:
                sequencer._seen.pop((t, i), None)
                sequencer._seen[(t, i)] = ticks
            for t, subject, type_, key, ticks in record["last"]:
                sequencer._last.pop((t, subject, type_), None)
                sequencer._last[(t, subject, type_)] = (_load_key(key), ticks)
            sequencer._heap = []
            for item in record["held"]:
                event = restore_event(item["raw"], Origin.from_dict(item["origin"]), item["ticks"])
                held = _Held(sequencer.effective_time(event), item["arrival"], event, None)
                heapq.heappush(sequencer._heap, (held.effective, held.arrival, held))
        if sequencer.max_time is not None:
            sequencer._forget()
        sequencer._dirty_seen.clear()
        sequencer._dirty_last.clear()
        sequencer._tracking = True
        return sequencer

    def to_bytes(self) -> bytes:
        """A compressed snapshot (tests, tools)."""
        return zlib.compress(dumps_bytes(self.snapshot()))  # any string, any depth

    @classmethod
    def from_bytes(cls, config: OrderingConfig, data: bytes) -> Sequencer:
        return cls.restore(config, [json.loads(zlib.decompress(data))])


def _per_object_order(batch: list[_Held]) -> list[_Held]:
    """Keep the batch's time order across objects, but each object's slots in sequencer order.

    With the event time as sequencer this is the identity; with `data.sequencer` it fixes
    objects whose times and sequencers disagree without reshuffling unrelated objects.
    """
    if len(batch) == 1:
        return batch
    slots: dict[tuple[str, str], list[int]] = {}
    for position, held in enumerate(batch):
        slots.setdefault((fold_topic(held.event.topic), held.event.subject), []).append(position)
    if len(slots) == len(batch):
        return batch
    result = list(batch)
    for positions in slots.values():
        if len(positions) < 2:
            continue
        members = sorted(
            (batch[p] for p in positions),
            key=lambda h: (sequencer_key(h.event, h.effective), h.arrival),
        )
        for position, held in zip(positions, members, strict=True):
            result[position] = held
    return result

"""`checkpoints list / export / set`: inspect, snapshot and move a consumer group's checkpoints.

Moving checkpoints is how an operator rewinds the live worker for a backfill. The SDK
resumes from a checkpoint's *offset* only (exclusive), so a `seq:` or `time:` target is
turned into the offset of the event just before it by reading the partition. Rewinding
resets the group's dedupe and order state for those partitions — the rewound events must
be processed again — and keeps its ledger, so non-idempotent actions already done are not
repeated (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.checkpoints import BlobPartitionStore
from worker.errors import ConfigError
from worker.positions import PositionKind, StartPositions
from worker.state import Mark

__all__ = ["PartitionCheckpoint", "list_checkpoints", "resolve_marks", "snapshot_document"]


@dataclass(frozen=True, slots=True)
class PartitionCheckpoint:
    partition_id: str
    mark: Mark | None
    last_modified: datetime | None
    owner: str | None
    owner_active: bool
    last_enqueued: int

    @property
    def lag(self) -> int:
        done = self.mark.sequence_number if self.mark else -1
        return max(0, self.last_enqueued - done)

    def as_dict(self) -> dict[str, Any]:
        return {
            "partition_id": self.partition_id,
            "sequence_number": self.mark.sequence_number if self.mark else None,
            "offset": self.mark.offset if self.mark else None,
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
            "owner": self.owner or None,
            "owner_active": self.owner_active,
            "last_enqueued_sequence_number": self.last_enqueued,
            "lag": self.lag,
        }


async def list_checkpoints(
    store: BlobPartitionStore, client: Any, ownership_expiry_s: float
) -> list[PartitionCheckpoint]:
    partition_ids = await client.get_partition_ids()
    marks: dict[str, Mark] = {}
    for checkpoint in await store.checkpoint_store.list_checkpoints(
        store.fully_qualified_namespace, store.eventhub_name, store.consumer_group
    ):
        marks[checkpoint["partition_id"]] = Mark(
            int(checkpoint["sequence_number"]), str(checkpoint["offset"])
        )
    modified: dict[str, datetime] = {}
    async for blob in store.container.list_blobs(name_starts_with=f"{store.prefix}/checkpoint/"):
        modified[blob.name.rsplit("/", 1)[-1]] = blob.last_modified
    owners = {o["partition_id"]: o for o in await store.list_ownership()}
    now = time.time()
    result = []
    for pid in partition_ids:
        props = await client.get_partition_properties(pid)
        ownership = owners.get(pid, {})
        owner = ownership.get("owner_id") or None
        active = bool(owner) and now - float(ownership.get("last_modified_time") or 0) < (
            ownership_expiry_s
        )
        result.append(
            PartitionCheckpoint(
                pid,
                marks.get(pid),
                modified.get(pid),
                owner,
                active,
                int(props["last_enqueued_sequence_number"]),
            )
        )
    return result


def render_table(rows: list[PartitionCheckpoint]) -> str:
    header = ("partition", "sequence", "offset", "last modified", "owner", "lag")
    table = [header]
    for row in rows:
        data = row.as_dict()
        table.append(
            (
                row.partition_id,
                "-" if data["sequence_number"] is None else str(data["sequence_number"]),
                data["offset"] or "-",
                row.last_modified.strftime("%Y-%m-%d %H:%M:%S") if row.last_modified else "-",
                (row.owner or "-") + (" (active)" if row.owner_active else ""),
                str(row.lag),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def snapshot_document(store: BlobPartitionStore, rows: list[PartitionCheckpoint]) -> dict[str, Any]:
    return {
        "namespace": store.fully_qualified_namespace,
        "eventhub": store.eventhub_name,
        "consumer_group": store.consumer_group,
        "exported_at": datetime.now(UTC).isoformat(),
        "partitions": {
            row.partition_id: {
                "sequence_number": row.mark.sequence_number,
                "offset": row.mark.offset,
            }
            for row in rows
            if row.mark is not None
        },
    }


async def _event_at(client_factory: Any, partition_id: str, position: Any, inclusive: bool) -> Any:
    """The first event at or after a position, or None when there is none."""
    found: list[Any] = []
    done = asyncio.Event()

    async def on_event(context: Any, event: Any) -> None:
        if event is not None and not found:
            found.append(event)
        done.set()

    client = client_factory()
    async with client:
        task = asyncio.ensure_future(
            client.receive(
                on_event,
                partition_id=partition_id,
                starting_position=position,
                starting_position_inclusive=inclusive,
                max_wait_time=3,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
        await client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return found[0] if found else None


async def resolve_marks(
    client: Any, client_factory: Any, partition_ids: list[str], target: StartPositions
) -> dict[str, Mark]:
    """The checkpoint that makes each partition resume at `target` (inclusive)."""
    marks = {}
    for pid in partition_ids:
        props = await client.get_partition_properties(pid)
        begin = int(props["beginning_sequence_number"])
        last = int(props["last_enqueued_sequence_number"])
        position = target.for_partition(pid)
        if position.kind is PositionKind.LATEST or (props.get("is_empty") and last >= 0):
            offset = "-1" if props.get("is_empty") else str(props["last_enqueued_offset"])
            marks[pid] = Mark(last, offset)
            continue
        if position.kind is PositionKind.EARLIEST:
            marks[pid] = Mark(begin - 1, "-1")
            continue
        start, inclusive = position.sdk()
        first = await _event_at(client_factory, pid, start, inclusive)
        if first is None:  # past the end: resume after the last event
            marks[pid] = Mark(last, str(props["last_enqueued_offset"]))
            continue
        seq = int(first.sequence_number)
        if seq <= begin:
            marks[pid] = Mark(begin - 1, "-1")
            continue
        before = await _event_at(client_factory, pid, seq - 1, True)
        if before is None or int(before.sequence_number) != seq - 1:
            raise ConfigError(f"partition {pid}: cannot read event {seq - 1} to find its offset")
        marks[pid] = Mark(seq - 1, str(before.offset))
    return marks


def read_snapshot(path: str) -> dict[str, Mark]:
    try:
        document = json.loads(open(path, encoding="utf-8").read())  # noqa: SIM115
        return {
            str(pid): Mark(int(mark["sequence_number"]), str(mark["offset"]))
            for pid, mark in document["partitions"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read checkpoint snapshot {path}: {exc}") from None

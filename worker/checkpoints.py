"""Checkpoints, partition state and dead letters in one blob container (DESIGN §4, §5).

Checkpoints and ownership stay in the SDK's own layout and are written through the SDK's
`BlobCheckpointStore`, so KEDA and the SDK's processors read them. Next to them, under the
same lower-cased prefix `<fqns>/<hub>/<consumergroup>/`:

- `state/<partition>` — one block blob per partition holding a snapshot record followed by
  delta records (see `state.encode_record`). A save stages one block with what changed and
  commits the block list with `If-Match` on the ETag of our previous commit. The commit is
  atomic, costs O(what changed), and fences out a previous owner: once the new owner has
  committed, an old owner's late save fails instead of overwriting newer state.
- `deadletter/<partition>/<sequence number>-<what>.json` — the dead letters of one message
  (or of one release of held events) in one blob, named by its coordinates so re-reading the
  same message after a crash overwrites, not duplicates: one record (a JSON object, as every
  dead letter was before batching) or several (`…-batch-<digest>.json`, a JSON array). One
  write per message however many invalid elements it holds (DESIGN §7). Readers take both.

Why state is written *before* the checkpoint: state saved at message M records every event
finished or held up to M; the checkpoint C ≤ M. A crash between the two leaves an older
checkpoint with newer state: the re-read events are recognised as duplicates (or restored
as held), so nothing is lost or repeated. The reverse order could lose held events.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobBlock, BlockState
from azure.storage.blob.aio import ContainerClient

from worker.errors import CheckpointError
from worker.jsontext import dumps, dumps_bytes, nested_deeper_than, utf8_safe
from worker.state import Mark, decode_records, encode_record

__all__ = ["BlobPartitionStore", "StateFenced", "StateHandle", "encode_dead_letters"]

log = structlog.get_logger(__name__)

MAX_DELTA_BLOCKS = 100


class StateFenced(CheckpointError):
    """Another owner committed state for this partition after we did: stop writing."""

    retryable = False


@dataclass(slots=True)
class StateHandle:
    """What we know of one block-log blob (a partition's state or ledger) between writes."""

    partition_id: str
    blob_name: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None
    blocks: list[str] = field(default_factory=list)
    delta_bytes: int = 0
    snapshot_bytes: int = 0

    @property
    def last(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None


class BlobPartitionStore:
    """Our blobs (state, dead letters) and the SDK checkpoint store, for one consumer group."""

    def __init__(
        self,
        container: ContainerClient,
        checkpoint_store: Any,
        *,
        fully_qualified_namespace: str,
        eventhub_name: str,
        consumer_group: str,
    ) -> None:
        self.container = container
        self.checkpoint_store = checkpoint_store
        self.fully_qualified_namespace = fully_qualified_namespace
        self.eventhub_name = eventhub_name
        self.consumer_group = consumer_group
        self.prefix = f"{fully_qualified_namespace}/{eventhub_name}/{consumer_group}".lower()

    # --- checkpoints (SDK layout) ---------------------------------------------------------

    async def get_checkpoint(self, partition_id: str) -> Mark | None:
        try:
            checkpoints = await self.checkpoint_store.list_checkpoints(
                self.fully_qualified_namespace, self.eventhub_name, self.consumer_group
            )
        except AzureError as exc:
            raise CheckpointError(f"cannot read checkpoints: {exc}") from exc
        for checkpoint in checkpoints:
            if checkpoint["partition_id"] == partition_id:
                return Mark(int(checkpoint["sequence_number"]), str(checkpoint["offset"]))
        return None

    async def update_checkpoint(self, partition_id: str, mark: Mark) -> None:
        try:
            await self._update_checkpoint(partition_id, mark)
        except AzureError as exc:
            raise CheckpointError(
                f"cannot write checkpoint of partition {partition_id}: {exc}"
            ) from exc

    async def _update_checkpoint(self, partition_id: str, mark: Mark) -> None:
        await self.checkpoint_store.update_checkpoint(
            {
                "fully_qualified_namespace": self.fully_qualified_namespace,
                "eventhub_name": self.eventhub_name,
                "consumer_group": self.consumer_group,
                "partition_id": partition_id,
                "offset": mark.offset,
                "sequence_number": mark.sequence_number,
            }
        )

    async def list_ownership(self) -> list[dict[str, Any]]:
        return list(
            await self.checkpoint_store.list_ownership(
                self.fully_qualified_namespace, self.eventhub_name, self.consumer_group
            )
        )

    # --- state --------------------------------------------------------------------------

    def _state_blob(self, partition_id: str) -> str:
        return f"{self.prefix}/state/{partition_id}"

    def _ledger_blob(self, partition_id: str) -> str:
        return f"{self.prefix}/ledger/{partition_id}"

    async def load_state(self, partition_id: str) -> StateHandle:
        return await self._load_log(partition_id, self._state_blob(partition_id))

    async def load_ledger(self, partition_id: str) -> StateHandle:
        return await self._load_log(partition_id, self._ledger_blob(partition_id))

    async def _load_log(self, partition_id: str, blob_name: str) -> StateHandle:
        blob = self.container.get_blob_client(blob_name)
        handle = StateHandle(partition_id, blob_name)
        try:
            downloader = await blob.download_blob()
            data = await downloader.readall()
            handle.etag = downloader.properties.etag
            block_list, _ = await blob.get_block_list("committed")
        except ResourceNotFoundError:
            return handle
        except AzureError as exc:
            raise CheckpointError(f"cannot read {blob_name}: {exc}") from exc
        handle.blocks = [b.id for b in block_list]
        try:
            handle.records = list(decode_records(data))
        except (ValueError, json.JSONDecodeError, zlib.error, RecursionError) as exc:
            log.warning("state_unreadable", blob=blob_name, error=str(exc))
            handle.records = []
        return handle

    async def save_state(
        self, handle: StateHandle, record: dict[str, Any], *, snapshot: bool
    ) -> None:
        """Append `record` (or replace everything with it, for a snapshot) atomically."""
        if not handle.blob_name:
            handle.blob_name = self._state_blob(handle.partition_id)
        await self._append(handle, record, snapshot=snapshot)

    async def append_ledger(self, handle: StateHandle, record: dict[str, Any]) -> None:
        """Add ledger entries. Entries only accumulate, so a conflicting write by another
        owner is merged: reload its block list and commit ours after it."""
        if not handle.blob_name:
            handle.blob_name = self._ledger_blob(handle.partition_id)
        for _ in range(5):
            try:
                await self._append(handle, record, snapshot=False)
                return
            except StateFenced:
                fresh = await self._load_log(handle.partition_id, handle.blob_name)
                handle.etag, handle.blocks = fresh.etag, fresh.blocks
                handle.records = fresh.records
        raise CheckpointError(f"cannot write {handle.blob_name}: too many concurrent writers")

    async def compact_ledger(self, handle: StateHandle, record: dict[str, Any]) -> None:
        try:
            await self._append(handle, record, snapshot=True)
        except StateFenced:
            # Someone appended meanwhile: refresh, so the caller's retry merges with it.
            fresh = await self._load_log(handle.partition_id, handle.blob_name)
            handle.etag, handle.blocks, handle.records = fresh.etag, fresh.blocks, fresh.records
            raise

    async def _append(self, handle: StateHandle, record: dict[str, Any], *, snapshot: bool) -> None:
        blob = self.container.get_blob_client(handle.blob_name)
        data = encode_record(record)
        # Unique ids: two writers must never stage the same id, and committed blocks are
        # listed as Committed so a stray staged block can never replace one.
        block_id = base64.b64encode(uuid.uuid4().hex.encode()).decode()
        committed = [] if snapshot else [BlobBlock(b, BlockState.COMMITTED) for b in handle.blocks]
        blocks = [*committed, BlobBlock(block_id, BlockState.UNCOMMITTED)]
        conditions: dict[str, Any] = (
            {"etag": handle.etag, "match_condition": MatchConditions.IfNotModified}
            if handle.etag
            else {"match_condition": MatchConditions.IfMissing}
        )
        fenced = f"{handle.blob_name} was written by another owner"
        try:
            await blob.stage_block(block_id, data)
            result = await blob.commit_block_list(blocks, **conditions)
        except (ResourceModifiedError, ResourceExistsError) as exc:
            raise StateFenced(fenced) from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise StateFenced(fenced) from exc
            raise CheckpointError(f"cannot write {handle.blob_name}: {exc.message}") from exc
        except AzureError as exc:
            raise CheckpointError(f"cannot write {handle.blob_name}: {exc}") from exc
        handle.etag = result["etag"]
        handle.blocks = [b.id for b in blocks]
        if snapshot:
            handle.records = [record]
            handle.snapshot_bytes = len(data)
            handle.delta_bytes = 0
        else:
            handle.records.append(record)
            handle.delta_bytes += len(data)

    def needs_snapshot(self, handle: StateHandle) -> bool:
        """Compact when deltas outweigh the snapshot or the block list grows long."""
        if not handle.blocks:
            return True
        return len(handle.blocks) > MAX_DELTA_BLOCKS or handle.delta_bytes > max(
            handle.snapshot_bytes, 64 * 1024
        )

    async def reset_state(self, partition_id: str) -> None:
        """Forget dedupe/order state (after a rewind); the ledger is kept (DESIGN §4)."""
        with contextlib.suppress(ResourceNotFoundError):
            await self.container.delete_blob(self._state_blob(partition_id))

    # --- dead letters -------------------------------------------------------------------

    async def dead_letter(self, partition_id: str, name: str, record: Mapping[str, Any]) -> str:
        """One dead letter, one blob (`name` is deterministic: a re-processed message
        overwrites its own dead letter instead of adding a second)."""
        return await self._upload_dead_letter(partition_id, name, encode_dead_letters(record))

    async def dead_letters(
        self, partition_id: str, name: str, records: Sequence[Mapping[str, Any]]
    ) -> str:
        """All the dead letters of one message in one blob: a JSON array, one write however
        many elements a hostile batch holds (DESIGN §7)."""
        if len(records) == 1:
            return await self.dead_letter(partition_id, name, records[0])
        return await self._upload_dead_letter(
            partition_id, name, encode_dead_letters(list(records))
        )

    async def _upload_dead_letter(self, partition_id: str, name: str, body: bytes) -> str:
        blob_name = f"{self.prefix}/deadletter/{partition_id}/{name}.json"
        try:
            await self.container.upload_blob(blob_name, body, overwrite=True)
        except AzureError as exc:
            raise CheckpointError(f"cannot write dead letter {blob_name}: {exc}") from exc
        return blob_name

    async def update_dead_letter(self, blob_name: str, record: Mapping[str, Any]) -> None:
        """Rewrite one dead letter in place (re-driven entries are marked, never deleted).

        A record of a batch blob (`item` is its place in the array, as `list_dead_letters`
        gives it) is replaced in its array, the others kept; the rewrite is conditional on
        the blob not having changed since it was read."""
        item = record.get("item")
        plain = {k: v for k, v in record.items() if k not in ("blob", "item")}
        try:
            if not isinstance(item, int):
                await self.container.upload_blob(
                    blob_name, encode_dead_letters(plain), overwrite=True
                )
                return
            downloader = await self.container.download_blob(blob_name)
            content = json.loads(await downloader.readall())
            if not isinstance(content, list) or not 0 <= item < len(content):
                raise CheckpointError(f"dead letter {blob_name} has no record {item}")
            content[item] = plain
            await self.container.upload_blob(
                blob_name,
                encode_dead_letters(content),
                overwrite=True,
                etag=downloader.properties.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except AzureError as exc:
            raise CheckpointError(f"cannot write dead letter {blob_name}: {exc}") from exc

    async def list_dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter: one record per blob, or each record of a batch blob (with its
        place in it, `item`)."""
        records = []
        prefix = f"{self.prefix}/deadletter/"
        try:
            async for item in self.container.list_blobs(name_starts_with=prefix):
                downloader = await self.container.download_blob(item.name)
                try:
                    content = json.loads(await downloader.readall())
                except (ValueError, RecursionError) as exc:  # not ours: show it, go on
                    content = {"kind": "unreadable", "reason": f"not readable JSON ({exc})"}
                if isinstance(content, list):
                    for index, record in enumerate(content):
                        if isinstance(record, dict):
                            records.append({"blob": item.name, "item": index, **record})
                elif isinstance(content, dict):
                    records.append({"blob": item.name, **content})
        except AzureError as exc:
            raise CheckpointError(f"cannot list dead letters: {exc}") from exc
        return records


def encode_dead_letters(content: Mapping[str, Any] | list[Mapping[str, Any]]) -> bytes:
    """A dead-letter blob's bytes (one record, or a list of them); never raises.

    Any string encodes (jsontext escapes lone surrogates). A value nested deeper than
    `MAX_DEAD_LETTER_DEPTH` is kept as its JSON text (`<key>_json`), so every reader can
    parse the blob and one deep element does not make its whole batch unreadable. A record
    that still cannot be encoded (a cycle) would fail the same way on every retry, so it is
    replaced by what can be kept of it — kind, reason, coordinates and a cut `repr` —
    instead of blocking its partition for ever (DESIGN §7).
    """
    records = content if isinstance(content, list) else [content]
    readable = [_readable(record) for record in records]
    try:
        return dumps_bytes(readable if isinstance(content, list) else readable[0])
    except (ValueError, TypeError, RecursionError, OverflowError):
        pass
    safe = [_encodable(record) for record in readable]
    return dumps_bytes(safe if isinstance(content, list) else safe[0])


# Readers parse dead letters with the standard (recursive) JSON decoder, from any stack
# depth: records stay well below its limit. Events from the hub are far shallower.
MAX_DEAD_LETTER_DEPTH = 200


def _deeper_than(value: Any, limit: int) -> bool:
    return nested_deeper_than(value, limit + 1)  # the record itself is level 0 here


def _readable(record: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(record, Mapping) or not _deeper_than(record, MAX_DEAD_LETTER_DEPTH):
        return record
    kept: dict[str, Any] = {}
    for key, value in record.items():
        if _deeper_than(value, MAX_DEAD_LETTER_DEPTH - 1):
            try:
                kept[f"{key}_json"] = dumps(value)
                continue
            except (ValueError, TypeError, RecursionError, OverflowError):
                pass  # a cycle: `_encodable` takes over
        kept[key] = value
    return kept


def _encodable(record: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        dumps_bytes(record)
        return record
    except (ValueError, TypeError, RecursionError, OverflowError) as exc:
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    kept: dict[str, Any] = {}
    for key in ("dead_lettered_at", "kind", "reason", "source", "event_id", "rule", "action"):
        value = record.get(key) if isinstance(record, Mapping) else None
        try:
            dumps_bytes(value)
        except (ValueError, TypeError, RecursionError, OverflowError):
            value = None
        if value is not None:
            kept[key] = value
    try:
        text = repr(record)
    except Exception:  # deep nesting: repr recurses too
        text = f"<{type(record).__name__}>"
    kept["reason"] = f"{kept.get('reason', '')} (record not encodable as JSON: {error})".strip()
    kept["record_repr"] = utf8_safe(text[:100_000])
    return kept

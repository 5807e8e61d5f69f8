"""`history --event-id ID`: what the worker did with one event, from what it stored.

Nothing is re-read from the hub: the partition state (dedupe memory, held and in-flight
events), the ledger, the dead letters and the checkpoints together tell whether the event
was seen, which actions ran or failed, and whether the checkpoint has passed it. Dead letters
are read in both layouts (single-record blobs and a message's batch blob).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.checkpoints import BlobPartitionStore
from worker.jsontext import utf8_safe
from worker.ordering import OrderingConfig, Sequencer

__all__ = ["event_history", "render_history"]


async def event_history(
    store: BlobPartitionStore, partition_ids: list[str], event_id: str
) -> dict[str, Any]:
    found: dict[str, Any] = {"event_id": event_id, "partitions": {}}
    dead = [r for r in await store.list_dead_letters() if r.get("event_id") == event_id]
    for pid in partition_ids:
        entry: dict[str, Any] = {}
        handle = await store.load_state(pid)
        records = handle.records
        if records:
            start = max(
                (i for i, r in enumerate(records) if r.get("kind") == "snapshot"), default=0
            )
            try:
                sequencer = Sequencer.restore(
                    OrderingConfig(), [r["sequencer"] for r in records[start:]]
                )
            except (KeyError, ValueError, TypeError):
                sequencer = None
            if sequencer is not None and sequencer.remembers(event_id):
                entry["seen"] = True
            held = [e for e in (sequencer.held_events() if sequencer else []) if e.id == event_id]
            if held:
                entry["held"] = [e.origin.as_dict() for e in held]
            pending = [p for p in records[-1].get("pending", []) if p["raw"].get("id") == event_id]
            if pending:
                entry["in_flight"] = [{"rules": p["rules"], "source": p["origin"]} for p in pending]
        ledger = await store.load_ledger(pid)
        actions = []
        for record in ledger.records:
            for item in record.get("entries", []):
                if len(item) > 4 and item[4] == event_id:
                    actions.append(
                        {
                            "idempotency_key": item[0],
                            "done_at": datetime.fromtimestamp(item[1], UTC).isoformat(),
                            "action": item[2],
                            "rule": item[3],
                            "sequence_number": item[5] if len(item) > 5 else None,
                        }
                    )
        if actions:
            entry["ledger"] = actions
        failures = [r for r in dead if (r.get("source") or {}).get("partition_id") == pid]
        if failures:
            entry["dead_letters"] = [
                {k: r.get(k) for k in ("kind", "rule", "action", "idempotency_key", "reason")}
                | {"redriven": bool(r.get("redriven_at"))}
                for r in failures
            ]
        if entry:
            checkpoint = await store.get_checkpoint(pid)
            seqs = [a["sequence_number"] for a in actions if a.get("sequence_number") is not None]
            seqs += [(r.get("source") or {}).get("sequence_number") for r in failures]
            seqs += [h["sequence_number"] for h in entry.get("held", [])]
            seqs = [s for s in seqs if s is not None]
            entry["checkpoint"] = checkpoint.sequence_number if checkpoint else None
            if seqs and checkpoint is not None:
                entry["sequence_number"] = seqs[0]
                entry["behind_checkpoint"] = seqs[0] <= checkpoint.sequence_number
            found["partitions"][pid] = entry
    found["known"] = bool(found["partitions"])
    return found


def render_history(history: dict[str, Any]) -> str:
    lines = [f"event {history['event_id']}"]
    if not history["known"]:
        lines.append("  not found in state, ledger or dead letters (unseen, or older than the")
        lines.append("  dedupe window and the ledger retention)")
    for pid, entry in history["partitions"].items():
        lines.append(f"  partition {pid}:")
        if entry.get("seen"):
            lines.append("    seen (in the dedupe memory: a redelivery is dropped)")
        for held in entry.get("held", []):
            lines.append(f"    held for reordering (sequence number {held['sequence_number']})")
        for item in entry.get("in_flight", []):
            lines.append(f"    actions in flight for rules {', '.join(item['rules'])}")
        for action in entry.get("ledger", []):
            lines.append(
                f"    {action['action']} of rule {action['rule']} done at {action['done_at']} "
                f"(key {action['idempotency_key']})"
            )
        for dead in entry.get("dead_letters", []):
            status = "re-driven" if dead["redriven"] else "dead-lettered"
            lines.append(
                f"    {status}: {dead['kind']} {dead.get('action') or ''} of rule "
                f"{dead.get('rule') or '-'}: {dead.get('reason')}"
            )
        if "behind_checkpoint" in entry:
            where = "at or before" if entry["behind_checkpoint"] else "after"
            lines.append(
                f"    sequence number {entry['sequence_number']} is {where} the checkpoint "
                f"({entry['checkpoint']})"
            )
    return utf8_safe("\n".join(lines) + "\n")  # an event's text may hold a lone surrogate

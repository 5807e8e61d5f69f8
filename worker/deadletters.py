"""Looking at dead letters: what failed, where it came from, and why (`deadletter list`).

Records come from `BlobPartitionStore.list_dead_letters`, one per dead letter whichever
blob layout holds it (a single-record blob, or one record of a message's batch blob, with
`item` its place in it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.jsontext import dumps, utf8_safe

__all__ = ["filter_dead_letters", "redrive", "render_table", "to_json"]


def filter_dead_letters(
    records: list[dict[str, Any]], *, since: datetime | None = None, rule: str | None = None
) -> list[dict[str, Any]]:
    result = []
    for record in records:
        if rule is not None and record.get("rule") != rule:
            continue
        at = record.get("dead_lettered_at")
        if since is not None and isinstance(at, int | float) and at < since.timestamp():
            continue
        result.append(record)
    return sorted(result, key=lambda r: (r.get("dead_lettered_at") or 0, r.get("blob", "")))


def render_table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no dead letters\n"
    header = (
        "when", "partition", "seq", "kind", "rule", "action", "event id", "status", "reason",
    )  # fmt: skip
    rows = [header]
    for r in records:
        source = r.get("source") or {}
        at = r.get("dead_lettered_at")
        when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"
        reason = str(r.get("reason", ""))
        rows.append(
            (
                when,
                str(source.get("partition_id", "")),
                str(source.get("sequence_number", "")),
                str(r.get("kind", "")),
                str(r.get("rule") or "-"),
                str(r.get("action") or "-"),
                str(r.get("event_id") or "-"),
                "redriven" if r.get("redriven_at") else "open",
                reason if len(reason) <= 80 else reason[:77] + "...",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return utf8_safe("\n".join(line.rstrip() for line in lines) + "\n")


def to_json(records: list[dict[str, Any]]) -> str:
    """Any record prints: a lone surrogate from an event stays as its JSON escape."""
    return dumps(records, indent=2) + "\n"


async def redrive(
    store: Any,
    records: list[dict[str, Any]],
    ruleset: Any,
    executors: Any,
    *,
    settings: Any,
    environ: Any,
    dry_run: bool,
    say: Any = print,
) -> dict[str, int]:
    """Re-drive failed actions with their original idempotency keys (DESIGN §5).

    The action is planned again from the stored event with the current rules (so a fixed
    template or a restored secret takes effect); a rule or action that no longer exists, or
    whose key would differ, is reported and left alone. Ledger-protected actions consult the
    partition's ledger first. Successes are marked `redriven_at` in place.
    """
    import time

    from worker.delivery import LEDGER_TYPES, Delivery, Ledger, Limits
    from worker.events import Origin, restore_event
    from worker.plan import PlannedAction, plan_rule

    counts = {"redriven": 0, "failed": 0, "skipped": 0, "not_redrivable": 0}
    limits = Limits.create(settings.max_inflight)
    ledgers: dict[str, Ledger] = {}
    for record in records:
        if record.get("kind") != "action_failed" or record.get("redriven_at"):
            counts["not_redrivable"] += 1
            continue
        rule = next((r for r in ruleset.rules if r.name == record.get("rule")), None)
        source = record.get("source") or {}
        raw = record.get("event") or {}
        try:
            origin = Origin.from_dict(source)
            event = restore_event(raw, origin, _ticks(raw))
        except (ValueError, KeyError, TypeError) as exc:
            say(f"{record['blob']}: cannot rebuild the event ({exc})")
            counts["not_redrivable"] += 1
            continue
        planned = None
        if rule is not None:
            for item in plan_rule(rule, event):
                if isinstance(item, PlannedAction) and item.key == record.get("idempotency_key"):
                    planned = item
        if planned is None:
            say(
                f"{record['blob']}: rule/action no longer gives key {record.get('idempotency_key')}"
            )
            counts["not_redrivable"] += 1
            continue
        if dry_run:
            say(f"would re-drive {planned.action.type} of rule {planned.rule} for {event.id}")
            counts["redriven"] += 1
            continue
        pid = origin.partition_id
        ledger = None
        if planned.action.type in LEDGER_TYPES:
            if pid not in ledgers:
                ledgers[pid] = Ledger(store, pid, settings.ledger_retention)
                await ledgers[pid].load()
            ledger = ledgers[pid]

        async def dead_letter(
            name: str,
            failed: dict[str, Any],
            blob: str = record["blob"],
            item: Any = record.get("item"),  # noqa: B008 - its place in a batch blob, if any
        ) -> None:
            await store.update_dead_letter(
                blob, {**failed, "item": item, "redrive_failed_at": time.time()}
            )

        delivery = Delivery(
            pid, executors, limits, environ=environ, ledger=ledger, dead_letter=dead_letter
        )
        result = await delivery.run_one(planned)
        if result == "dead_lettered":
            counts["failed"] += 1
            continue
        counts["redriven" if result == "done" else "skipped"] += 1
        await store.update_dead_letter(
            record["blob"], {**record, "redriven_at": time.time(), "redrive_result": result}
        )
    return counts


def _ticks(raw: dict[str, Any]) -> int:
    from worker.events import parse_time

    return parse_time(raw.get("eventTime") or raw.get("time"))[1]

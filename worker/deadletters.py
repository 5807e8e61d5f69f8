"""Looking at dead letters: what failed, where it came from, and why (`deadletter list`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

__all__ = ["filter_dead_letters", "render_table"]


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
    header = ("when", "partition", "seq", "kind", "rule", "action", "event id", "reason")
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
                reason if len(reason) <= 80 else reason[:77] + "...",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def to_json(records: list[dict[str, Any]]) -> str:
    return json.dumps(records, indent=2, ensure_ascii=False, default=str) + "\n"

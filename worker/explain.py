"""`explain`: why each rule does or does not match an event, clause by clause.

The explanation goes through the same checks as the pipeline (topic allow-list, known
types, the rule's filter) so that what it says is what the worker would do, minus ordering:
one event alone is never a duplicate or stale.
"""

from __future__ import annotations

from typing import Any

from worker.events import MISSING, Event, Origin, Rejection, decode_body, iso_ticks
from worker.jsontext import dumps, nested_deeper_than
from worker.plan import PlannedAction, plan_rule
from worker.rules import Rule, RuleSet

__all__ = ["explain_events", "render_text"]


# A looked-at value nested deeper than this is shown as its JSON text: `explain --json`
# writes the report with the standard library, whose recursion a value nested a thousand
# levels deep (which a body may be) would exhaust (DESIGN §7).
_MAX_SHOWN_DEPTH = 64


def _shown(value: Any) -> Any:
    if value is MISSING:
        return "<missing>"
    if isinstance(value, dict | list) and nested_deeper_than(value, _MAX_SHOWN_DEPTH):
        return dumps(value)
    return value


def explain_events(ruleset: RuleSet, body: bytes) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """One report per event in the body (an object or a batch array)."""
    events, rejections = decode_body(body, Origin())
    reports = []
    for event in events:
        topic_allowed = ruleset.allows_topic(event.topic)
        type_known = ruleset.knows_type(event.type)
        rules = []
        for rule in ruleset.rules:
            try:
                entry = _explain_rule(rule, event)
            except Exception as exc:  # what the pipeline would dead-letter (DESIGN §7)
                entry = {"rule": rule.name, "matched": False, "clauses": [], "error": str(exc)}
            rules.append(entry)
        would_run = topic_allowed and type_known
        reports.append(
            {
                "event": {
                    "id": event.id,
                    "type": event.type,
                    "subject": event.subject,
                    "topic": event.topic,
                    "time": iso_ticks(event.time_ticks),
                    "schema": str(event.schema),
                },
                "topic_allowed": topic_allowed,
                "type_known": type_known,
                "matched_rules": [r["rule"] for r in rules if r["matched"] and would_run],
                "rules": rules,
            }
        )
    return reports, rejections


def _explain_rule(rule: Rule, event: Event) -> dict[str, Any]:
    clauses = [
        {
            "clause": c.clause,
            "looked_at": _shown(c.looked_at),
            "passed": c.passed,
            "reason": c.reason,
        }
        for c in rule.filter.explain(event)
    ]
    matched = rule.filter.matches(event)
    entry: dict[str, Any] = {"rule": rule.name, "matched": matched, "clauses": clauses}
    if matched:
        entry["actions"] = [
            {
                "action": r.action.type,
                "action_index": r.action.index,
                "idempotency_key": r.key,
                **(
                    {"params": r.plan_line()["params"]}
                    if isinstance(r, PlannedAction)
                    else {"render_error": r.error}
                ),
            }
            for r in plan_rule(rule, event)
        ]
    return entry


def render_text(reports: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for report in reports:
        event = report["event"]
        lines.append(f"event {event['id']} ({event['schema']})")
        lines.append(f"  type    {event['type']}")
        lines.append(f"  subject {event['subject']}")
        lines.append(f"  time    {event['time']}")
        if report["topic_allowed"]:
            lines.append(f"  topic   {event['topic']} (allowed)")
        else:
            lines.append(
                f"  topic   {event['topic']} is NOT in the rules file's topics: "
                "the worker drops this event before any rule sees it"
            )
        if not report["type_known"]:
            lines.append(
                "  type is not in any rule's includedEventTypes: the worker ignores it "
                "(unknown_type)"
            )
        for rule in report["rules"]:
            verdict = "MATCHES" if rule["matched"] else "does not match"
            if "error" in rule:
                verdict = f"cannot be evaluated on this event ({rule['error']})"
            lines.append(f"rule {rule['rule']}: {verdict}")
            if not rule["clauses"]:
                lines.append("  (empty filter: matches every allowed event)")
            for clause in rule["clauses"]:
                mark = "pass" if clause["passed"] else "FAIL"
                lines.append(f"  [{mark}] {clause['clause']}: {clause['reason']}")
            for action in rule.get("actions", []):
                detail = action.get("render_error") or action.get("params")
                lines.append(
                    f"  -> {action['action']} #{action['action_index']} "
                    f"key {action['idempotency_key']}: {detail}"
                )
        lines.append("")
    return "\n".join(lines)

"""One partition's pipeline: decode → validate → dedupe → order → match → plan (DESIGN §1).

Pure and synchronous: messages and "now" go in, decisions come out. The same object serves
`run` (Event Hubs), `replay` from a file and from Capture; only what surrounds it differs.
Every decoded event gets exactly one `Outcome`, which is what the summary and the metrics
count, and what the checkpoint logic uses to know that an event is finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from worker.errors import exception_summary
from worker.events import Event, Origin, Rejection, decode_body
from worker.jsontext import dumps_bytes
from worker.ordering import OrderingConfig, Released, Sequencer
from worker.plan import PlannedAction, RenderFailure, Throttler, idempotency_key, plan_rule
from worker.rules import Late, Rule, RuleSet
from worker.templates import template_context

__all__ = ["Decision", "Outcome", "PartitionPipeline", "Step", "Summary", "ordering_config"]


class Outcome(StrEnum):
    FOREIGN_TOPIC = "foreign_topic"
    UNKNOWN_TYPE = "unknown_type"
    DUPLICATE = "duplicate"
    STALE = "stale"
    UNMATCHED = "unmatched"
    MATCHED = "matched"


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one decoded event: its outcome and the actions it causes."""

    event: Event
    outcome: Outcome
    actions: tuple[PlannedAction, ...] = ()
    failures: tuple[RenderFailure, ...] = ()
    throttled: int = 0


@dataclass(slots=True)
class Step:
    """Everything one call into the pipeline decided, in order."""

    rejections: list[Rejection] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    # Events of the message fed that got (or will get) an outcome: decoded, less any the
    # per-event guard turned into rejections. Not the earlier ones it released.
    decoded: int = 0

    @property
    def actions(self) -> list[PlannedAction]:
        return [a for d in self.decisions for a in d.actions]

    @property
    def failures(self) -> list[RenderFailure]:
        return [f for d in self.decisions for f in d.failures]

    def extend(self, other: Step) -> None:
        self.rejections.extend(other.rejections)
        self.decisions.extend(other.decisions)


@dataclass(slots=True)
class Summary:
    """The counts of DESIGN §6; the per-event outcomes add up to `events`."""

    messages: int = 0
    events: int = 0
    invalid: int = 0
    foreign_topic: int = 0
    unknown_type: int = 0
    duplicate: int = 0
    stale: int = 0
    unmatched: int = 0
    matched: int = 0
    planned: int = 0
    throttled: int = 0
    render_errors: int = 0

    def add(self, step: Step) -> None:
        self.invalid += len(step.rejections)
        for decision in step.decisions:
            setattr(self, decision.outcome.value, getattr(self, decision.outcome.value) + 1)
            self.planned += len(decision.actions)
            self.render_errors += len(decision.failures)
            self.throttled += decision.throttled

    def merge(self, other: Summary) -> None:
        for name in self.as_dict():
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _rejected(event: Event, exc: Exception) -> Rejection:
    """An event the pipeline could not take in, as an invalid element (dead-lettered)."""
    try:
        body = dumps_bytes(event.as_received())
    except Exception:  # the reason and the coordinates must do
        body = b""
    return Rejection(
        f"event {event.id!r} could not be processed ({exception_summary(exc)})",
        event.origin,
        None,
        body,
    )


def _failed(rule: Rule, event: Event, exc: Exception | str) -> list[RenderFailure]:
    """Every action of a rule that failed on this event, as dead letters with the reason."""
    error = f"processing failed ({exception_summary(exc)})"
    return [
        RenderFailure(
            rule.name,
            action,
            event,
            idempotency_key(event.topic, event.id, rule.name, action.key_part),
            error,
        )
        for action in rule.actions
    ]


def ordering_config(ruleset: RuleSet) -> OrderingConfig:
    return OrderingConfig(
        grace_s=ruleset.ordering.grace_s,
        max_skew_s=ruleset.ordering.max_skew_s,
        dedupe_window_s=ruleset.dedupe.window_s,
        max_ids=ruleset.dedupe.max_ids,
    )


class PartitionPipeline:
    """The pure pipeline of one partition (or one file, which is one partition)."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        sequencer: Sequencer | None = None,
        throttler: Throttler | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.sequencer = sequencer or Sequencer(ordering_config(ruleset))
        self.throttler = throttler or Throttler()
        self.summary = Summary()
        self._last_time: tuple[datetime, int] | None = None

    def feed(self, body: bytes, origin: Origin, now: datetime | None = None) -> Step:
        """One Event Hubs message body (or file line)."""
        self.summary.messages += 1
        default_time = None
        if origin.enqueued_time is None:
            default_time = self._last_time  # file replay: the previous event's time
        events, rejections = decode_body(body, origin, default_time=default_time)
        step = Step(rejections=list(rejections), decoded=len(events))
        decisions = step.decisions
        for event in events:
            self._last_time = (event.time, event.time_ticks)
            # One event's failure is its own (DESIGN §7). Taking it in (checks, dedupe,
            # buffer) is all-or-nothing: if that raises, the sequencer never had it, and it
            # is an invalid element (its dead letter is the message's). Once taken, it gets
            # its outcome whatever happens, as every event it releases does (`_decide`).
            try:
                first, released = self._admit(event, now)
            except Exception as exc:
                step.decoded -= 1  # no outcome: counted (and dead-lettered) as invalid
                step.rejections.append(_rejected(event, exc))
                continue
            if first is not None:
                decisions.append(first)
            if released:
                decisions.extend(self._decide(released))
        self.summary.events += step.decoded
        self.summary.add(step)
        return step

    def tick(self, now: datetime) -> Step:
        """Release events that waited `grace` of wall-clock time (`run` calls this)."""
        return self._counted(self._decide(self.sequencer.release_waited(now)))

    def finish(self) -> Step:
        """End of a finite source: release everything still held, in order."""
        return self._counted(self._decide(self.sequencer.flush()))

    def _counted(self, decisions: list[Decision]) -> Step:
        step = Step(decisions=decisions)
        self.summary.add(step)
        return step

    def _admit(self, event: Event, now: datetime | None) -> tuple[Decision | None, list[Released]]:
        """The event's own outcome when it has one at once, and what its arrival releases."""
        if not self.ruleset.allows_topic(event.topic):
            return Decision(event, Outcome.FOREIGN_TOPIC), []
        if not self.ruleset.knows_type(event.type):
            return Decision(event, Outcome.UNKNOWN_TYPE), []
        duplicate, released = self.sequencer.push(event, now)
        return (Decision(event, Outcome.DUPLICATE) if duplicate else None), released

    def _decide(self, released: Iterable[Released]) -> list[Decision]:
        """One decision per released event, always: an event out of the buffer that got
        none would never finish, and its message would hold the checkpoint forever."""
        decisions = []
        for item in released:
            if item.error is not None:
                decisions.append(self._broken(item, item.error))
                continue
            try:
                decisions.append(self._match(item))
            except Exception as exc:  # beyond the per-rule guard in `_match`
                decisions.append(self._broken(item, exc))
        return decisions

    def _broken(self, item: Released, exc: Exception | str) -> Decision:
        """An event that could not be matched: dead-lettered (one record per action of each
        rule of its type, with the reason), counted as an outcome plus `render_errors`."""
        event = item.event
        try:
            if item.late:
                event = dataclasses.replace(event, late=True)
            rules: Iterable[Rule] = self.ruleset.rules_for(event.type)
        except Exception:
            rules = self.ruleset.rules
        try:
            failures = tuple(f for rule in rules for f in _failed(rule, event, exc))
        except Exception:  # nothing left to say but the outcome: still counted
            failures = ()
        matched = Outcome.MATCHED if failures else Outcome.UNMATCHED
        return Decision(event, Outcome.STALE if item.late else matched, (), failures)

    def _match(self, item: Released) -> Decision:
        event = dataclasses.replace(item.event, late=True) if item.late else item.event
        actions: list[PlannedAction] = []
        failures: list[RenderFailure] = []
        throttled = 0
        matched_any = False
        context: Mapping[str, Any] | None = None
        for rule in self.ruleset.rules_for(event.type):
            if item.late and self.ruleset.late_for(rule) is Late.DROP:
                continue
            try:
                if not rule.filter.matches(event):
                    continue
                matched_any = True
                if not self.throttler.admit(rule, event, item.effective):
                    throttled += len(rule.actions)
                    continue
                if context is None:
                    context = template_context(event, rule.name)
                results = plan_rule(rule, event, context)
            except Exception as exc:  # this rule cannot handle this event: dead-letter it
                matched_any = True
                failures.extend(_failed(rule, event, exc))
                continue
            for result in results:
                if isinstance(result, PlannedAction):
                    actions.append(result)
                else:
                    failures.append(result)
        if item.late:
            outcome = Outcome.STALE
        else:
            outcome = Outcome.MATCHED if matched_any else Outcome.UNMATCHED
        return Decision(event, outcome, tuple(actions), tuple(failures), throttled)
